"""The dynamics model that scores candidate policies by simulated rollouts (known answers)."""

from __future__ import annotations

import numpy as np
import torch

from saferule_core.algos.batch import NormalizationStats
from saferule_core.data.dataset import EpisodeInfo, OfflineDataset
from saferule_core.unlearning.dynamics import (
    DynamicsSettings,
    fit_dynamics,
    rollout_returns,
    rollout_starts,
    simulate_episodes,
)
from saferule_core.unlearning.model_repair import ModelRepairSettings, repair_on_model, simulated_values
from saferule_core.unlearning.parts import model_parts

EPISODES, LENGTH = 40, 25


def _driving_dataset() -> OfflineDataset:
    """A point on a line: position += 0.1 * throttle; reward = throttle; a step costs 1 when the
    throttle is above 0.5. Logged throttles are uniform in [-1, 1], so every action is covered."""
    rng = np.random.default_rng(0)
    rows = EPISODES * LENGTH
    actions = rng.uniform(-1.0, 1.0, size=(rows, 1))
    obs = np.zeros((rows, 2))
    for episode in range(EPISODES):
        position = rng.normal(0.0, 0.1)
        for t in range(LENGTH):
            row = episode * LENGTH + t
            obs[row] = (position, 1.0)
            position += 0.1 * actions[row, 0]
    next_obs = obs.copy()
    next_obs[:, 0] += 0.1 * actions[:, 0]
    timeouts = np.zeros(rows)
    timeouts[LENGTH - 1::LENGTH] = 1.0
    episodes = [EpisodeInfo(f"ep-{i}", "robot_1", "bag-0", float(i), float(i) + 1.0) for i in range(EPISODES)]
    return OfflineDataset(observations=obs, next_observations=next_obs, actions=actions, rewards=actions[:, 0].copy(),
                          costs=(actions[:, 0] > 0.5).astype(np.float64), terminals=np.zeros(rows), timeouts=timeouts,
                          episodes=episodes, episode_lengths=np.full(EPISODES, LENGTH), task="")


def test_rollouts_rank_a_stopped_policy_below_a_moving_one_and_see_the_cost() -> None:
    data = _driving_dataset()
    stats = NormalizationStats.from_dataset(data)
    torch.manual_seed(0)
    model = fit_dynamics(data, stats, DynamicsSettings(updates=1500), seed=0)
    starts = rollout_starts(data, stats, count=16, seed=0, steps=LENGTH, random_steps=0)

    def constant(throttle: float):  # type: ignore[no-untyped-def]
        return lambda obs: torch.full((obs.shape[0], 1), throttle)

    stopped = rollout_returns(model, constant(0.0), starts)
    cruising = rollout_returns(model, constant(0.4), starts)
    racing = rollout_returns(model, constant(0.9), starts)
    # true returns over 25 steps: (0, 0), (10, 0), (22.5, 25)
    assert abs(stopped[0]) < 1.5 and abs(cruising[0] - 10.0) < 1.5 and abs(racing[0] - 22.5) < 2.0
    # a step cost is a step function of the action; the regression smooths it near the edge (0.4 is
    # close to 0.5), which is why Safe-RULE keeps judging cost by its critics
    assert stopped[1] < 2.0 and racing[1] > 18.0 and cruising[1] < racing[1] / 2


def test_start_perturbation_is_the_same_for_every_policy_and_fitting_is_seeded() -> None:
    data = _driving_dataset()
    stats = NormalizationStats.from_dataset(data)
    starts = rollout_starts(data, stats, count=8, seed=5, steps=LENGTH, random_steps=3)
    again = rollout_starts(data, stats, count=8, seed=5, steps=LENGTH, random_steps=3)
    assert starts.random_actions.shape == (3, 8, 1) and torch.equal(starts.random_actions, again.random_actions)
    assert torch.equal(starts.states, again.states)
    settings = DynamicsSettings(updates=50)
    first, second = fit_dynamics(data, stats, settings, seed=1), fit_dynamics(data, stats, settings, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not any(p.requires_grad for p in first.parameters())


def test_simulated_returns_carry_gradients_to_the_policy() -> None:
    data = _driving_dataset()
    stats = NormalizationStats.from_dataset(data)
    model = fit_dynamics(data, stats, DynamicsSettings(updates=300), seed=0)
    starts = rollout_starts(data, stats, count=4, seed=0, steps=5, random_steps=1)
    throttle = torch.tensor(0.2, requires_grad=True)
    reward, cost = simulate_episodes(model, lambda obs: throttle.expand(obs.shape[0], 1), starts)
    assert reward.shape == cost.shape == (4,)
    reward.sum().backward()
    assert throttle.grad is not None and float(throttle.grad) > 0     # more throttle, more reward, in the model too


def test_model_repair_drives_the_actor_up_to_the_cost_target_and_no_further() -> None:
    """On the driving data the best throttle under a cost target of 0 is just below 0.5 (reward 12.5
    over 25 steps); the actor, started at no perturbation, learns to drive and keeps the cost down."""
    from tests.core.unlearning.conftest import train_tiny

    data = _driving_dataset()
    learner = train_tiny("bcq_lag_constrained", data, steps=100)    # phi 0.5: the actor reaches +-0.5
    parts = model_parts(learner)
    parts.reset_actor_to_behaviour(torch.Generator().manual_seed(0))
    stats = learner.info.stats
    model = fit_dynamics(data, stats, DynamicsSettings(updates=1500), seed=0)
    starts = rollout_starts(data, stats, count=32, seed=1, steps=LENGTH, random_steps=0)
    before = rollout_returns(model, parts.policy_actions, starts)
    history: list[dict[str, float]] = []
    settings = ModelRepairSettings(steps=150, learning_rate=3e-3, cost_target=1.0, cost_penalty=10.0,
                                   pessimistic_cost=False)
    repair_on_model(parts, model, lambda step: rollout_starts(data, stats, 32, seed=step, steps=LENGTH, random_steps=0),
                    settings, lambda step, metrics: history.append(metrics))
    after = rollout_returns(model, parts.policy_actions, starts)
    assert len(history) == 150 and all(np.isfinite(h["model_repair_reward"]) for h in history)
    assert after[0] > before[0] + 2.0                 # it drives...
    assert after[1] < 4.0 and after[0] < 14.0         # ...within reach of the best safe throttle, not racing (22.5, 25)


def test_simulated_values_are_the_policys_own_discounted_returns() -> None:
    """Throttle a now, then the policy's constant 0.3: reward a + sum_t gamma^t 0.3; the first step costs 1
    only for a > 0.5."""
    data = _driving_dataset()
    stats = NormalizationStats.from_dataset(data)
    model = fit_dynamics(data, stats, DynamicsSettings(updates=1500), seed=0)
    obs = torch.from_numpy(stats.normalize_observations(data.observations[:6])).float()
    first = torch.tensor([[-0.6], [0.0], [0.9], [-0.6], [0.0], [0.9]])
    reward, cost = simulated_values(model, lambda o: torch.full((o.shape[0], 1), 0.3), obs, first, horizon=10,
                                    gamma=0.9)
    tail = 0.3 * sum(0.9 ** t for t in range(1, 10))
    torch.testing.assert_close(reward, first[:, 0] + tail, atol=0.25, rtol=0.0)
    # the costly first step adds about 1 (the regression smooths the step cost near 0.5, so the tail is not 0)
    assert float(cost[[2, 5]].min()) > float(cost[[0, 1, 3, 4]].max()) + 0.8
