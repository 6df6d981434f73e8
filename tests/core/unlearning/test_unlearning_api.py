"""`unlearn`: every method on every learner kind, the refusals, progress and cancellation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saferule_core.algos.base import Learner
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import UnlearningError
from saferule_core.unlearning.api import UnlearningCancelled, unlearn
from saferule_core.unlearning.config import UnlearnConfig
from saferule_core.unlearning.parts import network_state
from tests.core.unlearning.conftest import forget_mask_of, small_config, two_behaviour_dataset

CASES = [(algo, method) for algo in ("bcq_lag", "cpq", "bc_all")
         for method in ("safe_rule", "retrain", "finetune", "neggrad_plus", "trajdeleter")
         if not (algo == "bc_all" and method == "trajdeleter")] + \
        [("bcq_lag_constrained", method) for method in ("safe_rule", "finetune", "trajdeleter")]


def _weights_equal(a: Learner, b: Learner) -> bool:
    sa, sb = network_state(a), network_state(b)
    return all(torch.equal(sa[n][k], sb[n][k]) for n in sa for k in sa[n])


@pytest.mark.parametrize(("algo", "method"), CASES)
def test_every_method_returns_a_new_finite_learner_of_the_same_kind(trained: dict[str, Learner],
                                                                    dataset: OfflineDataset, algo: str,
                                                                    method: str) -> None:
    learner = trained[algo]
    saved = network_state(learner)
    mask = forget_mask_of(dataset)
    new, report = unlearn(learner, dataset, mask, method, small_config(steps=12, retrain_steps=12))
    assert type(new) is type(learner) and new is not learner
    assert new.info.algo == learner.info.algo
    assert new.info.dataset_hash == dataset.subset_episodes(~mask).dataset_hash()
    with torch.no_grad():
        actions = new.deployable_policy()(torch.from_numpy(dataset.observations[:50]))
    assert actions.shape == (50, 2) and torch.isfinite(actions).all()
    assert all(torch.isfinite(p).all() for p in new.parameters())
    assert report.method == method and report.updates >= 12 and report.wall_time_s > 0
    assert (report.forget_episodes, report.forget_transitions) == (4, 40)
    assert report.retain_transitions == 160
    assert all(np.isfinite(v) for v in report.offline_after.values()) and "forget_action_distance" in report.offline_after
    assert report.to_dict()["method"] == method
    # the input learner is never modified
    current = network_state(learner)
    assert all(torch.equal(saved[n][k], current[n][k]) for n in saved for k in saved[n])


def test_trajdeleter_needs_critics(trained: dict[str, Learner], dataset: OfflineDataset) -> None:
    with pytest.raises(UnlearningError, match="reward critics"):
        unlearn(trained["bc_all"], dataset, forget_mask_of(dataset), "trajdeleter", small_config())


@pytest.mark.parametrize(("mask_kind", "message"), [("none", "forget set is empty"),
                                                    ("all", "whole dataset"),
                                                    ("ints", "boolean mask"),
                                                    ("short", "boolean mask")])
def test_refuses_bad_forget_sets(trained: dict[str, Learner], dataset: OfflineDataset, mask_kind: str,
                                 message: str) -> None:
    n = dataset.num_episodes
    mask = {"none": np.zeros(n, bool), "all": np.ones(n, bool), "ints": np.ones(n, int),
            "short": np.ones(n - 1, bool)}[mask_kind]
    with pytest.raises(UnlearningError, match=message):
        unlearn(trained["bc_all"], dataset, mask, "finetune", small_config())


def test_refuses_a_model_of_other_spaces_or_task(trained: dict[str, Learner]) -> None:
    wider = two_behaviour_dataset(obs_dim=9, task="BallCircle")
    with pytest.raises(UnlearningError, match="obs_dim=7"):
        unlearn(trained["bc_all"], wider, forget_mask_of(wider), "finetune", small_config())
    other_task = two_behaviour_dataset(task="CarRun")
    with pytest.raises(UnlearningError, match="task BallRun"):
        unlearn(trained["bc_all"], other_task, forget_mask_of(other_task), "finetune", small_config())


def test_refuses_unknown_methods_and_sisa_on_a_single_model(trained: dict[str, Learner],
                                                             dataset: OfflineDataset) -> None:
    mask = forget_mask_of(dataset)
    with pytest.raises(UnlearningError, match="unknown unlearning method 'forget_harder'"):
        unlearn(trained["bc_all"], dataset, mask, "forget_harder")
    with pytest.raises(UnlearningError, match="sisa unlearns only SISA ensembles"):
        unlearn(trained["bc_all"], dataset, mask, "sisa", small_config())


@pytest.mark.parametrize("method", ["safe_rule", "retrain", "neggrad_plus"])
def test_should_stop_cancels(trained: dict[str, Learner], dataset: OfflineDataset, method: str) -> None:
    calls = {"n": 0}

    def stop_after_a_few() -> bool:
        calls["n"] += 1
        return calls["n"] > 4

    with pytest.raises(UnlearningCancelled, match=f"{method} was cancelled"):
        unlearn(trained["bcq_lag"], dataset, forget_mask_of(dataset), method, small_config(steps=50),
                should_stop=stop_after_a_few)
    assert 4 < calls["n"] < 50
    assert issubclass(UnlearningCancelled, UnlearningError)


def test_progress_reports_stages_in_order(trained: dict[str, Learner], dataset: OfflineDataset) -> None:
    seen: list[tuple[str, float]] = []
    unlearn(trained["bcq_lag"], dataset, forget_mask_of(dataset), "safe_rule", small_config(steps=20),
            progress=lambda stage, fraction, metrics: seen.append((stage, fraction)))
    stages = [s for s, _ in seen]
    assert stages[0] == "safe_rule" and stages[-1] == "done"
    assert stages.index("suppress") < stages.index("repair") < stages.index("select")
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_config_from_nested_mapping_and_refusals() -> None:
    config = UnlearnConfig(**{"steps": 7, "safe_rule": {"cost_weight": 2.5}, "sisa": {"shards": 3}})
    assert config.safe_rule.cost_weight == 2.5 and config.sisa.shards == 3 and config.steps == 7
    assert UnlearnConfig.from_dict(config.to_dict()) == config
    with pytest.raises(UnlearningError, match="unknown safe_rule settings: cost_wieght"):
        UnlearnConfig(safe_rule={"cost_wieght": 1.0})
    with pytest.raises(UnlearningError, match="unknown unlearning settings: stepz"):
        UnlearnConfig.from_dict({"stepz": 3})
    with pytest.raises(UnlearningError, match="steps must be a positive integer"):
        UnlearnConfig(steps=0)
    with pytest.raises(UnlearningError, match="repair_fraction"):
        UnlearnConfig(safe_rule={"repair_fraction": 1.0})
