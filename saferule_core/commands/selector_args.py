"""The forget-selector flags shared by the commands that pick episodes (`saferule dataset select/forget`,
`saferule unlearn`): one home for their spelling, parsing and help text.

A helper module, not a command: it has no `register`, so the CLI's discovery skips it.
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import datetime, timezone
from pathlib import Path

from saferule_core.data.selectors import ForgetSelector
from saferule_core.errors import SelectorError


def add_selector_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the selector flags (--episode, --robot, --bag, --since, --until, --ids-from) to `parser`."""
    group = parser.add_argument_group("selector (fields combine with AND; at least one is needed)")
    group.add_argument("--episode", action="append", default=[], metavar="ID", help="episode id (repeatable)")
    group.add_argument("--robot", action="append", default=[], metavar="ID", help="robot id (repeatable)")
    group.add_argument("--bag", action="append", default=[], metavar="NAME", help="source bag name (repeatable)")
    group.add_argument("--since", type=_parse_time, metavar="TIME",
                       help="episodes starting at or after TIME (POSIX seconds or ISO 8601; naive means UTC)")
    group.add_argument("--until", type=_parse_time, metavar="TIME", help="episodes starting at or before TIME")
    group.add_argument("--ids-from", type=Path, metavar="FILE",
                       help="episode ids from a file: one per line, or a poison.json (its poisoned episodes)")


def _parse_time(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r} is neither POSIX seconds nor an ISO 8601 time") from err
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite time")
    return value


def _ids_from_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SelectorError(f"cannot read episode ids from {path}: {err.strerror}") from err
    if path.suffix == ".json":
        try:
            ids = json.loads(text).get("poisoned_episode_ids")
        except (json.JSONDecodeError, AttributeError) as err:
            raise SelectorError(f"{path}: not a poison record (JSON with poisoned_episode_ids)") from err
        if not isinstance(ids, list):
            raise SelectorError(f"{path}: has no poisoned_episode_ids list")
        return [str(i) for i in ids]
    return [line.strip() for line in text.splitlines() if line.strip()]


def selector_from_args(args: argparse.Namespace) -> ForgetSelector:
    """The ForgetSelector the flags added by `add_selector_arguments` describe."""
    episode_ids = list(args.episode) + (_ids_from_file(args.ids_from) if args.ids_from else [])
    return ForgetSelector(episode_ids=tuple(episode_ids), robot_ids=tuple(args.robot), bag_names=tuple(args.bag),
                          window_start=args.since, window_end=args.until)
