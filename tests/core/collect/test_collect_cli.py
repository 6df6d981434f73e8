"""`saferule collect`: a dataset directory with the scatter inside."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from saferule_core.cli import main
from saferule_core.collect import episode_aggressiveness
from saferule_core.data.store import DatasetStore


def test_collect_writes_a_dataset_directory_with_its_scatter(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ballrun"
    code = main(["collect", "--task", "BallRun", "--episodes", "10", "--robots", "2", "--seed", "2",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "wrote 10 episodes" in printed and "> 10:" in printed
    store = DatasetStore.open(out)
    assert store.num_episodes == 10 and store.task == "BallRun"
    dataset = store.load()
    assert {ep.robot_id for ep in dataset.episodes} == {"robot_1", "robot_2"}
    assert np.isfinite(episode_aggressiveness(dataset)).all()
    assert (out / "reward_cost.png").read_bytes().startswith(b"\x89PNG")


def test_collect_refuses_an_existing_directory_and_unknown_tasks(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "taken").mkdir()
    assert main(["collect", "--task", "BallRun", "--episodes", "2", "--out", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["collect", "--task", "Nope", "--episodes", "2", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'Nope'" in err and "BallRun" in err and not (tmp_path / "x").exists()


def test_collect_help_teaches_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["collect", "--help"])
    assert "saferule collect --task BallRun" in capsys.readouterr().out
