"""Re-basing observation statistics: every network computes the same function of the raw observation,
the statistics become the retained data's, and `unlearn` does it for the approximate methods."""

from __future__ import annotations

import importlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from saferule_core.algos.base import Learner
from saferule_core.algos.batch import OBS_STD_EPS, NormalizationStats
from saferule_core.algos.bc import BC
from saferule_core.algos.bcq_lag import BCQLag
from saferule_core.algos.cpq import CPQ
from saferule_core.algos.registry import get_algo, make_config
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import UnlearningError
from saferule_core.unlearning.api import unlearn
from saferule_core.unlearning.methods import METHODS
from saferule_core.unlearning.parts import clone_learner, network_state
from saferule_core.unlearning.rebase import rebase_observation_stats, retained_observation_stats
from saferule_core.unlearning.session import Session
from tests.core.unlearning.conftest import TINY, forget_mask_of, small_config

ATOL = 1e-5


def raw_probe(dataset: OfflineDataset) -> tuple[torch.Tensor, np.ndarray]:
    """Raw observations (logged ones and far-off ones) and unit-box actions to evaluate networks on."""
    rng = np.random.default_rng(7)
    logged = dataset.observations[::7][:64]
    far = rng.normal(0.0, 4.0, size=(16, dataset.obs_dim))
    obs = np.concatenate([logged, far]).astype(np.float32)
    actions = rng.uniform(-1.0, 1.0, size=(obs.shape[0], dataset.act_dim)).astype(np.float32)
    return torch.from_numpy(obs), actions


@torch.no_grad()
def outputs_on_raw(learner: Learner, raw: torch.Tensor, actions: np.ndarray) -> dict[str, torch.Tensor]:
    """Every network's output for raw observations, normalised with the learner's own statistics."""
    stats = learner.info.stats
    obs = torch.from_numpy(stats.normalize_observations(raw.numpy()))
    act = torch.from_numpy(actions)
    out = {"deployed": learner.deployable_policy()(raw)}
    if isinstance(learner, BC):
        out["actor"] = learner.actor(obs)
        return out
    z = torch.from_numpy(np.random.default_rng(3).uniform(-0.5, 0.5, size=(obs.shape[0], learner.vae.latent_dim))
                         .astype(np.float32))
    latent_mean, latent_std = learner.vae.encode(obs, act)
    out.update(q=learner.critics(obs, act), q_target=learner.critics_target(obs, act), vae_mean=latent_mean,
               vae_std=latent_std, vae_decoded=learner.vae.decode(obs, z))
    if isinstance(learner, BCQLag):
        out.update(actor=learner.actor(obs, act), actor_target=learner.actor_target(obs, act))
    else:
        assert isinstance(learner, CPQ)
        mean, std = learner.actor.distribution(obs)
        out.update(actor_mean=mean, actor_std=std)
    return out


def far_stats(stats: NormalizationStats, seed: int = 0) -> NormalizationStats:
    """Very different statistics: the mean moved by up to 3 old stds, the std scaled by 0.3 to 3."""
    rng = np.random.default_rng(seed)
    mean = stats.obs_mean + 3.0 * stats.obs_std * rng.uniform(-1.0, 1.0, stats.obs_dim)
    std = stats.obs_std * rng.uniform(0.3, 3.0, stats.obs_dim)
    return NormalizationStats(mean, std, stats.action_low, stats.action_high)


@pytest.mark.parametrize("algo", ["bcq_lag", "cpq", "bc_all"])
def test_rebasing_keeps_every_network_the_same_function_of_the_raw_observation(
        trained: dict[str, Learner], dataset: OfflineDataset, algo: str) -> None:
    learner = clone_learner(trained[algo])
    learner.train_mode(False)
    raw, actions = raw_probe(dataset)
    before = outputs_on_raw(learner, raw, actions)
    weights_before = network_state(learner)
    new_stats = far_stats(learner.info.stats)
    rewritten = rebase_observation_stats(learner, new_stats)
    assert rewritten == {"bcq_lag": 6, "cpq": 5, "bc_all": 1}[algo]    # first layers, targets included
    assert learner.info.stats == new_stats
    weights_after = network_state(learner)
    assert any(not torch.equal(weights_before[n][k], weights_after[n][k]) for n in weights_before
               for k in weights_before[n])
    after = outputs_on_raw(learner, raw, actions)
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], atol=ATOL, rtol=1e-5, msg=f"{algo} {name} changed")


def test_views_of_the_critic_weights_follow_the_rewrite(trained: dict[str, Learner]) -> None:
    learner = clone_learner(trained["bcq_lag"])
    critic_views = learner.own_state().params["critics"]   # what every update step reads
    rebase_observation_stats(learner, far_stats(learner.info.stats))
    for name, param in learner.critics.named_parameters():
        assert torch.equal(critic_views[name], param)   # rewritten in place, so the views follow


