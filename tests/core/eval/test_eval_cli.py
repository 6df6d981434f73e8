"""`saferule eval MODEL_DIR`: loads a trained model, runs it, prints and writes the scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from saferule_core.algos import get_algo, make_config, save_model
from saferule_core.cli import main
from saferule_core.collect import collect_episodes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    dataset = collect_episodes("BallRun", episodes=4, seed=0)
    learner = get_algo("bc_all").learner_class.from_dataset(dataset, make_config("bc_all", {"hidden": [16, 16]}))
    directory = tmp_path_factory.mktemp("model")
    save_model(directory, learner)
    return directory


def test_eval_prints_the_table_and_writes_json(model_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    assert main(["eval", str(model_dir), "--episodes", "2", "--seed", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "BallRun" in printed and "normalised cost @ 10" in printed
    result = json.loads(out.read_text())
    assert result["task"] == "BallRun" and result["episodes"] == 2 and result["seed"] == 1
    assert set(result["normalized_cost"]) == {"10", "20", "40"}
    assert result["mean_return"] == pytest.approx(float(np.mean(result["episode_returns"])))


def test_eval_of_a_missing_model_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path / "nothing"), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "no trained model" in err and len(err.strip().splitlines()) == 1
