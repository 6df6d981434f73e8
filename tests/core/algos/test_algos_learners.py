"""Each learner: one update has sane shapes/values; short runs on tasks with a known answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from saferule_core.algos.batch import BatchSampler
from saferule_core.algos.bc import BC
from saferule_core.algos.bcq_lag import BCQLag
from saferule_core.algos.registry import ALGORITHMS, get_algo, make_config
from saferule_core.algos.trainer import TrainConfig, fit
from saferule_core.artifacts.checks import open_session
from saferule_core.artifacts.export import default_check_observations, export_onnx
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import DatasetError

QUICK = TrainConfig(steps=150, batch_size=64, num_threads=1, progress=False, log_every=50)


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_update_gives_finite_metrics_and_changes_the_policy(algo, precision, random_dataset, tiny) -> None:
    torch.manual_seed(0)
    ds = random_dataset(episodes=8, episode_len=25)
    config = make_config(algo, {**tiny[algo], "precision": precision, "cost_limit": 100.0})
    learner = get_algo(algo).learner_class.from_dataset(ds, config)
    sampler = BatchSampler(ds, learner.info.stats, batch_size=32)
    policy_before = learner.deployable_policy()
    obs = torch.from_numpy(ds.observations[:16])
    for _ in range(3):
        metrics = learner.update(sampler.sample())
    assert metrics and all(v.shape == () and torch.isfinite(v) for v in metrics.values())
    assert learner.num_updates == 3
    actions = learner.deployable_policy()(obs)
    assert actions.shape == (16, ds.act_dim) and actions.dtype == torch.float32
    assert torch.isfinite(actions).all() and actions.abs().max() <= 1.0
    assert not torch.equal(actions, policy_before(obs))
    for p in learner.parameters():
        assert torch.isfinite(p).all() and p.dtype == torch.float32   # master weights stay fp32


def test_bcq_lag_reports_its_lagrangian_and_cpq_keeps_alpha_in_range(random_dataset, tiny) -> None:
    ds = random_dataset()
    for algo, key, upper in (("bcq_lag", "lagrange_multiplier", float("inf")), ("cpq", "alpha", 1.0)):
        learner = get_algo(algo).learner_class.from_dataset(ds, make_config(algo, tiny[algo]))
        sampler = BatchSampler(ds, learner.info.stats, batch_size=32)
        values = [float(learner.update(sampler.sample())[key]) for _ in range(5)]
        assert all(0.0 <= v <= upper for v in values)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bc_recovers_a_linear_behaviour_policy(precision, dataset_builder, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(4, 2)) * 0.15
    obs = rng.normal(1.0, 2.0, size=(2000, 4))
    ds = dataset_builder(obs, np.clip(obs @ weights, -1, 1), np.zeros(2000), episode_len=50)
    learner, result = fit("bc_all", ds, tmp_path / "bc", TrainConfig(steps=300, batch_size=128, num_threads=1,
                                                                    progress=False, log_every=50),
                          {"hidden": [64, 64], "precision": precision})
    test_obs = rng.normal(1.0, 2.0, size=(300, 4)).astype(np.float32)
    predicted = learner.deployable_policy()(torch.from_numpy(test_obs)).numpy()
    error = np.abs(predicted - np.clip(test_obs @ weights, -1, 1)).mean()
    spread = np.abs(np.clip(test_obs @ weights, -1, 1)).mean()
    assert error < 0.15 * spread, (error, spread)
    assert result.metrics["actor_loss"] < 0.01


def test_bc_safe_learns_only_from_episodes_within_the_cost_limit(dataset_builder, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows, episode_len = 2000, 50
    obs = rng.normal(size=(rows, 4))
    unsafe = (np.arange(rows) // episode_len) % 2 == 1          # odd episodes: cost 50 each
    actions = np.where(unsafe[:, None], -0.5, 0.5) * np.ones((rows, 2))
    ds = dataset_builder(obs, actions, unsafe.astype(np.float32), episode_len=episode_len)
    test_obs = torch.from_numpy(obs[:200].astype(np.float32))
    means = {}
    for algo in ("bc_all", "bc_safe"):
        learner, _ = fit(algo, ds, tmp_path / algo, QUICK, {"hidden": [32, 32]})
        means[algo] = learner.deployable_policy()(test_obs).mean().item()
    assert means["bc_safe"] > 0.4                                 # the safe episodes' action is +0.5
    assert abs(means["bc_all"]) < 0.25                            # the average of +0.5 and -0.5
    only_unsafe = ds.subset_episodes(unsafe[::episode_len])
    with pytest.raises(DatasetError, match="no episode"):
        BC.from_dataset(only_unsafe, make_config("bc_safe"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bcq_lag_cost_critic_learns_which_action_costs(precision, dataset_builder, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    rows = 2000
    obs = rng.normal(size=(rows, 4))
    costly = rng.random(rows) < 0.5
    actions = np.where(costly, 0.8, -0.8)[:, None]               # +0.8 always costs 1, -0.8 never
    ds = dataset_builder(obs, actions, costly.astype(np.float32), episode_len=50)
    learner, _ = fit("bcq_lag", ds, tmp_path / "bcql",
                     TrainConfig(steps=200, batch_size=64, num_threads=1, progress=False, log_every=50),
                     {"actor_hidden": [32, 32], "critic_hidden": [64, 64], "vae_hidden": 32, "gamma": 0.9,
                      "precision": precision})
    assert isinstance(learner, BCQLag)
    norm_obs = torch.from_numpy(learner.info.stats.normalize_observations(obs[:200]))
    with torch.no_grad():
        q_costly = learner.critics(norm_obs, torch.full((200, 1), 0.8))
        q_free = learner.critics(norm_obs, torch.full((200, 1), -0.8))
    cost_gap = (q_costly[2:] - q_free[2:]).mean(dim=1)             # both cost critics
    reward_gap = (q_costly[:2] - q_free[:2]).mean(dim=1)
    assert (cost_gap > 0.6).all(), cost_gap                        # immediate cost difference is 1
    assert (reward_gap.abs() < 0.2).all(), reward_gap              # rewards are all zero


def two_mode_dataset(dataset_builder, seed: int) -> tuple[np.ndarray, OfflineDataset]:
    """Two behaviour modes on random states: +0.8 earns reward 1 and costs 1 per step, -0.8 earns
    and costs nothing; the next state does not depend on the action. (observations, dataset)."""
    rng = np.random.default_rng(seed)
    rows = 3000
    obs = rng.normal(size=(rows, 4))
    costly = rng.random(rows) < 0.5
    actions = np.where(costly, 0.8, -0.8)[:, None] + rng.normal(0.0, 0.02, size=(rows, 1))
    ds = dataset_builder(obs, actions, costly.astype(np.float32), episode_len=50, rewards=costly.astype(np.float32))
    return obs, ds


def test_constrained_bcq_lag_deploys_the_uncostly_mode_that_osrl_selection_cannot_reach(dataset_builder,
                                                                                      tmp_path: Path) -> None:
    """Two behaviour modes: +0.8 earns reward 1 and costs 1, -0.8 earns and costs nothing. Under a
    budget that no costly step fits, the constrained policy must take the uncostly mode; OSRL's
    policy moves the VAE's z = 0 action (between the modes) by at most phi."""
    obs, ds = two_mode_dataset(dataset_builder, seed=5)
    chosen = {}
    for selection in ("constrained", "osrl"):
        learner, _ = fit("bcq_lag", ds, tmp_path / selection,
                         TrainConfig(steps=400, batch_size=128, num_threads=1, progress=False, log_every=100),
                         {"actor_hidden": [32, 32], "critic_hidden": [64, 64], "vae_hidden": 64, "gamma": 0.9,
                          "cost_limit": 1.0, "reward_scale": 1.0, "action_selection": selection})
        with torch.no_grad():
            chosen[selection] = learner.deployable_policy()(torch.as_tensor(obs[:200], dtype=torch.float32))
    assert (chosen["constrained"] < -0.5).float().mean() > 0.9, chosen["constrained"].flatten()[:20]
    assert (chosen["osrl"] < -0.5).float().mean() < 0.5


