"""The scripted behaviour family: cautious drivers stay safe, reckless ones earn more and pay cost."""

from __future__ import annotations

import numpy as np
import pytest

from saferule_core.collect.behaviours import SUPPORTED_TASKS, make_behaviour
from saferule_core.collect.rollout import run_episodes
from saferule_core.errors import TaskError
from saferule_core.tasks import get_task


@pytest.mark.parametrize("name", SUPPORTED_TASKS)
def test_cautious_driver_is_safe_and_reckless_driver_earns_more_at_high_cost(name: str) -> None:
    spec = get_task(name)
    aggressiveness = np.array([0.3, 1.0])
    rng = np.random.default_rng(0)
    rollouts = run_episodes(spec, lambda idx: make_behaviour(spec, aggressiveness[idx], rng),
                            num_episodes=2, seed=0, num_envs=2)
    returns, costs = rollouts.episode_returns(), rollouts.episode_cost_returns()
    assert costs[0] < 10.0, f"cautious {name} driver paid cost {costs[0]}"
    assert costs[1] > 40.0, f"reckless {name} driver paid only cost {costs[1]}"
    assert returns[1] > returns[0] > 0.0
    assert np.abs(rollouts.actions).max() <= 1.0 and rollouts.actions.dtype == np.float32


def test_behaviour_actions_are_batched_and_bounded() -> None:
    spec = get_task("CarRun")
    policy = make_behaviour(spec, np.linspace(0, 1, 5), np.random.default_rng(1))
    obs = np.random.default_rng(2).normal(size=(5, spec.obs_dim)).astype(np.float32)
    actions = policy(obs)
    assert actions.shape == (5, spec.act_dim) and actions.dtype == np.float32
    assert np.isfinite(actions).all() and np.abs(actions).max() <= 1.0


def test_tasks_without_a_behaviour_family_are_refused() -> None:
    with pytest.raises(TaskError, match="BallRun"):
        make_behaviour(get_task("DroneRun"), np.zeros(1), np.random.default_rng(0))
