"""`saferule train` end to end on a dataset directory (the command lives in saferule_core/commands)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saferule_core.algos.checkpoint import load_policy
from saferule_core.cli import main
from saferule_core.data.store import DatasetStore


@pytest.fixture
def dataset_dir(random_dataset, tmp_path: Path) -> Path:
    path = tmp_path / "data"
    DatasetStore.create(path, random_dataset(task="BallRun"))
    return path


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_train_command_writes_a_loadable_model(dataset_dir: Path, tmp_path: Path, capsys) -> None:
    overrides = write_yaml(tmp_path / "o.yaml", "actor_hidden: [16, 16]\ncritic_hidden: [16, 16]\nvae_hidden: 16\n"
                                                "train:\n  batch_size: 32\n  log_every: 3\n")
    out = tmp_path / "model"
    code = main(["train", str(dataset_dir), "--algo", "bcq_lag", "--steps", "6", "--out", str(out), "--seed", "3",
                 "--cost-limit", "20", "--precision", "bf16", "--threads", "1", "--config", str(overrides), "--quiet"])
    assert code == 0
    assert "trained bcq_lag for 6 steps" in capsys.readouterr().out
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["cost_limit"] == 20.0 and meta["config"]["precision"] == "bf16"
    assert meta["config"]["critic_hidden"] == [16, 16] and meta["train"]["batch_size"] == 32
    assert meta["train"]["seed"] == 3 and meta["info"]["task"] == "BallRun"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    policy_fn, task = load_policy(out)
    assert task == "BallRun"


def test_train_command_reports_bad_input_in_one_line(dataset_dir: Path, tmp_path: Path, capsys) -> None:
    bad = write_yaml(tmp_path / "bad.yaml", "critic_hiden: [16]\n")
    code = main(["train", str(dataset_dir), "--algo", "bcq_lag", "--steps", "2", "--out", str(tmp_path / "m"),
                 "--config", str(bad), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saferule train: error:") and "critic_hiden" in err and "\n" not in err
    for text, expected in (("critic_hidden: wide\n", "critic_hidden must be a list of integers, got 'wide'"),
                           ("train:\n  batch_size: big\n", "train setting batch_size must be an integer, got 'big'")):
        code = main(["train", str(dataset_dir), "--algo", "bcq_lag", "--steps", "2", "--out", str(tmp_path / "m"),
                     "--config", str(write_yaml(tmp_path / "bad.yaml", text)), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and expected in err and "\n" not in err, err
    code = main(["train", str(tmp_path / "missing"), "--algo", "bc_all", "--steps", "2", "--out", str(tmp_path / "m"),
                 "--quiet"])
    assert code == 2 and "missing" in capsys.readouterr().err


def test_train_command_trains_several_seeds_as_one_stack(dataset_dir: Path, tmp_path: Path, capsys) -> None:
    overrides = write_yaml(tmp_path / "o.yaml", "actor_hidden: [16, 16]\ncritic_hidden: [16, 16]\nvae_hidden: 16\n"
                                                "train:\n  batch_size: 32\n  log_every: 2\n")
    out = tmp_path / "models"
    code = main(["train", str(dataset_dir), "--algo", "bcq_lag", "--steps", "4", "--out", str(out), "--seeds", "4",
                 "2", "--threads", "1", "--config", str(overrides), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "trained 2 x bcq_lag (seeds 4 2) for 4 steps" in printed and "seed 2:" in printed
    for seed in (4, 2):
        meta = json.loads((out / f"seed_{seed}" / "config.json").read_text())
        assert meta["train"]["seed"] == seed and meta["num_updates"] == 4
        assert len((out / f"seed_{seed}" / "metrics.jsonl").read_text().splitlines()) == 2
        assert load_policy(out / f"seed_{seed}")[1] == "BallRun"


@pytest.mark.parametrize(("argv", "message"), [
    (["--algo", "bcq_lag", "--seeds", "1", "2", "1"], "--seeds repeats 1"),
    (["--algo", "bcq_lag", "--seeds", "1", "2", "--resume"], "do not resume"),
])
def test_bad_seed_lists_are_one_line_and_write_nothing(dataset_dir: Path, tmp_path: Path, capsys, argv: list[str],
                                                       message: str) -> None:
    out = tmp_path / "models"
    code = main(["train", str(dataset_dir), "--steps", "2", "--out", str(out), "--quiet", *argv])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists()


def test_the_commands_list_of_stackable_algorithms_is_the_learners() -> None:
    from saferule_core.algos.stacked import stackable_algorithms
    from saferule_core.commands.train import STACKABLE

    assert sorted(STACKABLE) == sorted(stackable_algorithms())
