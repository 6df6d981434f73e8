"""saferule_core.io_utils: a directory written in one step, whatever was at its path before."""

from __future__ import annotations

from pathlib import Path

import pytest

from saferule_core.io_utils import atomic_directory


@pytest.mark.parametrize("before", ["nothing", "directory", "file", "symlink"])
def test_atomic_directory_replaces_whatever_was_at_its_path(tmp_path: Path, before: str) -> None:
    target = tmp_path / "model"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours")
    if before == "directory":
        target.mkdir()
        (target / "old.txt").write_text("old")
    elif before == "file":
        target.write_text("a stray file")
    elif before == "symlink":
        target.symlink_to(outside, target_is_directory=True)
    with atomic_directory(target, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert target.is_dir() and not target.is_symlink()
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert (outside / "keep.txt").read_text() == "not ours"       # a link is replaced, never followed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "outside"]   # no staging or .old left


def test_atomic_directory_leaves_the_old_one_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target, overwrite=True) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(FileExistsError):
        with atomic_directory(target) as staging:
            pass
