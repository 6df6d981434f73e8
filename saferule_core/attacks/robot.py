"""The relabel attack restricted to one robot's episodes: a compromised robot uploads its unsafe
episodes as cost-free, the rest of the fleet's logs are untouched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from saferule_core.attacks.relabel import RelabelConfig, relabel_attack
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import AttackError


@dataclass(frozen=True)
class RobotPoisoning:
    robot: str
    robot_episodes: int
    relabelled_episodes: int
    relabelled_transitions: int
    true_cost_mean: float            # per relabelled episode, before the attack
    record: dict[str, Any]           # the attack's record (which episodes, which attack, which seed)


def poison_robot(dataset: OfflineDataset, robot: str, seed: int) -> tuple[OfflineDataset, RobotPoisoning]:
    """Every episode of `robot` with a cost relabelled as cost-free; other robots' episodes as they were."""
    mine = np.array([ep.robot_id == robot for ep in dataset.episodes])
    if not mine.any():
        raise AttackError(f"no episode of {robot} to poison")
    own = dataset.subset_episodes(mine)
    unsafe = own.episode_cost_returns() > 0
    if not unsafe.any():
        raise AttackError(f"{robot} logged no episode with cost; nothing to relabel")
    result = relabel_attack(own, RelabelConfig(rate=float(unsafe.mean()), cost_threshold=0.0), rng=seed)
    poisoned = OfflineDataset.concatenate([dataset.subset_episodes(~mine), result.dataset]).with_content_hashes()
    poisoned.attrs = dict(dataset.attrs)
    summary = RobotPoisoning(robot, int(mine.sum()), int(result.episode_mask.sum()), int(result.transition_mask.sum()),
                             float(own.episode_cost_returns()[result.episode_mask].mean()),
                             result.record(dataset.dataset_hash(), seed))
    return poisoned, summary
