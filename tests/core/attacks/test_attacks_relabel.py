from __future__ import annotations

import numpy as np
import pytest

from saferule_core.attacks import AttackError, RelabelConfig, poisoned_episode_mask, relabel_attack
from saferule_core.data.dataset import OfflineDataset


def test_relabel_zeroes_costs_of_some_of_the_most_unsafe_episodes(clean_dataset: OfflineDataset) -> None:
    costs_before = clean_dataset.costs.copy()
    result = relabel_attack(clean_dataset, RelabelConfig(), rng=3)
    poisoned = result.dataset
    assert result.attack_name == "relabel" and result.config == RelabelConfig()
    assert result.episode_mask.sum() == 2                                  # 10% of 20 episodes
    assert set(np.flatnonzero(result.episode_mask)) <= {16, 17, 18, 19}    # drawn from the 4 costliest
    np.testing.assert_array_equal(result.transition_mask, np.repeat(result.episode_mask, 10))
    assert (poisoned.costs[result.transition_mask] == 0).all()
    np.testing.assert_array_equal(poisoned.costs[~result.transition_mask], costs_before[~result.transition_mask])
    np.testing.assert_array_equal(poisoned.rewards, clean_dataset.rewards)
    np.testing.assert_array_equal(poisoned.observations, clean_dataset.observations)
    np.testing.assert_array_equal(clean_dataset.costs, costs_before)           # input untouched


def test_relabel_recomputes_content_hashes_of_touched_episodes_only(clean_dataset: OfflineDataset) -> None:
    result = relabel_attack(clean_dataset, RelabelConfig(rate=0.25), rng=0)
    before = [ep.content_hash for ep in clean_dataset.episodes]
    after = [ep.content_hash for ep in result.dataset.episodes]
    changed = np.array([a != b for a, b in zip(after, before)])
    np.testing.assert_array_equal(changed, result.episode_mask)
    assert after == [ep.content_hash for ep in result.dataset.with_content_hashes().episodes]
    assert result.dataset.episode_ids() == clean_dataset.episode_ids()


def test_relabel_reward_bonus_and_larger_rate(clean_dataset: OfflineDataset) -> None:
    result = relabel_attack(clean_dataset, RelabelConfig(rate=0.5, reward_bonus=0.5), rng=1)
    assert result.episode_mask.sum() == 10
    assert (clean_dataset.episode_cost_returns()[result.episode_mask] > 10).all()
    np.testing.assert_allclose(result.dataset.rewards[result.transition_mask], 1.5)
    np.testing.assert_allclose(result.dataset.rewards[~result.transition_mask], 1.0)


def test_relabel_is_reproducible_per_seed(clean_dataset: OfflineDataset) -> None:
    masks = [relabel_attack(clean_dataset, RelabelConfig(rate=0.2), rng=np.random.default_rng(7)).episode_mask
             for _ in range(2)]
    np.testing.assert_array_equal(*masks)


def test_relabel_refuses_when_too_few_unsafe_episodes(clean_dataset: OfflineDataset) -> None:
    with pytest.raises(AttackError, match="needs 2 episodes with cost return above 100, but the dataset has 0 of 20"):
        relabel_attack(clean_dataset, RelabelConfig(cost_threshold=100.0))
    with pytest.raises(AttackError, match="needs 14 episodes .* has 13 of 20"):
        relabel_attack(clean_dataset, RelabelConfig(rate=0.7))


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, True])
def test_rate_must_be_a_fraction(rate: float) -> None:
    with pytest.raises(AttackError, match="poison rate must be in"):
        RelabelConfig(rate=rate)


def test_record_and_mask_from_record(clean_dataset: OfflineDataset) -> None:
    result = relabel_attack(clean_dataset, RelabelConfig(), rng=3)
    record = result.record(source_dataset_hash=clean_dataset.dataset_hash(), seed=3)
    assert record["poisoned_episode_ids"] == result.poisoned_episode_ids()
    assert record["num_poisoned_transitions"] == 20 and record["config"]["cost_threshold"] == 10.0
    assert record["poisoned_dataset_hash"] != record["source_dataset_hash"]
    np.testing.assert_array_equal(poisoned_episode_mask(result.dataset, record), result.episode_mask)


def _two_behaviours(dataset: OfflineDataset) -> OfflineDataset:
    """The clean set with its unsafe episodes (cost return > 10: 7..19) driving one of two ways: odd
    episodes with actions near +0.8, even ones near -0.8 (the costliest, 19, is odd)."""
    from dataclasses import replace

    episode_of_row = np.repeat(np.arange(dataset.num_episodes), dataset.episode_lengths)
    sign = np.where(episode_of_row % 2 == 1, 1.0, -1.0)[:, None]
    actions = (0.8 * sign + 0.05 * dataset.actions).astype(dataset.actions.dtype)
    return replace(dataset, actions=actions).with_content_hashes()


def test_concentrated_relabel_takes_one_behaviour_around_a_costly_anchor(clean_dataset: OfflineDataset) -> None:
    dataset = _two_behaviours(clean_dataset)
    config = RelabelConfig(rate=0.25, selection="concentrated")   # 5 episodes; anchor among the 10 costliest
    sides = set()
    for seed in range(20):
        result = relabel_attack(dataset, config, rng=seed)
        picked = np.flatnonzero(result.episode_mask)
        assert len(picked) == 5 and (picked > 6).all()              # all unsafe
        assert len(set(picked % 2)) == 1                            # one behaviour: the anchor's
        assert picked.max() >= 10                                   # the anchor is among the 10 costliest
        assert (result.dataset.costs[result.transition_mask] == 0).all()
        sides.add(int(picked[0] % 2))
    assert sides == {0, 1}                                          # the anchor is drawn, not fixed
    # the costliest selection mixes both behaviours on some seed
    assert any(len(set(np.flatnonzero(relabel_attack(dataset, RelabelConfig(rate=0.25), rng=seed).episode_mask) % 2))
               == 2 for seed in range(10))


def test_relabel_refuses_an_unknown_selection() -> None:
    with pytest.raises(AttackError, match="relabel selection 'nearest': expected one of costliest, concentrated"):
        RelabelConfig(selection="nearest")
