"""The shared selector flags, and the CLI's discovery skipping helper modules such as this one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from saferule_core.cli import build_parser
from saferule_core.commands.selector_args import add_selector_arguments, selector_from_args
from saferule_core.data.selectors import ForgetSelector
from saferule_core.errors import SelectorError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_selector_arguments(parser)
    return parser.parse_args(list(argv))


def subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def test_cli_lists_commands_but_not_the_helper_module() -> None:
    names = subcommands()
    assert {"dataset", "unlearn"} <= names and "selector_args" not in names


def test_flags_become_a_selector(tmp_path: Path) -> None:
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("ep-7\n\n ep-9 \n")
    args = parse("--episode", "ep-1", "--robot", "r1", "--robot", "r2", "--bag", "b.mcap",
                 "--since", "2024-05-01T00:00:00Z", "--until", "1714600000", "--ids-from", str(ids_file))
    assert selector_from_args(args) == ForgetSelector(
        episode_ids=("ep-1", "ep-7", "ep-9"), robot_ids=("r1", "r2"), bag_names=("b.mcap",),
        window_start=1714521600.0, window_end=1714600000.0)


def test_poison_record_supplies_its_poisoned_episodes(tmp_path: Path) -> None:
    record = tmp_path / "poison.json"
    record.write_text(json.dumps({"poisoned_episode_ids": ["a", "b"]}))
    assert selector_from_args(parse("--ids-from", str(record))).episode_ids == ("a", "b")
    record.write_text(json.dumps({"attack": "relabel"}))
    with pytest.raises(SelectorError, match="has no poisoned_episode_ids list"):
        selector_from_args(parse("--ids-from", str(record)))
    with pytest.raises(SelectorError, match="cannot read episode ids from"):
        selector_from_args(parse("--ids-from", str(tmp_path / "missing.txt")))


@pytest.mark.parametrize("bad", ["yesterday", "nan"])
def test_bad_times_are_usage_errors(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--since", bad)
    assert "--since" in capsys.readouterr().err