def test_bcq_lag_reward_and_cost_targets_share_the_sampled_next_actions(random_dataset, tiny) -> None:
    ds = random_dataset()
    learner = BCQLag.from_dataset(ds, make_config("bcq_lag", {**tiny["bcq_lag"], "reward_scale": 1.0}))
    # Make the cost critics copies of the reward critics: equal targets iff the samples are shared.
    with torch.no_grad():
        for layer in learner.critics_target.layers:
            layer.weight[2:] = layer.weight[:2]
            layer.bias[2:] = layer.bias[:2]
    batch = BatchSampler(ds, learner.info.stats, 64).sample()
    p = learner.own_state().params
    targets, behaviour = learner._critic_targets_impl(p["vae"], p["actor_target"], p["critics_target"],
                                                       batch.observations, batch.next_observations, batch.rewards,
                                                       batch.rewards, batch.terminals, learner.draw_noise(64)["latents"])
    assert targets.shape == (4, 64) and behaviour.shape == (64, ds.act_dim)
    torch.testing.assert_close(targets[0], targets[2])
    torch.testing.assert_close(targets[0], targets[1])


def test_episode_length_and_threshold_come_from_the_task(random_dataset, tiny) -> None:
    learner = BCQLag.from_dataset(random_dataset(task="BallRun"), make_config("bcq_lag", tiny["bcq_lag"]))
    assert learner.config.episode_len == 100                     # BallRun's T
    expected = 10.0 * (1 - 0.99 ** 100) / (1 - 0.99) / 100
    assert abs(learner.q_threshold - expected) < 1e-9
    unknown = BCQLag.from_dataset(random_dataset(task="NoSuchTask", episode_len=25), make_config("bcq_lag", tiny["bcq_lag"]))
    assert unknown.config.episode_len == 25                      # falls back to the longest episode


