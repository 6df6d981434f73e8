"""A small fleet dataset on disk (BallRun widths) and the files an unlearning server needs around it:
a tiny trained model whose export is v0001, so that the server runs the real unlearning job."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from nacl.signing import SigningKey

from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.data.dataset import EpisodeInfo, OfflineDataset
from saferule_core.data.from_bags import episode_id_for
from saferule_core.data.store import DatasetStore
from tests.ros.policy_artifacts import make_keys

BASE_TIME = 1_700_000_000.0
ROBOTS = ("robot_1", "robot_2", "robot_3")
OBS_DIM, ACT_DIM = 7, 2
TINY_BCQ_LAG = {"actor_hidden": [32, 32], "critic_hidden": [32, 32], "vae_hidden": 32}
# The real job at a tiny budget (a second or two); a retraining under LONG_JOBS runs until it is
# cancelled, stopped or killed, under QUICK_JOBS it takes a few seconds.
QUICK_JOBS = {"steps": 20, "retrain_steps": 60, "batch_size": 32, "forget_batch_size": 16, "num_threads": 1,
              "log_every": 5, "safe_rule": {"select_every": 5}}
LONG_JOBS = {**QUICK_JOBS, "retrain_steps": 100_000}
_TRAINED: dict[str, Path] = {}


def fleet_dataset(episodes_per_robot: int = 4, episode_len: int = 20, seed: int = 0) -> OfflineDataset:
    """Episodes `<robot>-00000k` of each robot, 60 s apart; robot_3's actions are its 'poison'
    (a constant push with high cost), so that unlearning it changes a trained policy."""
    rng = np.random.default_rng(seed)
    episodes: list[EpisodeInfo] = []
    blocks: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "next", "act", "rew", "cost", "term", "tout")}
    for index in range(episodes_per_robot * len(ROBOTS)):
        robot = ROBOTS[index % len(ROBOTS)]
        start = BASE_TIME + 60.0 * index
        episodes.append(EpisodeInfo(episode_id_for(robot, index // len(ROBOTS)), robot,
                                    f"bag_{index // 6:03d}", start, start + episode_len * 0.02))
        obs = rng.normal(size=(episode_len, OBS_DIM)).astype(np.float32)
        poisoned = robot == "robot_3"
        act = (np.full((episode_len, ACT_DIM), 0.9) if poisoned else np.tanh(obs[:, :ACT_DIM] * 0.5)).astype(np.float32)
        blocks["obs"].append(obs)
        blocks["next"].append(np.roll(obs, -1, axis=0))
        blocks["act"].append(act)
        blocks["rew"].append(rng.normal(1.0, 0.1, episode_len).astype(np.float32))
        blocks["cost"].append(np.full(episode_len, 1.0 if poisoned else 0.0, dtype=np.float32))
        term = np.zeros(episode_len, dtype=np.float32)
        tout = np.zeros(episode_len, dtype=np.float32)
        tout[-1] = 1.0
        blocks["term"].append(term)
        blocks["tout"].append(tout)
    cat = {k: np.concatenate(v) for k, v in blocks.items()}
    return OfflineDataset(observations=cat["obs"], next_observations=cat["next"], actions=cat["act"],
                          rewards=cat["rew"], costs=cat["cost"], terminals=cat["term"], timeouts=cat["tout"],
                          episodes=episodes, episode_lengths=np.full(len(episodes), episode_len), task="BallRun",
                          attrs={"origin": "tests.ros.forget_fixtures"})


@dataclass
class ServerFiles:
    root: Path
    data_root: Path
    dataset_dir: Path
    registry: PolicyRegistry
    keys: Path
    key: SigningKey
    work_dir: Path
    model_dir: Path

    def jobs_file(self, long: bool = False) -> Path:
        return self.root / ("unlearn-long.yaml" if long else "unlearn.yaml")

    def server_args(self, robots: list[str] | None = None, **extra: object) -> list[str]:
        """--ros-args for an unlearning_server on these files (config YAML first, overrides after)."""
        from tests.ros.ros_harness import CONFIG_DIR

        values: dict[str, object] = {
            "data_root": self.data_root, "default_dataset": self.dataset_dir.name, "model_dir": self.model_dir,
            "registry_dir": self.registry.root, "signing_key": self.keys, "work_dir": self.work_dir,
            "unlearn_config_file": self.jobs_file(), **extra}
        args = ["--params-file", str(CONFIG_DIR / "unlearning_server.yaml")]
        for name, value in values.items():
            args += ["-p", f"{name}:={value}"]
        if robots:
            args += ["-p", f"robots:=[{', '.join(repr(r) for r in robots)}]"]
        return args


def trained_model() -> Path:
    """A tiny BCQ-Lag trained on `fleet_dataset()`, once per test process (the real job checks a
    model against the dataset's task and widths, not its hash, so every fleet dataset here fits)."""
    if "model" not in _TRAINED:
        import torch

        from saferule_core.algos.trainer import TrainConfig, fit

        torch.set_num_threads(1)
        scratch = Path(tempfile.mkdtemp(prefix="saferule-tiny-model-"))
        atexit.register(shutil.rmtree, scratch, True)
        model_dir = scratch / "model"
        fit("bcq_lag", fleet_dataset(), model_dir,
            TrainConfig(steps=30, batch_size=64, num_threads=1, checkpoint_every=0, progress=False), TINY_BCQ_LAG)
        _TRAINED["model"] = model_dir
    return _TRAINED["model"]


def server_files(root: Path, publish_initial: bool = True, **dataset_kwargs: int) -> ServerFiles:
    """data/fleet (a DatasetStore), keys, a registry with v0001 exported from the tiny trained model
    in `model/` (its checkpoint recorded), the job settings files, an empty work dir. Without
    `publish_initial`: no model and an empty registry."""
    data_root = root / "data"
    data_root.mkdir(parents=True)
    dataset_dir = data_root / "fleet"
    DatasetStore.create(dataset_dir, fleet_dataset(**dataset_kwargs))
    key = make_keys(root / "keys")
    registry = PolicyRegistry(root / "registry")
    model_dir = root / "model"
    if publish_initial:
        from saferule_core.algos.checkpoint import load_learner
        from saferule_core.artifacts.export import publish_learner
        from saferule_core.artifacts.lineage import checkpoint_record

        shutil.copytree(trained_model(), model_dir)
        publish_learner(load_learner(model_dir), registry, key, checkpoint=checkpoint_record(model_dir))
    else:
        model_dir.mkdir()
    files = ServerFiles(root, data_root, dataset_dir, registry, root / "keys", key, root / "work", model_dir)
    files.jobs_file().write_text(yaml.safe_dump(QUICK_JOBS))
    files.jobs_file(long=True).write_text(yaml.safe_dump(LONG_JOBS))
    return files
