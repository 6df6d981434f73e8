"""`saferule from-bags`: turn rosbag2 recordings of the robot topics into a dataset directory."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Read rosbag2 bags (MCAP or sqlite3; written by the SafeRULE recorder or by `ros2 bag record`) of
the robot topics <ns>/observation, <ns>/applied_action and <ns>/step_record, align them per robot
namespace and step key into transitions (next observation = the following observation of the same
episode), and write a dataset directory with provenance: robot id from the namespace, source bag,
episode start/end time from the message timestamps.

Steps that cannot be aligned (a message was not recorded) are dropped and counted, as are
malformed, duplicate and unreferenced messages; the report lists every count.

A bag left open by a crash (an MCAP bag directory without metadata.yaml that no running recorder
holds) is recovered in place first: what was written before the crash is rewritten as a complete
bag with metadata.yaml, and the report counts the messages recovered.
"""

EPILOG = """\
examples:
  saferule from-bags bags/ --task BallRun --out data/fleet-ballrun
  saferule from-bags bags/saferule_20250101T120000Z_000 bags/saferule_20250101T120000Z_001 \\
      --task BallRun --out data/run1 --report run1-import.json
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("from-bags", help="build a dataset from rosbag2 recordings of robot topics",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bags", nargs="+", type=Path, metavar="BAG",
                        help="bag directory, .mcap/.db3 file, or a directory holding bag directories")
    parser.add_argument("--task", required=True, help="task name, e.g. BallRun (checks observation/action widths)")
    parser.add_argument("--out", type=Path, required=True, help="new dataset directory")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset directory")
    parser.add_argument("--report", type=Path, default=None, metavar="FILE",
                        help="also write the import counts as JSON to FILE")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from saferule_core.data.from_bags import import_bags
    from saferule_core.io_utils import atomic_write_json

    report = import_bags(args.bags, args.task, args.out, overwrite=args.overwrite, progress=True)
    print(report.summary())
    print(f"wrote {report.transitions} transitions in {report.episodes} episodes to {args.out}")
    if args.report is not None:
        atomic_write_json(args.report, report.to_json())
    return 0
