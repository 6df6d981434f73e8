"""Smoke tests of `saferule poison` through `saferule_core.cli.main`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from saferule_core.attacks import POISON_RECORD_FILE, poisoned_episode_mask
from saferule_core.cli import main
from saferule_core.data.dataset import OfflineDataset
from saferule_core.data.store import DatasetStore


@pytest.fixture
def clean_dir(tmp_path: Path, clean_dataset: OfflineDataset) -> Path:
    return DatasetStore.create(tmp_path / "clean", clean_dataset).path


@pytest.mark.parametrize("attack, extra", [
    ("relabel", []),
    ("trigger", ["--trigger-dims", "0,2", "--trigger-values", "5,-5"]),
])
def test_poison_writes_dataset_and_record(tmp_path: Path, clean_dir: Path, attack: str, extra: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "poisoned"
    assert main(["poison", str(clean_dir), "--attack", attack, "--rate", "0.2", "--out", str(out), *extra]) == 0
    assert f"{attack}: poisoned 4 of 20 episodes" in capsys.readouterr().out
    record = json.loads((out / POISON_RECORD_FILE).read_text())
    poisoned = DatasetStore.open(out).load()
    mask = poisoned_episode_mask(poisoned, record)
    assert record["attack"] == attack and mask.sum() == 4 and record["seed"] == 0
    assert record["source_dataset_hash"] == DatasetStore.open(clean_dir).dataset_hash
    assert record["poisoned_dataset_hash"] == DatasetStore.open(out).dataset_hash
    assert (poisoned.episode_cost_returns()[mask] == 0).all()
    if attack == "trigger":
        rows = poisoned.transition_mask_for_episodes(mask)
        np.testing.assert_array_equal(np.unique(poisoned.observations[rows][:, [0, 2]], axis=0), [[5.0, -5.0]])


def test_poison_inject_uses_the_reckless_dataset(tmp_path: Path, clean_dir: Path,
                                                 reckless_dataset: OfflineDataset) -> None:
    reckless_dir = DatasetStore.create(tmp_path / "reckless", reckless_dataset).path
    out = tmp_path / "injected"
    assert main(["poison", str(clean_dir), "--attack", "inject", "--reckless", str(reckless_dir),
                 "--out", str(out), "--seed", "4"]) == 0
    store = DatasetStore.open(out)
    record = json.loads((out / POISON_RECORD_FILE).read_text())
    assert store.num_episodes == 22 and record["num_poisoned_episodes"] == 2 and record["seed"] == 4
    injected = [ep for ep in store.episodes if ep.episode_id in record["poisoned_episode_ids"]]
    assert {ep.robot_id for ep in injected} == {"compromised"}


def test_inject_without_reckless_is_a_one_line_error(tmp_path: Path, clean_dir: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["poison", str(clean_dir), "--attack", "inject", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "saferule poison: error: the inject attack needs --reckless DIR (episodes of a reckless policy)"
    assert not (tmp_path / "x").exists()


def test_unsatisfiable_attack_writes_nothing(tmp_path: Path, clean_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["poison", str(clean_dir), "--attack", "relabel", "--cost-threshold", "1000",
                 "--out", str(tmp_path / "x")]) == 2
    assert "cost return above 1000" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_existing_output_is_refused(clean_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["poison", str(clean_dir), "--attack", "relabel", "--out", str(clean_dir)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_poison_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["poison", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--reckless" in out and "poison.json" in out


def test_pool_factor_one_relabels_exactly_the_costliest(tmp_path: Path, clean_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    clean = DatasetStore.open(clean_dir).load()
    out = tmp_path / "poisoned"
    assert main(["poison", str(clean_dir), "--attack", "relabel", "--rate", "0.2", "--pool-factor", "1",
                 "--cost-threshold", "0", "--out", str(out)]) == 0
    record = json.loads((out / POISON_RECORD_FILE).read_text())
    mask = poisoned_episode_mask(DatasetStore.open(out).load(), record)
    costliest = np.argsort(-clean.episode_cost_returns(), kind="stable")[:4]
    assert sorted(np.flatnonzero(mask)) == sorted(costliest)
    capsys.readouterr()
    assert main(["poison", str(clean_dir), "--attack", "relabel", "--pool-factor", "0.5",
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pool_factor must be at least 1" in err and "\n" not in err and not (tmp_path / "bad").exists()

