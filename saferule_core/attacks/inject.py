"""Inject attack: append episodes of a reckless policy (unsafe, high reward) with their costs zeroed
(and, optionally, their rewards inflated), as if a compromised robot had logged them."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from saferule_core.attacks.base import AttackConfig, PoisonResult, RngLike, make_rng, pick_any, pick_most_unsafe
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import AttackError

ATTACK_NAME = "inject"


@dataclass(frozen=True)
class InjectConfig(AttackConfig):
    robot_id: str = "compromised"          # the robot the injected episodes claim to come from
    source_bag: str = "compromised.mcap"   # the bag they claim to come from
    id_prefix: str = "injected"            # injected episode ids: <id_prefix>-<number>
    reward_bonus: float = 0.0              # added to the reward of every injected transition
    costliest: bool = False                # inject the costliest of the reckless episodes given, not any

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.robot_id and self.source_bag and self.id_prefix):
            raise AttackError("inject needs a non-empty robot_id, source_bag and id_prefix")
        if not np.isfinite(self.reward_bonus):
            raise AttackError(f"inject reward_bonus must be a finite number, got {self.reward_bonus!r}")


def _fresh_ids(prefix: str, count: int, taken: set[str]) -> list[str]:
    ids: list[str] = []
    number = 0
    while len(ids) < count:
        candidate = f"{prefix}-{number:06d}"
        if candidate not in taken:
            ids.append(candidate)
        number += 1
    return ids


def inject_attack(dataset: OfflineDataset, reckless: OfflineDataset, config: InjectConfig = InjectConfig(),
                  rng: RngLike = None) -> PoisonResult:
    """Append rate * len(dataset) episodes drawn from `reckless`; the mask marks the appended ones.

    Injected episodes get start times drawn inside the dataset's own start-time range (keeping
    their durations), so a time window cannot single them out by itself.
    """
    if (reckless.obs_dim, reckless.act_dim) != (dataset.obs_dim, dataset.act_dim):
        raise AttackError(f"reckless episodes have obs/act widths {reckless.obs_dim}/{reckless.act_dim}, "
                          f"the dataset {dataset.obs_dim}/{dataset.act_dim}")
    if reckless.task and dataset.task and reckless.task != dataset.task:
        raise AttackError(f"reckless episodes are from task {reckless.task}, the dataset from {dataset.task}")
    count = config.episode_count(dataset.num_episodes)
    if reckless.num_episodes < count:
        raise AttackError(f"inject needs {count} reckless episodes but only {reckless.num_episodes} were given")
    generator = make_rng(rng)
    picked = (pick_most_unsafe(reckless, count, 0.0, 1.0, generator) if config.costliest
              else pick_any(reckless, count, generator))
    chosen = reckless.subset_episodes(picked)
    starts = np.array([ep.start_time for ep in dataset.episodes])
    new_starts = generator.uniform(starts.min(), starts.max(), size=count)
    ids = _fresh_ids(config.id_prefix, count, set(dataset.episode_ids()))
    episodes = [replace(ep, episode_id=new_id, robot_id=config.robot_id, source_bag=config.source_bag,
                        start_time=float(start), end_time=float(start) + (ep.end_time - ep.start_time), content_hash="")
                for ep, new_id, start in zip(chosen.episodes, ids, new_starts)]
    injected = replace(chosen, episodes=episodes, costs=np.zeros_like(chosen.costs),
                       rewards=chosen.rewards + np.float32(config.reward_bonus), task=dataset.task)
    poisoned = OfflineDataset.concatenate([dataset, injected]).with_content_hashes()
    episode_mask = np.arange(poisoned.num_episodes) >= dataset.num_episodes
    transition_mask = poisoned.transition_mask_for_episodes(episode_mask)
    return PoisonResult(poisoned, transition_mask, episode_mask, ATTACK_NAME, config)
