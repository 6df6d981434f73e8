"""Small synthetic datasets for the data tests (BallRun widths: obs 7, act 2)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from saferule_core.data.dataset import EpisodeInfo, OfflineDataset

BASE_TIME = 1_700_000_000.0
OBS_DIM = 7
ACT_DIM = 2


def make_dataset(num_episodes: int = 12, seed: int = 0, obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM,
                 id_prefix: str = "ep") -> OfflineDataset:
    """Episodes of 3..8 steps; robot-{i%3}; bag-{i//4}.mcap; start times 100 s apart from BASE_TIME.

    Even episodes end in a terminal, odd ones in a timeout.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 9, size=num_episodes)
    rows = int(lengths.sum())
    ends = np.cumsum(lengths) - 1
    terminals = np.zeros(rows, dtype=np.float32)
    timeouts = np.zeros(rows, dtype=np.float32)
    terminals[ends[0::2]] = 1.0
    timeouts[ends[1::2]] = 1.0
    episodes = [EpisodeInfo(f"{id_prefix}-{i:03d}", f"robot-{i % 3}", f"bag-{i // 4}.mcap", BASE_TIME + 100.0 * i,
                            BASE_TIME + 100.0 * i + 0.1 * int(lengths[i])) for i in range(num_episodes)]
    return OfflineDataset(
        observations=rng.normal(size=(rows, obs_dim)), next_observations=rng.normal(size=(rows, obs_dim)),
        actions=rng.uniform(-1, 1, size=(rows, act_dim)), rewards=rng.normal(size=rows),
        costs=(rng.random(rows) < 0.3).astype(np.float32), terminals=terminals, timeouts=timeouts,
        episodes=episodes, episode_lengths=lengths, task="BallRun", attrs={"origin": "synthetic"},
    )


@pytest.fixture
def dataset_factory() -> Callable[..., OfflineDataset]:
    return make_dataset


@pytest.fixture
def small_dataset() -> OfflineDataset:
    return make_dataset()
