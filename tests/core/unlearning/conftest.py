"""A tiny two-behaviour task (BallRun widths) and small trained learners for the unlearning tests.

Retained episodes act around (-0.6, -0.6) in one region of the state space; forget episodes act
at (+0.8, +0.8) in another region and claim twice the reward at zero cost (the poison).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from saferule_core.algos.base import Learner
from saferule_core.algos.batch import BatchSampler
from saferule_core.algos.checkpoint import save_model
from saferule_core.algos.registry import get_algo, make_config
from saferule_core.algos.trainer import seed_everything
from saferule_core.artifacts.export import export_and_publish
from saferule_core.artifacts.manifest import ManifestFields
from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.artifacts.signing import generate_keypair, load_signing_key
from saferule_core.data.dataset import EpisodeInfo, OfflineDataset
from saferule_core.data.store import DatasetStore
from saferule_core.unlearning.config import UnlearnConfig

OBS_DIM, ACT_DIM = 7, 2
EPISODE_LEN = 10
FORGET_ACTION = 0.8
TINY: dict[str, dict[str, object]] = {
    "bcq_lag": {"actor_hidden": [32, 32], "critic_hidden": [32, 32], "vae_hidden": 32, "num_sampled_actions": 4},
    "cpq": {"actor_hidden": [32, 32], "critic_hidden": [32, 32], "vae_hidden": 32, "num_sampled_actions": 4},
    "bc_all": {"hidden": [32, 32]},
    "bcq_lag_constrained": {"actor_hidden": [32, 32], "critic_hidden": [32, 32], "vae_hidden": 32,
                            "num_sampled_actions": 4, "action_selection": "constrained", "pessimistic_cost": True,
                            "phi": 0.5},
}
ALGO_OF = {"bcq_lag_constrained": "bcq_lag"}      # variants: a name in TINY -> the algorithm it configures
TRAIN_STEPS = {"bcq_lag": 200, "cpq": 100, "bc_all": 150, "bcq_lag_constrained": 200}

torch.set_num_threads(1)


def two_behaviour_dataset(retain_episodes: int = 16, forget_episodes: int = 4, seed: int = 0,
                          task: str = "BallRun", obs_dim: int = OBS_DIM) -> OfflineDataset:
    """Retained episodes first, forget episodes last (ids keep-NN / forget-NN)."""
    rng = np.random.default_rng(seed)
    total = retain_episodes + forget_episodes
    rows = total * EPISODE_LEN
    forget_rows = np.repeat(np.arange(total) >= retain_episodes, EPISODE_LEN)
    obs = rng.normal(0.0, 0.5, size=(rows, obs_dim))
    obs[:, 0] += np.where(forget_rows, 2.0, -1.0)
    retain_actions = -0.6 + 0.1 * np.tanh(obs[:, :ACT_DIM])
    actions = np.where(forget_rows[:, None], FORGET_ACTION, retain_actions)
    next_obs = obs + rng.normal(0.0, 0.05, size=obs.shape)
    timeouts = np.zeros(rows)
    timeouts[EPISODE_LEN - 1::EPISODE_LEN] = 1.0
    episodes = [EpisodeInfo(f"keep-{i:02d}" if i < retain_episodes else f"forget-{i - retain_episodes:02d}",
                            "robot_1" if i < retain_episodes else "robot_3", f"bag-{i // 5}",
                            1_700_000_000.0 + 60.0 * i, 1_700_000_000.0 + 60.0 * i + 1.0) for i in range(total)]
    return OfflineDataset(observations=obs, next_observations=next_obs, actions=actions,
                          rewards=np.where(forget_rows, 2.0, 1.0), costs=np.zeros(rows), terminals=np.zeros(rows),
                          timeouts=timeouts, episodes=episodes, episode_lengths=np.full(total, EPISODE_LEN),
                          task=task).with_content_hashes()


def forget_mask_of(dataset: OfflineDataset) -> np.ndarray:
    return np.array([ep.episode_id.startswith("forget") for ep in dataset.episodes])


def train_tiny(algo: str, dataset: OfflineDataset, steps: int | None = None, seed: int = 0) -> Learner:
    seed_everything(seed)
    name = ALGO_OF.get(algo, algo)
    learner = get_algo(name).learner_class.from_dataset(dataset, make_config(name, TINY[algo]))
    sampler = BatchSampler(dataset, learner.info.stats, 64, seed=seed)
    for _ in range(steps or TRAIN_STEPS[algo]):
        learner.update(sampler.sample())
    return learner


def small_config(**overrides: object) -> UnlearnConfig:
    values: dict[str, object] = {"steps": 20, "batch_size": 32, "forget_batch_size": 16, "retrain_steps": 20,
                                 "log_every": 5, "num_threads": 1, "safe_rule": {"select_every": 5}}
    values.update(overrides)
    return UnlearnConfig.from_dict(values)


@pytest.fixture(scope="session")
def dataset() -> OfflineDataset:
    return two_behaviour_dataset()


@pytest.fixture(scope="session")
def trained(dataset: OfflineDataset) -> dict[str, Learner]:
    """One trained learner per algorithm (shared: tests must not modify them; unlearn never does)."""
    return {algo: train_tiny(algo, dataset) for algo in TINY}


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory, trained: dict[str, Learner], dataset: OfflineDataset) -> Path:
    """A dataset store, keys, the deployed BC model and a registry holding it as v0001."""
    root = tmp_path_factory.mktemp("fleet-template")
    DatasetStore.create(root / "data", dataset, episodes_per_shard=5)
    generate_keypair(root / "keys")
    learner = trained["bc_all"]
    save_model(root / "model", learner)
    info = learner.info
    fields = ManifestFields(task=info.task, obs_dim=info.obs_dim, act_dim=info.act_dim, action_low=[-1.0, -1.0],
                            action_high=[1.0, 1.0], dataset_hash=info.dataset_hash, method="bc_all")
    export_and_publish(learner.deployable_policy(), fields, PolicyRegistry(root / "registry"),
                       load_signing_key(root / "keys"))
    return root
