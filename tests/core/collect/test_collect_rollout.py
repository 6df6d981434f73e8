"""run_episodes: DSRL-layout transitions, time-outs, and batching that does not change episodes."""

from __future__ import annotations

import numpy as np

from saferule_core.collect.rollout import run_episodes
from saferule_core.tasks import get_task


def _constant(action: list[float]):
    def factory(indices: np.ndarray):
        return lambda obs: np.tile(np.asarray([action], dtype=np.float32), (obs.shape[0], 1))
    return factory


def test_rollouts_have_dsrl_layout_and_a_timeout_on_each_last_step() -> None:
    spec = get_task("BallRun")
    rollouts = run_episodes(spec, _constant([0.5, 0.0]), num_episodes=3, seed=0, num_envs=2)
    n = 3 * spec.episode_len
    assert rollouts.observations.shape == (n, spec.obs_dim) == rollouts.next_observations.shape
    assert rollouts.actions.shape == (n, spec.act_dim) and rollouts.rewards.shape == (n,)
    assert list(rollouts.episode_lengths) == [spec.episode_len] * 3
    assert rollouts.terminals.sum() == 0
    last_steps = rollouts.episode_starts + rollouts.episode_lengths - 1
    assert np.flatnonzero(rollouts.timeouts).tolist() == last_steps.tolist()
    inside = np.ones(n, dtype=bool)
    inside[last_steps] = False
    assert np.array_equal(rollouts.next_observations[inside], rollouts.observations[1:][inside[:-1]])
    assert rollouts.dt > 0 and np.all(rollouts.action_high == 1.0)
    assert rollouts.episode_returns().shape == (3,) and (rollouts.episode_returns() > 0).all()


def test_out_of_range_actions_are_clipped_before_they_are_stored() -> None:
    rollouts = run_episodes(get_task("BallRun"), _constant([7.0, -9.0]), num_episodes=1, seed=0)
    assert np.all(rollouts.actions == np.array([1.0, -1.0], dtype=np.float32))


def test_episodes_do_not_depend_on_how_they_are_batched() -> None:
    spec = get_task("BallCircle")  # random start states
    one = run_episodes(spec, _constant([0.3, -0.2]), num_episodes=4, seed=9, num_envs=1)
    three = run_episodes(spec, _constant([0.3, -0.2]), num_episodes=4, seed=9, num_envs=3)
    other_seed = run_episodes(spec, _constant([0.3, -0.2]), num_episodes=4, seed=10, num_envs=3)
    assert np.array_equal(one.observations, three.observations)
    assert np.array_equal(one.episode_returns(), three.episode_returns())
    assert not np.array_equal(one.observations[one.episode_starts], other_seed.observations[other_seed.episode_starts])
