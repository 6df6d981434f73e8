"""SISA: shards by episode, forgetting refits only the shards that held forget episodes, the
ensemble policy averages the shards and exports to ONNX, and ensembles survive save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import saferule_core.unlearning.sisa as sisa_module
from saferule_core.data.dataset import OfflineDataset
from saferule_core.unlearning.api import unlearn
from saferule_core.unlearning.models import load_model, save_model_dir
from saferule_core.unlearning.parts import network_state
from saferule_core.unlearning.sisa import SISAEnsemble, shard_assignment, train_sisa
from tests.core.unlearning.conftest import TINY, small_config


@pytest.fixture(scope="module")
def ensemble(dataset: OfflineDataset) -> SISAEnsemble:
    return train_sisa("bc_all", dataset, shards=4, steps_per_shard=10, batch_size=16, seed=0,
                      overrides=TINY["bc_all"], num_threads=1)


def test_shards_partition_the_episodes() -> None:
    ids = [f"e{i}" for i in range(10)]
    shards = shard_assignment(ids, 3, seed=1)
    assert sorted(sum(map(list, shards), [])) == sorted(ids)
    assert sorted(len(s) for s in shards) == [3, 3, 4]
    assert shard_assignment(ids, 3, seed=1) == shards


def test_forgetting_refits_only_the_shards_that_held_forget_episodes(ensemble: SISAEnsemble, dataset: OfflineDataset,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    target = ensemble.records[2].episode_ids[0]
    mask = np.array([eid == target for eid in dataset.episode_ids()])
    refits: list[tuple[str, ...]] = []
    original_fit_shard = sisa_module.fit_shard

    def counting_fit_shard(*args: object, **kwargs: object) -> object:
        refits.append(args[2].episode_ids)  # type: ignore[attr-defined]
        return original_fit_shard(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sisa_module, "fit_shard", counting_fit_shard)
    new, report = unlearn(ensemble, dataset, mask, "sisa", small_config())
    assert len(refits) == 1 and target not in refits[0]
    assert set(refits[0]) == set(ensemble.records[2].episode_ids) - {target}
    assert report.details == {"shards_retrained": 1.0, "shards": 4.0}
    assert report.updates == 10
    before, after = network_state(ensemble), network_state(new)
    for k in range(4):
        same = all(torch.equal(before[n][p], after[n][p]) for n in before if n.startswith(f"shard{k}/") for p in before[n])
        assert same == (k != 2)
    assert all(target not in r.episode_ids for r in new.records)


def test_ensemble_policy_is_the_mean_of_the_shards(ensemble: SISAEnsemble, dataset: OfflineDataset) -> None:
    obs = torch.from_numpy(dataset.observations[:20])
    with torch.no_grad():
        mean = torch.stack([shard.deployable_policy()(obs) for shard in ensemble.shards]).mean(dim=0)
        assert torch.allclose(ensemble.deployable_policy()(obs), mean, atol=1e-6)


def test_ensemble_exports_to_onnx(ensemble: SISAEnsemble, tmp_path: Path) -> None:
    from saferule_core.artifacts.export import export_onnx

    report = export_onnx(ensemble.deployable_policy(), 7, 2, tmp_path / "sisa.onnx", [-1, -1], [1, 1],
                         latency_runs=5)
    assert report.max_abs_diff <= 1e-5 and report.path.stat().st_size > 0


def test_save_and_load_round_trip(ensemble: SISAEnsemble, dataset: OfflineDataset, tmp_path: Path) -> None:
    save_model_dir(tmp_path / "model", ensemble)
    loaded = load_model(tmp_path / "model")
    assert isinstance(loaded, SISAEnsemble) and loaded.records == ensemble.records
    obs = torch.from_numpy(dataset.observations[:5])
    with torch.no_grad():
        assert torch.equal(loaded.deployable_policy()(obs), ensemble.deployable_policy()(obs))


def test_stacked_shards_are_the_models_separate_fits_give(ensemble: SISAEnsemble, dataset: OfflineDataset) -> None:
    # bc_all stacks: train_sisa fitted the four shards as one stacked run; each shard must be the
    # model a separate fit of its record gives (up to float summation order)
    for shard, record in zip(ensemble.shards, ensemble.records):
        wanted = np.isin(np.array(dataset.episode_ids(), dtype=object), np.array(record.episode_ids, dtype=object))
        alone = sisa_module.fit_shard("bc_all", dataset.subset_episodes(wanted), record, dict(TINY["bc_all"]), 1)
        assert shard.info.stats == alone.info.stats and shard.num_updates == alone.num_updates == record.steps
        for name, param in alone.actor.named_parameters():
            torch.testing.assert_close(dict(shard.actor.named_parameters())[name], param, rtol=1e-4, atol=1e-5)


def test_forgetting_from_several_shards_refits_them_as_one_stack(ensemble: SISAEnsemble, dataset: OfflineDataset,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    targets = {ensemble.records[0].episode_ids[0], ensemble.records[3].episode_ids[0]}
    mask = np.array([eid in targets for eid in dataset.episode_ids()])
    stacks: list[int] = []
    original = sisa_module.build_stack

    def counting_build_stack(*args: object, **kwargs: object) -> object:
        stacks.append(len(args[1]))  # type: ignore[arg-type]
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sisa_module, "build_stack", counting_build_stack)
    new, report = unlearn(ensemble, dataset, mask, "sisa", small_config())
    assert stacks == [2] and report.details == {"shards_retrained": 2.0, "shards": 4.0}
    assert report.updates == 20
    assert all(not targets.intersection(r.episode_ids) for r in new.records)
