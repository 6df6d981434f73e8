"""Tiny synthetic datasets and small learner settings for the learner tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from saferule_core.data.dataset import EpisodeInfo, OfflineDataset

# Small networks so that every learner test runs in well under a second per update batch.
TINY: dict[str, dict[str, object]] = {
    "bc_all": {"hidden": [32, 32]},
    "bc_safe": {"hidden": [32, 32]},
    "bcq_lag": {"actor_hidden": [32, 32], "critic_hidden": [32, 32], "vae_hidden": 32},
    "cpq": {"actor_hidden": [32, 32], "critic_hidden": [32, 32], "vae_hidden": 32},
}

DatasetFactory = Callable[..., OfflineDataset]


def build_dataset(observations: np.ndarray, actions: np.ndarray, costs: np.ndarray, episode_len: int,
                  rewards: np.ndarray | None = None, next_observations: np.ndarray | None = None,
                  task: str = "CarCircle", attrs: dict[str, str] | None = None) -> OfflineDataset:
    rows = observations.shape[0]
    assert rows % episode_len == 0
    episodes = rows // episode_len
    timeouts = np.zeros(rows, dtype=np.float32)
    timeouts[episode_len - 1::episode_len] = 1.0
    rng = np.random.default_rng(123)
    return OfflineDataset(
        observations=observations,
        next_observations=next_observations if next_observations is not None else rng.normal(size=observations.shape),
        actions=actions,
        rewards=rewards if rewards is not None else np.zeros(rows),
        costs=costs,
        terminals=np.zeros(rows),
        timeouts=timeouts,
        episodes=[EpisodeInfo(f"ep{i}", "robot", "bag", float(i), float(i) + 1.0) for i in range(episodes)],
        episode_lengths=np.full(episodes, episode_len),
        task=task,
        attrs=attrs or {},
    )


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def random_dataset() -> DatasetFactory:
    def make(episodes: int = 8, episode_len: int = 25, obs_dim: int = 8, act_dim: int = 2, seed: int = 0,
             task: str = "CarCircle") -> OfflineDataset:
        rng = np.random.default_rng(seed)
        rows = episodes * episode_len
        return build_dataset(
            observations=rng.normal(2.0, 3.0, size=(rows, obs_dim)),
            actions=np.tanh(rng.normal(size=(rows, act_dim))),
            costs=(rng.random(rows) < 0.1).astype(np.float32),
            rewards=rng.normal(size=rows),
            episode_len=episode_len,
            task=task,
        )
    return make


@pytest.fixture
def dataset_builder() -> Callable[..., OfflineDataset]:
    return build_dataset


@pytest.fixture
def tiny() -> dict[str, dict[str, object]]:
    return {algo: dict(settings) for algo, settings in TINY.items()}
