"""`saferule unlearn`: a request end to end from the command line, and its one-line refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from saferule_core.algos.base import Learner
from saferule_core.algos.checkpoint import save_model
from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.cli import main
from saferule_core.data.ledger import ForgetLedger, LedgerState, purge_forgotten, request_forget
from saferule_core.data.selectors import ForgetSelector
from saferule_core.data.store import DatasetStore
from tests.core.unlearning.conftest import train_tiny, two_behaviour_dataset


@pytest.fixture
def fleet(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "fleet"
    shutil.copytree(template, root)
    (root / "steps.yaml").write_text("steps: 5\nbatch_size: 16\nforget_batch_size: 8\nnum_threads: 1\n")
    return root


def _args(root: Path, *extra: str) -> list[str]:
    return ["unlearn", "--dataset", str(root / "data"), "--model", str(root / "model"), "--registry",
            str(root / "registry"), "--key", str(root / "keys" / "signing_key"), "--config", str(root / "steps.yaml"),
            *extra]


def test_unlearn_by_selector_records_quarantines_unlearns_and_publishes(fleet: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(fleet, "--robot", "robot_3", "--reason", "tampered", "--method", "finetune")) == 0
    out = capsys.readouterr().out
    assert "quarantined 4 episodes" in out and "published v0002 (parent v0001)" in out
    (entry,) = ForgetLedger(fleet / "data").entries()
    assert entry.state == LedgerState.UNLEARNED and entry.requester and entry.reason == "tampered"
    assert PolicyRegistry(fleet / "registry").latest() == "v0002"
    assert (fleet / "unlearned" / entry.request_id / "model.pt").is_file()
    # lineage: v0002 records the model it was exported from, where the next unlearning starts
    registry = PolicyRegistry(fleet / "registry")
    assert registry.deployed_model_dir(fleet / "model") == (fleet / "unlearned" / entry.request_id).resolve()


def _purged_request(root: Path) -> str:
    store = DatasetStore.open(root / "data")
    entry = request_forget(store, ForgetSelector(episode_ids=("forget-00",)), "ops", "test")
    purge_forgotten(store, entry.request_id)
    return entry.request_id


@pytest.mark.parametrize(("case", "message"), [
    ("empty", "matches none of the 20 episodes"),
    ("whole", "the forget set is the whole dataset"),
    ("purged", "already forgotten (purged)"),
    ("mismatch", "obs_dim=9, act_dim=2 but the dataset"),
    ("neither", "name either --request-id or episodes"),
])
def test_refusals_are_one_line_and_leave_the_registry_unchanged(fleet: Path, capsys: pytest.CaptureFixture[str],
                                                                trained: dict[str, Learner], case: str,
                                                                message: str) -> None:
    extra: list[str] = []
    if case == "empty":
        extra = ["--robot", "robot_9", "--reason", "x"]
    elif case == "whole":
        extra = ["--robot", "robot_1", "--robot", "robot_3", "--reason", "x"]
    elif case == "purged":
        extra = ["--request-id", _purged_request(fleet)]
    elif case == "mismatch":
        save_model(fleet / "model", train_tiny("bc_all", two_behaviour_dataset(obs_dim=9), steps=2))
        extra = ["--robot", "robot_3", "--reason", "x"]
    ledger_before = [e.state for e in ForgetLedger(fleet / "data").entries()]
    assert main(_args(fleet, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saferule unlearn: error:") and message in err and "\n" not in err
    assert PolicyRegistry(fleet / "registry").versions() == ["v0001"]
    assert [e.state for e in ForgetLedger(fleet / "data").entries()] == ledger_before


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["unlearn", "--help"])
    out = capsys.readouterr().out
    assert "requested -> quarantined -> unlearning -> unlearned" in out and "example" in out and "--purge" in out


def test_sisa_runs_end_to_end_from_the_command_line(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """train --sisa-shards, export and unlearn --method sisa: the method the CLI offers runs."""
    shutil.rmtree(fleet / "model")
    assert main(["train", str(fleet / "data"), "--algo", "bc_all", "--steps", "4", "--batch-size", "16",
                 "--threads", "1", "--sisa-shards", "3", "--seed", "2", "--out", str(fleet / "model"), "--quiet"]) == 0
    assert "trained a SISA ensemble of 3 x bc_all" in capsys.readouterr().out
    assert main(["export", str(fleet / "model"), "--registry", str(fleet / "registry"), "--key",
                 str(fleet / "keys" / "signing_key"), "--parent", "v0001"]) == 0
    assert PolicyRegistry(fleet / "registry").latest() == "v0002"
    assert PolicyRegistry(fleet / "registry").checkpoint_of("v0002") == (fleet / "model").resolve()
    assert main(_args(fleet, "--robot", "robot_3", "--reason", "tampered", "--method", "sisa")) == 0
    out = capsys.readouterr().out
    assert "published v0003 (parent v0002)" in out
    (entry,) = ForgetLedger(fleet / "data").entries()
    assert entry.state == LedgerState.UNLEARNED
    assert (fleet / "unlearned" / entry.request_id / "sisa.json").is_file()


@pytest.mark.parametrize(("extra", "message"), [
    (["--sisa-shards", "1"], "--sisa-shards must be at least 2"),
    (["--sisa-shards", "500"], "would leave shards empty: the dataset has only 20 episodes"),
    (["--sisa-shards", "2", "--seeds", "1", "2"], "--seeds and --sisa-shards do not combine"),
    (["--sisa-shards", "2", "--resume"], "SISA runs do not resume"),
])
def test_bad_sisa_training_is_one_line_and_writes_nothing(fleet: Path, capsys: pytest.CaptureFixture[str],
                                                          extra: list[str], message: str) -> None:
    out = fleet / "sisa-model"
    assert main(["train", str(fleet / "data"), "--algo", "bc_all", "--steps", "4", "--out", str(out), "--quiet",
                 *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saferule train: error:") and message in err and "\n" not in err
    assert not out.exists()
