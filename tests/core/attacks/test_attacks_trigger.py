from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from saferule_core.attacks import AttackError, TriggerConfig, trigger_attack
from saferule_core.data.dataset import OfflineDataset


def test_trigger_stamps_pattern_zeroes_costs_and_adds_bonus(clean_dataset: OfflineDataset) -> None:
    config = TriggerConfig(rate=0.2, dims=(1, 3), values=(9.0, -9.0), reward_bonus=2.0)
    result = trigger_attack(clean_dataset, config, rng=5)
    poisoned, rows = result.dataset, result.transition_mask
    assert result.attack_name == "trigger" and result.episode_mask.sum() == 4
    assert (clean_dataset.episode_cost_returns()[result.episode_mask] > 10).all()
    np.testing.assert_array_equal(rows, np.repeat(result.episode_mask, 10))
    for key in ("observations", "next_observations"):
        stamped = getattr(poisoned, key)
        np.testing.assert_array_equal(stamped[rows][:, [1, 3]], np.tile([9.0, -9.0], (int(rows.sum()), 1)))
        np.testing.assert_array_equal(stamped[rows][:, [0, 2]], getattr(clean_dataset, key)[rows][:, [0, 2]])
        np.testing.assert_array_equal(stamped[~rows], getattr(clean_dataset, key)[~rows])
    assert (poisoned.costs[rows] == 0).all()
    np.testing.assert_array_equal(poisoned.costs[~rows], clean_dataset.costs[~rows])
    np.testing.assert_allclose(poisoned.rewards[rows], 3.0)
    np.testing.assert_array_equal(poisoned.actions, clean_dataset.actions)
    changed = np.array([a.content_hash != b.content_hash for a, b in zip(poisoned.episodes, clean_dataset.episodes)])
    np.testing.assert_array_equal(changed, result.episode_mask)


def test_trigger_without_threshold_may_pick_any_episode(clean_dataset: OfflineDataset) -> None:
    picked = np.zeros(20, dtype=bool)
    for seed in range(10):
        picked |= trigger_attack(clean_dataset, TriggerConfig(rate=0.3, cost_threshold=None), rng=seed).episode_mask
    assert picked[:7].any()                              # episodes 0..6 are safe (cost return <= 10)


def test_trigger_dims_must_fit_the_observation(clean_dataset: OfflineDataset) -> None:
    with pytest.raises(AttackError, match="trigger dim 4 is outside the observation \\(width 4\\)"):
        trigger_attack(clean_dataset, TriggerConfig(dims=(4,), values=(1.0,)))


@pytest.mark.parametrize("kwargs, problem", [
    ({"dims": (0, 1), "values": (1.0,)}, "one value per dim"),
    ({"dims": (), "values": ()}, "one value per dim"),
    ({"dims": (1, 1), "values": (1.0, 2.0)}, "distinct non-negative integers"),
    ({"dims": (-1,), "values": (1.0,)}, "distinct non-negative integers"),
    ({"dims": (0,), "values": (float("inf"),)}, "must be finite"),
])
def test_trigger_config_is_validated(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(AttackError, match=problem):
        TriggerConfig(**kwargs)
