from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saferule_core.algos.batch import OBS_STD_EPS, BatchSampler, NormalizationStats
from saferule_core.errors import DatasetError


def test_stats_come_from_the_dataset_and_round_trip(random_dataset) -> None:
    ds = random_dataset()
    stats = NormalizationStats.from_dataset(ds)
    np.testing.assert_allclose(stats.obs_mean, ds.observations.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.obs_std, ds.observations.std(axis=0) + OBS_STD_EPS, rtol=1e-5)
    np.testing.assert_array_equal(stats.action_low, [-1, -1])
    again = NormalizationStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    np.testing.assert_array_equal(again.obs_std, stats.obs_std)
    identity = NormalizationStats.from_dataset(ds, normalize_observations=False)
    np.testing.assert_array_equal(identity.normalize_observations(ds.observations), ds.observations)


def test_action_bounds_from_dataset_attrs(dataset_builder) -> None:
    rows = 10
    ds = dataset_builder(np.zeros((rows, 3)), np.full((rows, 2), 1.0), np.zeros(rows), episode_len=5,
                         attrs={"action_low": "[0, -4]", "action_high": "[2, 4]"})
    stats = NormalizationStats.from_dataset(ds)
    np.testing.assert_array_equal(stats.actions_to_unit(np.array([[1.0, 2.0], [5.0, -9.0]])), [[0.0, 0.5], [1.0, -1.0]])
    bad = dataset_builder(np.zeros((rows, 3)), np.zeros((rows, 2)), np.zeros(rows), episode_len=5,
                          attrs={"action_low": "[0]", "action_high": "[1]"})
    with pytest.raises(DatasetError, match="action bounds"):
        NormalizationStats.from_dataset(bad)


def test_batches_hold_the_dataset_rows_normalised(random_dataset) -> None:
    ds = random_dataset()
    stats = NormalizationStats.from_dataset(ds)
    sampler = BatchSampler(ds, stats, batch_size=4)
    idx = torch.tensor([0, 5, 199, 5])
    batch = sampler.rows(idx)
    rows = idx.numpy()
    np.testing.assert_allclose(batch.observations.numpy(), stats.normalize_observations(ds.observations[rows]), rtol=1e-6)
    np.testing.assert_allclose(batch.next_observations.numpy(),
                               stats.normalize_observations(ds.next_observations[rows]), rtol=1e-6)
    np.testing.assert_allclose(batch.actions.numpy(), ds.actions[rows], atol=1e-6)
    np.testing.assert_array_equal(batch.rewards.numpy(), ds.rewards[rows])
    np.testing.assert_array_equal(batch.costs.numpy(), ds.costs[rows])
    np.testing.assert_array_equal(batch.terminals.numpy(), ds.terminals[rows])
    assert batch.size == 4 and batch.rewards.shape == (4,)


def test_sampling_is_uniform_over_all_rows_and_seeded(random_dataset) -> None:
    ds = random_dataset(episodes=4, episode_len=25)           # 100 rows
    stats = NormalizationStats.from_dataset(ds)
    sampler = BatchSampler(ds, stats, batch_size=500, seed=3)
    # Identify rows by their (unique) reward value.
    lookup = {float(r): i for i, r in enumerate(ds.rewards)}
    counts = np.zeros(ds.num_transitions)
    for _ in range(40):
        for r in sampler.sample().rewards.tolist():
            counts[lookup[r]] += 1
    assert (counts > 0).all()                                  # every row is reachable
    expected = counts.sum() / ds.num_transitions               # 200 per row
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 200                                          # 99 dof: mean 99, sd 14
    first = BatchSampler(ds, stats, 8, seed=7).sample().rewards
    assert torch.equal(first, BatchSampler(ds, stats, 8, seed=7).sample().rewards)
    state = sampler.state_dict()
    a = sampler.sample().rewards
    sampler.load_state_dict(state)
    assert torch.equal(a, sampler.sample().rewards)


def test_sampler_refuses_mismatched_stats(random_dataset) -> None:
    stats = NormalizationStats.from_dataset(random_dataset(obs_dim=5))
    with pytest.raises(DatasetError, match="dims"):
        BatchSampler(random_dataset(obs_dim=8), stats, batch_size=4)
