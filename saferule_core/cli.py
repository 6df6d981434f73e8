"""saferule: remove poisoned logged data from offline safe RL policies.

Typical flow:
  saferule collect --task BallRun --out data/ballrun          # generate an offline dataset
  saferule poison  data/ballrun --attack relabel --out data/ballrun-poisoned
  saferule train   data/ballrun-poisoned --algo bcq_lag --out runs/bcq
  saferule eval    runs/bcq --episodes 20
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from saferule_core import __version__, commands
from saferule_core.errors import SafeRuleError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saferule", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"saferule {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:   # modules without one are helpers shared by commands
            register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except SafeRuleError as err:
        print(f"saferule {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"saferule {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
