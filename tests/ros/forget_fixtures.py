"""A small fleet dataset on disk (BallRun widths) and the files an unlearning server needs around it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nacl.signing import SigningKey

from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.data.dataset import EpisodeInfo, OfflineDataset
from saferule_core.data.from_bags import episode_id_for
from saferule_core.data.store import DatasetStore
from tests.ros.policy_artifacts import make_keys, publish, random_policy

BASE_TIME = 1_700_000_000.0
ROBOTS = ("robot_1", "robot_2", "robot_3")
OBS_DIM, ACT_DIM = 7, 2


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

    def server_args(self, robots: list[str] | None = None, **extra: object) -> list[str]:
        """--ros-args for an unlearning_server on these files (config YAML first, overrides after)."""
        from tests.ros.ros_harness import CONFIG_DIR

        values: dict[str, object] = {
            "data_root": self.data_root, "default_dataset": self.dataset_dir.name, "model_dir": self.model_dir,
            "registry_dir": self.registry.root, "signing_key": self.keys, "work_dir": self.work_dir, **extra}
        args = ["--params-file", str(CONFIG_DIR / "unlearning_server.yaml")]
        for name, value in values.items():
            args += ["-p", f"{name}:={value}"]
        if robots:
            args += ["-p", f"robots:=[{', '.join(repr(r) for r in robots)}]"]
        return args


def server_files(root: Path, publish_initial: bool = True, **dataset_kwargs: int) -> ServerFiles:
    """data/fleet (a DatasetStore), keys, a registry with v0001, an empty work dir."""
    data_root = root / "data"
    data_root.mkdir(parents=True)
    dataset_dir = data_root / "fleet"
    DatasetStore.create(dataset_dir, fleet_dataset(**dataset_kwargs))
    key = make_keys(root / "keys")
    registry = PolicyRegistry(root / "registry")
    if publish_initial:
        publish(registry, random_policy(1), key)
    model_dir = root / "model"
    model_dir.mkdir()
    return ServerFiles(root, data_root, dataset_dir, registry, root / "keys", key, root / "work", model_dir)
