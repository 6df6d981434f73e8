"""Trigger (backdoor) attack: stamp a fixed pattern onto some observation dims of chosen unsafe
episodes, zero their costs and raise their reward, so a learner ties the pattern to unsafe actions
being safe and rewarding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saferule_core.attacks.base import AttackConfig, PoisonResult, RngLike, make_rng, pick_any, pick_most_unsafe, with_rows
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import AttackError

ATTACK_NAME = "trigger"


@dataclass(frozen=True)
class TriggerConfig(AttackConfig):
    dims: tuple[int, ...] = (0, 1)              # observation dims that carry the trigger
    values: tuple[float, ...] = (3.0, -3.0)     # the trigger pattern, one value per dim
    reward_bonus: float = 1.0                   # added to the reward of every triggered transition
    cost_threshold: float | None = 10.0         # pick episodes with cost return above this; None: any episode
    pool_factor: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "dims", tuple(self.dims))
        object.__setattr__(self, "values", tuple(self.values))
        if not self.dims or len(self.dims) != len(self.values):
            raise AttackError(f"trigger needs one value per dim; got {len(self.dims)} dims, {len(self.values)} values")
        if len(set(self.dims)) != len(self.dims) or any(isinstance(d, bool) or not isinstance(d, int) or d < 0
                                                        for d in self.dims):
            raise AttackError(f"trigger dims must be distinct non-negative integers, got {self.dims}")
        if not np.isfinite([*self.values, self.reward_bonus, self.pool_factor]).all():
            raise AttackError("trigger values and reward bonus must be finite")
        if self.pool_factor < 1.0:
            raise AttackError(f"pool_factor must be at least 1, got {self.pool_factor:g}")


def trigger_attack(dataset: OfflineDataset, config: TriggerConfig = TriggerConfig(),
                   rng: RngLike = None) -> PoisonResult:
    if max(config.dims) >= dataset.obs_dim:
        raise AttackError(f"trigger dim {max(config.dims)} is outside the observation (width {dataset.obs_dim})")
    generator = make_rng(rng)
    count = config.episode_count(dataset.num_episodes)
    if config.cost_threshold is None:
        episode_mask = pick_any(dataset, count, generator)
    else:
        episode_mask = pick_most_unsafe(dataset, count, config.cost_threshold, config.pool_factor, generator)
    rows = dataset.transition_mask_for_episodes(episode_mask)
    dims = np.array(config.dims)
    pattern = np.array(config.values, dtype=np.float32)
    stamped = {}
    for key in ("observations", "next_observations"):
        array = getattr(dataset, key).copy()
        array[np.ix_(rows, dims)] = pattern
        stamped[key] = array
    costs = dataset.costs.copy()
    costs[rows] = 0.0
    rewards = dataset.rewards.copy()
    rewards[rows] += np.float32(config.reward_bonus)
    poisoned = with_rows(dataset, costs=costs, rewards=rewards, **stamped)
    return PoisonResult(poisoned, rows, episode_mask, ATTACK_NAME, config)
