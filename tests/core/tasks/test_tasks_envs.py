"""make_env: one Gymnasium contract over bullet-safety-gym and safety-gymnasium."""

from __future__ import annotations

import numpy as np
import pytest

from saferule_core.errors import TaskError
from saferule_core.tasks import TASKS, SafeVectorEnv, get_task, make_env


def _check_step(env, obs_dim: int) -> None:
    obs, reward, terminated, truncated, info = env.step(np.full(env.action_space.shape, 5.0))  # clipped
    assert obs.dtype == np.float32 and obs.shape == (obs_dim,)
    assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)
    assert isinstance(info["cost"], float) and info["cost"] >= 0.0


@pytest.mark.parametrize("name", ["BallRun", "CarCircle"])
def test_bullet_env_follows_the_contract_and_truncates_at_the_episode_length(name: str) -> None:
    spec = get_task(name)
    env = make_env(name, seed=0)
    try:
        obs, info = env.reset()
        assert obs.dtype == np.float32 and obs.shape == (spec.obs_dim,)
        assert env.observation_space.dtype == np.float32 and env.observation_space.contains(obs)
        assert env.action_space.shape == (spec.act_dim,) and isinstance(info, dict)
        assert env.dt > 0
        _check_step(env, spec.obs_dim)
        steps, done = 1, False
        while not done:
            _, _, terminated, truncated, _ = env.step(np.zeros(spec.act_dim))
            steps += 1
            done = terminated or truncated
        assert truncated and not terminated and steps == spec.episode_len
    finally:
        env.close()


def test_seeded_bullet_envs_replay_the_same_start_states_and_keep_the_global_rng() -> None:
    first, second, other = make_env("BallCircle", seed=5), make_env("BallCircle", seed=5), make_env("BallCircle", seed=6)
    before = np.random.get_state()[1].copy()
    starts = [(first.reset()[0], second.reset()[0], other.reset()[0]) for _ in range(2)]
    assert np.array_equal(np.random.get_state()[1], before)
    for a, b, c in starts:
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)
    assert not np.array_equal(starts[0][0], starts[1][0])  # a new start state each episode
    explicit_a, _ = first.reset(seed=11)
    explicit_b, _ = other.reset(seed=11)
    assert np.array_equal(explicit_a, explicit_b)


def test_safety_gymnasium_tasks_fold_the_cost_into_info() -> None:
    for name in ("PointGoal1", "CarCircle1"):
        spec = get_task(name)
        assert spec.backend == "mujoco"
        env = make_env(name, seed=0)
        try:
            obs, _ = env.reset()
            assert obs.dtype == np.float32 and obs.shape == (spec.obs_dim,)
            assert env.dt > 0
            for _ in range(3):
                _check_step(env, spec.obs_dim)
        finally:
            env.close()
    assert get_task("PointGoal1").episode_len == 1000 and get_task("SafetyCarCircle1-v0").name == "CarCircle1"
    assert get_task("CarCircle1").normalized_reward(24.9416) == pytest.approx(1.0)


def test_unknown_task_names_the_known_ones() -> None:
    with pytest.raises(TaskError) as err:
        make_env("NoSuchTask-v9")
    assert "NoSuchTask-v9" in str(err.value)
    for name in ("BallRun", "CarCircle", "PointGoal1"):
        assert name in str(err.value) and name in TASKS


def test_vector_env_steps_only_the_active_envs() -> None:
    envs = SafeVectorEnv("BallRun", 2, seed=0)
    try:
        obs = envs.reset()
        assert obs.shape == (2, 7) and obs.dtype == np.float32
        actions = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
        for _ in range(5):
            nxt, rewards, costs, terminated, truncated = envs.step(actions, active=np.array([True, False]))
        assert nxt[0, 0] > obs[0, 0]             # the active ball moved along +x
        assert np.array_equal(nxt[1], obs[1])    # the idle one did not
        assert rewards[1] == 0.0 and costs[1] == 0.0 and not truncated.any()
    finally:
        envs.close()


def test_a_randomised_start_moves_the_robot_reproducibly_and_zero_steps_is_a_plain_reset() -> None:
    def starts(random_steps: int) -> list[np.ndarray]:
        env = make_env("BallRun", seed=3)
        rng = np.random.default_rng(11)
        try:
            return [env.reset_randomised(random_steps, rng) for _ in range(3)]
        finally:
            env.close()

    plain = make_env("BallRun", seed=3)
    try:
        at_rest = [plain.reset()[0] for _ in range(3)]
    finally:
        plain.close()
    assert all(np.array_equal(a, b) for a, b in zip(starts(0), at_rest))
    moved = starts(10)
    assert all(not np.allclose(a, b) for a, b in zip(moved, at_rest))
    assert all(np.array_equal(a, b) for a, b in zip(moved, starts(10)))
    with pytest.raises(ValueError, match="random_steps"):
        make_env("BallRun", seed=0).reset_randomised(-1, np.random.default_rng(0))
