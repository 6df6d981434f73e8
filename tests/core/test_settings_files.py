"""The one YAML settings reader: a mapping from a regular file, every problem one error naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from saferule_core.errors import ConfigError, UnlearningError
from saferule_core.settings_files import MAX_SETTINGS_FILE_BYTES, load_settings_file


def test_a_mapping_is_read_and_an_empty_file_is_an_empty_mapping(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("steps: 7\nsafe_rule: {cost_weight: 2.5}\n")
    assert load_settings_file(tmp_path / "a.yaml", "x") == {"steps": 7, "safe_rule": {"cost_weight": 2.5}}
    (tmp_path / "empty.yaml").write_text("")
    assert load_settings_file(tmp_path / "empty.yaml", "x") == {}


@pytest.mark.parametrize(("setup", "message"), [
    ("missing", "no settings file"),
    ("list", "must hold a mapping of unlearning settings, got list"),
    ("bad yaml", "is not valid YAML"),
    ("binary", "is not valid YAML"),
    ("directory", "only a regular file is read"),
    ("fifo", "only a regular file is read"),
    ("huge", f"the limit is {MAX_SETTINGS_FILE_BYTES}"),
])
def test_every_problem_is_one_line_of_the_callers_error(tmp_path: Path, setup: str, message: str) -> None:
    path = tmp_path / "settings.yaml"
    if setup == "list":
        path.write_text("- 1\n- 2\n")
    elif setup == "bad yaml":
        path.write_text("steps: [1, 2\n")
    elif setup == "binary":
        path.write_bytes(b"\xff\xfe\x00")
    elif setup == "directory":
        path.mkdir()
    elif setup == "fifo":
        os.mkfifo(path)
    elif setup == "huge":
        path.write_bytes(b"#" * (MAX_SETTINGS_FILE_BYTES + 1))
    with pytest.raises(UnlearningError) as caught:
        load_settings_file(path, "unlearning settings", UnlearningError)
    assert message in str(caught.value) and str(path) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError):
        load_settings_file(path, "learner settings")
