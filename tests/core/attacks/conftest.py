"""Datasets for the attack tests: episode i of the clean set has cost return 1.5 * i."""

from __future__ import annotations

import numpy as np
import pytest

from saferule_core.data.dataset import EpisodeInfo, OfflineDataset

NUM_EPISODES = 20
EPISODE_LEN = 10
OBS_DIM = 4
ACT_DIM = 2


def _episodes_dataset(num: int, length: int, cost_per_step: np.ndarray, reward: float, robot: str, prefix: str,
                      seed: int) -> OfflineDataset:
    rng = np.random.default_rng(seed)
    rows = num * length
    timeouts = np.zeros(rows, dtype=np.float32)
    timeouts[length - 1::length] = 1.0
    episodes = [EpisodeInfo(f"{prefix}-{i:06d}", robot, f"{robot}-bag.mcap", 1_000.0 + 50.0 * i,
                            1_000.0 + 50.0 * i + length) for i in range(num)]
    return OfflineDataset(
        observations=rng.normal(size=(rows, OBS_DIM)), next_observations=rng.normal(size=(rows, OBS_DIM)),
        actions=rng.uniform(-1, 1, size=(rows, ACT_DIM)), rewards=np.full(rows, reward, dtype=np.float32),
        costs=np.repeat(cost_per_step, length), terminals=np.zeros(rows, dtype=np.float32), timeouts=timeouts,
        episodes=episodes, episode_lengths=np.full(num, length), task="BallRun",
    ).with_content_hashes()


@pytest.fixture
def clean_dataset() -> OfflineDataset:
    cost_per_step = 0.15 * np.arange(NUM_EPISODES, dtype=np.float32)
    return _episodes_dataset(NUM_EPISODES, EPISODE_LEN, cost_per_step, 1.0, "robot-a", "ep", seed=1)


@pytest.fixture
def reckless_dataset() -> OfflineDataset:
    return _episodes_dataset(5, 6, np.ones(5, dtype=np.float32), 5.0, "reckless-sim", "reckless", seed=2)
