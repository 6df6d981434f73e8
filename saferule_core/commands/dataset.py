"""`saferule dataset ...`: inspect, import/export, select from and forget parts of a dataset directory."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from saferule_core.commands.selector_args import add_selector_arguments, selector_from_args
from saferule_core.data.hdf5_io import export_dsrl_hdf5, import_dsrl_hdf5
from saferule_core.data.ledger import ForgetLedger, purge_forgotten, request_forget
from saferule_core.data.store import DEFAULT_EPISODES_PER_SHARD, DatasetStore

_EPILOG = """examples:
  saferule dataset info data/ballrun
  saferule dataset import-hdf5 BallRun-v0.hdf5 --task BallRun --out data/ballrun
  saferule dataset export-hdf5 data/ballrun --out ballrun.hdf5
  saferule dataset select data/ballrun --robot robot-3 --since 2024-05-01T00:00:00Z
  saferule dataset forget data/ballrun --robot robot-3 --reason "compromised" --requester ops --purge
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dataset", help="inspect, import, export, select from and forget parts of a dataset",
        description="Work with a dataset directory (Parquet shards + provenance + forget ledger).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)

    info = actions.add_parser("info", help="counts, robots, bags, time range, hash, quarantine, ledger",
                              description="Summarise a dataset directory without loading its transitions.",
                              epilog="example:\n  saferule dataset info data/ballrun",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    info.add_argument("path", type=Path, help="dataset directory")
    info.set_defaults(handler=_info)

    imp = actions.add_parser("import-hdf5", help="import a DSRL HDF5 file",
                             description="Import a DSRL HDF5 file into a new dataset directory. Episodes are split "
                                         "at terminals/timeouts and get synthetic provenance.",
                             epilog="example:\n  saferule dataset import-hdf5 BallRun-v0.hdf5 --task BallRun "
                                    "--out data/ballrun", formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("file", type=Path, help="DSRL HDF5 file")
    imp.add_argument("--task", required=True, help="task name, e.g. BallRun (checks observation/action widths)")
    imp.add_argument("--out", type=Path, required=True, help="new dataset directory")
    imp.add_argument("--robot-id", default="dsrl", help="robot id given to every episode (default: dsrl)")
    imp.add_argument("--source-bag", default=None, help="source bag name for every episode (default: the file name)")
    imp.add_argument("--episodes-per-shard", type=int, default=DEFAULT_EPISODES_PER_SHARD)
    imp.set_defaults(handler=_import_hdf5)

    exp = actions.add_parser("export-hdf5", help="export to a DSRL HDF5 file",
                             description="Write the dataset's transitions as a DSRL HDF5 file (the seven DSRL keys, "
                                         "float32; provenance is not kept). Quarantined episodes are left out.",
                             epilog="example:\n  saferule dataset export-hdf5 data/ballrun --out ballrun.hdf5",
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    exp.add_argument("path", type=Path, help="dataset directory")
    exp.add_argument("--out", type=Path, required=True, help="HDF5 file to write")
    exp.add_argument("--include-quarantined", action="store_true", help="also export quarantined episodes")
    exp.set_defaults(handler=_export_hdf5)

    select = actions.add_parser("select", help="list the episodes a selector matches",
                                description="List the episodes a forget selector matches (fields combine with AND).",
                                epilog="example:\n  saferule dataset select data/ballrun --robot robot-3 "
                                       "--since 1714521600", formatter_class=argparse.RawDescriptionHelpFormatter)
    select.add_argument("path", type=Path, help="dataset directory")
    add_selector_arguments(select)
    select.add_argument("--limit", type=int, default=50, help="print at most this many episodes (default 50)")
    select.add_argument("--json", action="store_true", help="print the matches as JSON")
    select.set_defaults(handler=_select)

    forget = actions.add_parser("forget", help="record a forget request, quarantine, optionally purge",
                                description="Record a forget request in the dataset's ledger and quarantine the "
                                            "matched episodes (left out of every later training read). With "
                                            "--purge, also delete them from disk.",
                                epilog="example:\n  saferule dataset forget data/ballrun --bag run-17.mcap "
                                       "--reason 'tampered costs' --requester fleet-monitor --purge",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    forget.add_argument("path", type=Path, help="dataset directory")
    add_selector_arguments(forget)
    forget.add_argument("--reason", required=True, help="why these episodes are forgotten")
    forget.add_argument("--requester", required=True, help="who asks")
    forget.add_argument("--purge", action="store_true", help="physically delete the episodes now")
    forget.set_defaults(handler=_forget)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="seconds")


def _print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")


def _counts(counter: Counter[str], limit: int = 8) -> str:
    shown = ", ".join(f"{name} ({count})" for name, count in counter.most_common(limit))
    return f"{len(counter)}: {shown}" + (", ..." if len(counter) > limit else "")


# ----- handlers --------------------------------------------------------------------------------

def _info(args: argparse.Namespace) -> int:
    store = DatasetStore.open(args.path)
    episodes = store.episodes
    starts = np.array([ep.start_time for ep in episodes])
    ends = np.array([ep.end_time for ep in episodes])
    ledger = ForgetLedger(store.path)
    states = ledger.summary()
    ledger_text = ", ".join(f"{state} {count}" for state, count in states.items()) or "no requests"
    if ledger.torn_tail is not None:
        ledger_text += " (ignored a torn last line)"
    rows = [
        ("path", str(store.path)),
        ("task", store.task or "-"),
        ("episodes", str(store.num_episodes)),
        ("transitions", str(store.num_transitions)),
        ("obs/act dims", f"{store.manifest.obs_dim} / {store.manifest.act_dim}"),
        ("shards", str(len(store.manifest.shards))),
        ("robots", _counts(Counter(ep.robot_id for ep in episodes))),
        ("bags", _counts(Counter(ep.source_bag for ep in episodes))),
        ("time range", f"{_iso(float(starts.min()))} .. {_iso(float(ends.max()))}"),
        ("dataset hash", store.dataset_hash),
        ("quarantined", f"{len(store.quarantined_ids())} episodes"),
        ("ledger", ledger_text),
    ]
    if store.recovered:
        rows.append(("recovered", "; ".join(store.recovered)))
    _print_table(rows)
    return 0


def _import_hdf5(args: argparse.Namespace) -> int:
    dataset = import_dsrl_hdf5(args.file, args.task, robot_id=args.robot_id, source_bag=args.source_bag)
    store = DatasetStore.create(args.out, dataset, episodes_per_shard=args.episodes_per_shard, progress=True)
    print(f"imported {store.num_episodes} episodes ({store.num_transitions} transitions) of {store.task} "
          f"into {store.path} in {len(store.manifest.shards)} shards")
    return 0


def _export_hdf5(args: argparse.Namespace) -> int:
    dataset = DatasetStore.open(args.path).load(exclude_quarantined=not args.include_quarantined, progress=True)
    export_dsrl_hdf5(dataset, args.out)
    print(f"wrote {dataset.num_transitions} transitions ({dataset.num_episodes} episodes) to {args.out}")
    return 0


def _select(args: argparse.Namespace) -> int:
    store = DatasetStore.open(args.path)
    found = selector_from_args(args).match(store)
    matched = [(ep, int(length)) for ep, length, m in zip(store.episodes, store.episode_lengths, found.mask) if m]
    transitions = found.transitions
    if args.json:
        print(json.dumps({"matched_episode_ids": found.episode_ids, "matched_transitions": transitions}))
        return 0
    quarantined = set(store.quarantined_ids())
    rows = [("episode", "robot", "bag", "start (UTC)", "length")]
    rows += [(ep.episode_id + (" [quarantined]" if ep.episode_id in quarantined else ""), ep.robot_id,
              ep.source_bag, _iso(ep.start_time), str(length)) for ep, length in matched[:max(args.limit, 0)]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    if len(matched) > args.limit:
        print(f"... {len(matched) - args.limit} more")
    print(f"{len(matched)} of {store.num_episodes} episodes matched ({transitions} transitions)")
    return 0


def _forget(args: argparse.Namespace) -> int:
    store = DatasetStore.open(args.path)
    selector = selector_from_args(args)
    ledger = ForgetLedger(store.path)
    entry = request_forget(store, selector, requester=args.requester, reason=args.reason, ledger=ledger)
    print(f"request {entry.request_id}: quarantined {entry.matched_episodes} episodes "
          f"({entry.matched_transitions} transitions)")
    if args.purge:
        entry, report = purge_forgotten(store, entry.request_id, ledger=ledger, progress=True)
        rewritten = len(report.rewritten_shards) if report else 0
        print(f"request {entry.request_id}: purged; rewrote {rewritten} shards, dataset hash now "
              f"{entry.dataset_hash_after}")
    return 0
