"""Smoke tests of `saferule dataset ...` through `saferule_core.cli.main`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saferule_core.cli import main
from saferule_core.data.dataset import OfflineDataset
from saferule_core.data.ledger import ForgetLedger, LedgerState
from saferule_core.data.store import DatasetStore


@pytest.fixture
def dataset_dir(tmp_path: Path, small_dataset: OfflineDataset) -> Path:
    return DatasetStore.create(tmp_path / "ds", small_dataset, episodes_per_shard=4).path


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("saferule dataset: error: ") and "\n" not in err
    return err


def test_info_prints_a_summary_table(dataset_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataset", "info", str(dataset_dir)]) == 0
    out = capsys.readouterr().out
    assert "episodes      12" in out
    assert "robot-0 (4)" in out and "bag-0.mcap (4)" in out
    assert "2023-11-14T22:13:20+00:00" in out                   # the fixture's first start time
    assert DatasetStore.open(dataset_dir).dataset_hash in out
    assert "no requests" in out


def test_hdf5_import_and_export(tmp_path: Path, dataset_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataset", "export-hdf5", str(dataset_dir), "--out", str(tmp_path / "d.hdf5")]) == 0
    assert main(["dataset", "import-hdf5", str(tmp_path / "d.hdf5"), "--task", "BallRun",
                 "--out", str(tmp_path / "imported"), "--robot-id", "sim"]) == 0
    assert "imported 12 episodes" in capsys.readouterr().out
    imported = DatasetStore.open(tmp_path / "imported")
    assert imported.num_transitions == DatasetStore.open(dataset_dir).num_transitions
    assert {ep.robot_id for ep in imported.episodes} == {"sim"}


def test_select_prints_matches(dataset_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataset", "select", str(dataset_dir), "--robot", "robot-1", "--since", "2023-11-14T22:20:01Z"]) == 0
    out = capsys.readouterr().out
    assert "ep-007" in out and "ep-010" in out and "ep-004" not in out
    assert "2 of 12 episodes matched" in out
    assert main(["dataset", "select", str(dataset_dir), "--episode", "ep-003", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["matched_episode_ids"] == ["ep-003"]


@pytest.mark.parametrize("extra, problem", [
    ([], "sets no field"),
    (["--episode", "ghost"], "1 of 1 episode ids are not in the dataset: 'ghost'"),
    (["--bag", "nope.mcap"], "matches none of the 12 episodes"),
])
def test_select_errors_are_one_line(dataset_dir: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                    problem: str) -> None:
    assert main(["dataset", "select", str(dataset_dir), *extra]) == 2
    assert problem in one_line_error(capsys)


def test_missing_dataset_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataset", "info", str(tmp_path / "absent")]) == 2
    assert "no such dataset directory" in one_line_error(capsys)


def test_bad_time_is_a_usage_error(dataset_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["dataset", "select", str(dataset_dir), "--since", "last tuesday"])
    assert exit_info.value.code == 2
    assert "neither POSIX seconds nor an ISO 8601 time" in capsys.readouterr().err


def test_forget_quarantines_then_purges(dataset_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataset", "forget", str(dataset_dir), "--robot", "robot-2", "--reason", "bad sensor",
                 "--requester", "ops"]) == 0
    assert "quarantined 4 episodes" in capsys.readouterr().out
    (entry,) = ForgetLedger(dataset_dir).entries()
    assert entry.state is LedgerState.QUARANTINED and entry.requester == "ops"
    assert DatasetStore.open(dataset_dir).load().num_episodes == 8
    assert main(["dataset", "forget", str(dataset_dir), "--episode", "ep-000", "--reason", "r", "--requester", "q",
                 "--purge"]) == 0
    assert "purged; rewrote 1 shards" in capsys.readouterr().out
    store = DatasetStore.open(dataset_dir)
    assert store.num_episodes == 11 and "ep-000" not in store.episode_ids()
    assert ForgetLedger(dataset_dir).summary() == {"quarantined": 1, "purged": 1}
    assert main(["dataset", "info", str(dataset_dir)]) == 0
    assert "quarantined 1, purged 1" in capsys.readouterr().out


def test_forget_by_ids_from_a_poison_record(tmp_path: Path, dataset_dir: Path) -> None:
    record = tmp_path / "poison.json"
    record.write_text(json.dumps({"poisoned_episode_ids": ["ep-002", "ep-005"]}))
    assert main(["dataset", "forget", str(dataset_dir), "--ids-from", str(record), "--reason", "poison",
                 "--requester", "eval"]) == 0
    assert DatasetStore.open(dataset_dir).quarantined_ids() == ("ep-002", "ep-005")


def test_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["dataset", "forget", "--help"])
    out = capsys.readouterr().out
    assert "example" in out and "--purge" in out and "AND" in out