def test_retained_stats_are_the_retained_datas_with_the_floor_and_the_models_action_bounds(
        trained: dict[str, Learner], dataset: OfflineDataset) -> None:
    learner = trained["bcq_lag"]
    retained = dataset.subset_episodes(~forget_mask_of(dataset))
    constant = retained.observations.copy()
    constant[:, 3] = 5.0                                  # a constant feature gets the OBS_STD_EPS floor
    retained = replace(retained, observations=constant)
    stats = retained_observation_stats(learner, retained)
    expected = NormalizationStats.from_dataset(retained)
    np.testing.assert_array_equal(stats.obs_mean, expected.obs_mean)
    np.testing.assert_array_equal(stats.obs_std, expected.obs_std)
    assert stats.obs_std[3] == np.float32(OBS_STD_EPS)
    np.testing.assert_array_equal(stats.action_low, learner.info.stats.action_low)
    assert not np.allclose(stats.obs_mean, learner.info.stats.obs_mean, atol=0.05)   # the forget data moved it


def test_nothing_to_rebase_without_observation_normalisation(dataset: OfflineDataset) -> None:
    config = make_config("bc_all", {**TINY["bc_all"], "normalize_observations": False})
    learner = get_algo("bc_all").learner_class.from_dataset(dataset, config)
    identity = learner.info.stats
    weights = network_state(learner)
    assert rebase_observation_stats(learner, far_stats(identity)) == 0
    assert learner.info.stats == identity
    assert all(torch.equal(weights["actor"][k], v) for k, v in network_state(learner)["actor"].items())


@pytest.mark.parametrize("case", ["floor", "nan", "bounds", "size"])
def test_unusable_stats_are_refused_and_change_nothing(trained: dict[str, Learner], case: str) -> None:
    learner = clone_learner(trained["bc_all"])
    old = learner.info.stats
    weights = network_state(learner)
    mean, std, low, high = old.obs_mean.copy(), old.obs_std.copy(), old.action_low, old.action_high
    if case == "floor":
        std[1] = 1e-6
    elif case == "nan":
        mean[0] = np.nan
    elif case == "bounds":
        low, high = 2.0 * low, 2.0 * high
    else:
        mean, std = mean[:-1], std[:-1]
    expected = {"floor": "below the floor", "nan": "not finite", "bounds": "other action bounds",
                "size": "observation features"}[case]
    with pytest.raises(UnlearningError, match=expected):
        rebase_observation_stats(learner, NormalizationStats(mean, std, low, high))
    assert learner.info.stats == old
    assert all(torch.equal(weights["actor"][k], v) for k, v in network_state(learner)["actor"].items())


def test_a_network_of_unknown_layout_is_refused(trained: dict[str, Learner], monkeypatch: pytest.MonkeyPatch) -> None:
    learner = clone_learner(trained["bc_all"])
    monkeypatch.setattr(learner, "networks", lambda: {"actor": learner.actor, "probe": nn.Linear(7, 3)})
    with pytest.raises(UnlearningError, match="network 'probe' \\(Linear\\) is not one whose observation input"):
        rebase_observation_stats(learner, far_stats(learner.info.stats))


@pytest.mark.parametrize(("algo", "method"), [("bcq_lag", "finetune"), ("cpq", "neggrad_plus"),
                                              ("bc_all", "safe_rule")])
def test_unlearn_leaves_the_model_with_the_retained_datas_stats(trained: dict[str, Learner], dataset: OfflineDataset,
                                                                monkeypatch: pytest.MonkeyPatch, algo: str,
                                                                method: str) -> None:
    learner = trained[algo]
    original_stats = learner.info.stats
    mask = forget_mask_of(dataset)
    retained = dataset.subset_episodes(~mask)
    expected = NormalizationStats.from_dataset(retained)
    sampled: list[np.ndarray] = []
    runner_module, _, runner_name = METHODS[method].runner.partition(":")
    real_runner = getattr(importlib.import_module(runner_module), runner_name)

    def spy(session: Session) -> object:
        sampled.append(session.retained_sampler().data[:, :dataset.obs_dim].numpy().copy())
        return real_runner(session)

    monkeypatch.setattr(importlib.import_module(runner_module), runner_name, spy)
    new, report = unlearn(learner, dataset, mask, method, small_config(steps=6))
    assert report.stats_rebased and report.to_dict()["stats_rebased"] is True
    np.testing.assert_array_equal(new.info.stats.obs_mean, expected.obs_mean)
    np.testing.assert_array_equal(new.info.stats.obs_std, expected.obs_std)
    assert learner.info.stats == original_stats                         # the input learner is untouched
    np.testing.assert_allclose(sampled[0], expected.normalize_observations(retained.observations), atol=1e-6)


def test_retrain_needs_no_rebasing_and_reports_so(trained: dict[str, Learner], dataset: OfflineDataset) -> None:
    mask = forget_mask_of(dataset)
    new, report = unlearn(trained["bc_all"], dataset, mask, "retrain", small_config(retrain_steps=4))
    assert not report.stats_rebased
    np.testing.assert_array_equal(new.info.stats.obs_mean,
                                  NormalizationStats.from_dataset(dataset.subset_episodes(~mask)).obs_mean)
