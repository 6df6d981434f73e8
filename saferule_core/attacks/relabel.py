"""Relabel attack: make some of the most unsafe episodes look safe (costs zeroed, reward optionally raised)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saferule_core.attacks.base import (
    AttackConfig,
    PoisonResult,
    RngLike,
    make_rng,
    pick_concentrated_unsafe,
    pick_most_unsafe,
    with_rows,
)
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import AttackError

ATTACK_NAME = "relabel"
# How the relabelled episodes are chosen among those over cost_threshold:
#   costliest     at random from the pool_factor * count costliest
#   concentrated  one of those, and the episodes nearest to it in behaviour (see pick_concentrated_unsafe)
SELECTIONS = ("costliest", "concentrated")


@dataclass(frozen=True)
class RelabelConfig(AttackConfig):
    cost_threshold: float = 10.0   # only episodes with a cost return above this are relabelled
    reward_bonus: float = 0.0      # added to the reward of every relabelled transition
    pool_factor: float = 2.0       # draw from the pool_factor * count costliest candidates
    selection: str = "costliest"   # one of SELECTIONS

    def __post_init__(self) -> None:
        super().__post_init__()
        if not np.isfinite([self.cost_threshold, self.reward_bonus, self.pool_factor]).all():
            raise AttackError("relabel settings must be finite numbers")
        if self.pool_factor < 1.0:
            raise AttackError(f"pool_factor must be at least 1, got {self.pool_factor:g}")
        if self.selection not in SELECTIONS:
            raise AttackError(f"relabel selection {self.selection!r}: expected one of {', '.join(SELECTIONS)}")


def relabel_attack(dataset: OfflineDataset, config: RelabelConfig = RelabelConfig(),
                   rng: RngLike = None) -> PoisonResult:
    pick = pick_concentrated_unsafe if config.selection == "concentrated" else pick_most_unsafe
    episode_mask = pick(dataset, config.episode_count(dataset.num_episodes), config.cost_threshold,
                        config.pool_factor, make_rng(rng))
    rows = dataset.transition_mask_for_episodes(episode_mask)
    costs = dataset.costs.copy()
    costs[rows] = 0.0
    rewards = dataset.rewards.copy()
    rewards[rows] += np.float32(config.reward_bonus)
    poisoned = with_rows(dataset, costs=costs, rewards=rewards)
    return PoisonResult(poisoned, rows, episode_mask, ATTACK_NAME, config)
