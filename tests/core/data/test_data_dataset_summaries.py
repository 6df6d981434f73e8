"""Per-episode and per-row summaries of an OfflineDataset, against brute-force sums."""

from __future__ import annotations

import numpy as np
import pytest

from tests.core.data.conftest import make_dataset


@pytest.mark.parametrize("gamma", [0.5, 0.99, 1.0])
def test_discounted_costs_to_go_stop_at_each_episode_end(gamma: float) -> None:
    dataset = make_dataset(num_episodes=9, seed=4)
    found = dataset.discounted_costs_to_go(gamma)
    expected = np.empty(dataset.num_transitions)
    for start, length in zip(dataset.episode_starts, dataset.episode_lengths):
        costs = dataset.costs[start:start + length].astype(np.float64)
        for t in range(length):
            expected[start + t] = sum(gamma ** k * costs[t + k] for k in range(length - t))
    np.testing.assert_allclose(found, expected, rtol=1e-12, atol=1e-12)
    # gamma 1: the first row of each episode holds its cost return
    if gamma == 1.0:
        np.testing.assert_allclose(found[dataset.episode_starts], dataset.episode_cost_returns())


def test_discounted_costs_to_go_refuses_a_bad_discount() -> None:
    with pytest.raises(ValueError, match="gamma must be in"):
        make_dataset().discounted_costs_to_go(0.0)