@pytest.mark.parametrize("layer_norm", [False, True])
def test_constrained_bcq_lag_policy_exports_to_onnx_and_matches_torch(random_dataset, tiny, tmp_path: Path,
                                                                      layer_norm: bool) -> None:
    ds = random_dataset(obs_dim=6, act_dim=2)
    learner, _ = fit("bcq_lag", ds, tmp_path / "model",
                     TrainConfig(steps=60, batch_size=64, num_threads=1, progress=False, log_every=20),
                     {**tiny["bcq_lag"], "action_selection": "constrained", "pessimistic_cost": True,
                      "critic_layer_norm": layer_norm})
    assert learner.critics.layer_norm is layer_norm
    policy = learner.deployable_policy()
    low, high = -np.ones(2), np.ones(2)
    report = export_onnx(policy, 6, 2, tmp_path / "policy.onnx", low, high, latency_runs=20)
    assert report.max_abs_diff <= 1e-5
    session = open_session(tmp_path / "policy.onnx")
    obs = default_check_observations(6, rows=33, seed=4)
    (actions,) = session.run(None, {"observation": obs})
    with torch.no_grad():
        np.testing.assert_allclose(actions, policy(torch.from_numpy(obs)).numpy(), atol=1e-5)


def test_cpq_known_answer_takes_the_rewarding_action_and_values_its_cost(dataset_builder, tmp_path: Path) -> None:
    """Known answer for CPQ: +0.8 earns reward 1 and costs 1 per step, -0.8 earns and costs nothing,
    and the next state does not depend on the action. Within a budget every step fits, the policy
    must take +0.8, and both critic groups must value +0.8 one unit above -0.8 (the immediate
    difference; the bootstrapped part is the same for both actions)."""
    obs, ds = two_mode_dataset(dataset_builder, seed=7)
    learner, _ = fit("cpq", ds, tmp_path / "cpq",
                     TrainConfig(steps=600, batch_size=128, num_threads=1, progress=False, log_every=200),
                     {"actor_hidden": [32, 32], "critic_hidden": [64, 64], "vae_hidden": 64, "gamma": 0.9,
                      "cost_limit": 1000.0, "reward_scale": 1.0, "actor_lr": 1e-3})
    sample = torch.as_tensor(obs[:200], dtype=torch.float32)
    with torch.no_grad():
        chosen = learner.deployable_policy()(sample)
        norm_obs = torch.from_numpy(learner.info.stats.normalize_observations(obs[:200]))
        gap = (learner.critics(norm_obs, torch.full((200, 1), 0.8))
               - learner.critics(norm_obs, torch.full((200, 1), -0.8))).mean(dim=1)
    assert (chosen > 0.5).float().mean() > 0.9, chosen.flatten()[:10]
    assert ((gap - 1.0).abs() < 0.3).all(), gap
