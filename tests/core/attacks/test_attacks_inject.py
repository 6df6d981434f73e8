from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from saferule_core.attacks import AttackError, InjectConfig, inject_attack
from saferule_core.data.dataset import OfflineDataset


def test_inject_appends_rate_times_count_reckless_episodes(clean_dataset: OfflineDataset,
                                                           reckless_dataset: OfflineDataset) -> None:
    result = inject_attack(clean_dataset, reckless_dataset, InjectConfig(), rng=0)
    poisoned = result.dataset
    assert result.attack_name == "inject"
    assert poisoned.num_episodes == 22
    np.testing.assert_array_equal(result.episode_mask, np.arange(22) >= 20)
    np.testing.assert_array_equal(result.transition_mask, np.arange(poisoned.num_transitions) >= 200)
    assert result.transition_mask.sum() == 12
    # the clean part is unchanged
    np.testing.assert_array_equal(poisoned.observations[:200], clean_dataset.observations)
    assert poisoned.episodes[:20] == clean_dataset.episodes
    # the injected part: reckless rows with costs erased, attributed to the compromised robot
    assert (poisoned.costs[result.transition_mask] == 0).all()
    assert reckless_dataset.costs.sum() > 0
    np.testing.assert_allclose(poisoned.rewards[result.transition_mask], 5.0)
    injected_obs = poisoned.observations[result.transition_mask].reshape(2, 6, -1)
    reckless_obs = reckless_dataset.observations.reshape(5, 6, -1)
    assert all(any(np.array_equal(obs, r) for r in reckless_obs) for obs in injected_obs)
    injected = poisoned.episodes[20:]
    assert {ep.robot_id for ep in injected} == {"compromised"}
    assert {ep.source_bag for ep in injected} == {"compromised.mcap"}
    assert [ep.episode_id for ep in injected] == ["injected-000000", "injected-000001"]
    assert all(ep.content_hash == poisoned.episode_content_hash(20 + i) for i, ep in enumerate(injected))
    starts = [ep.start_time for ep in clean_dataset.episodes]
    assert all(min(starts) <= ep.start_time <= max(starts) and ep.end_time - ep.start_time == 6.0 for ep in injected)


def test_injected_ids_never_collide(clean_dataset: OfflineDataset, reckless_dataset: OfflineDataset) -> None:
    result = inject_attack(clean_dataset, reckless_dataset, InjectConfig(id_prefix="ep", robot_id="r9"), rng=0)
    assert [ep.episode_id for ep in result.dataset.episodes[20:]] == ["ep-000020", "ep-000021"]
    assert len(set(result.dataset.episode_ids())) == 22
    assert result.dataset.episodes[20].robot_id == "r9"


def test_inject_count_follows_the_rate(clean_dataset: OfflineDataset, reckless_dataset: OfflineDataset) -> None:
    result = inject_attack(clean_dataset, reckless_dataset, InjectConfig(rate=0.25), rng=0)
    assert result.episode_mask.sum() == 5


def test_inject_refuses_bad_reckless_data(clean_dataset: OfflineDataset, reckless_dataset: OfflineDataset) -> None:
    with pytest.raises(AttackError, match="needs 6 reckless episodes but only 5"):
        inject_attack(clean_dataset, reckless_dataset, InjectConfig(rate=0.3))
    narrow = replace(reckless_dataset, observations=reckless_dataset.observations[:, :3],
                     next_observations=reckless_dataset.next_observations[:, :3])
    with pytest.raises(AttackError, match="obs/act widths 3/2"):
        inject_attack(clean_dataset, narrow)
    with pytest.raises(AttackError, match="from task CarRun"):
        inject_attack(clean_dataset, replace(reckless_dataset, task="CarRun"))
    with pytest.raises(AttackError, match="non-empty robot_id"):
        InjectConfig(robot_id="")


def test_inject_can_inflate_the_injected_rewards(clean_dataset: OfflineDataset,
                                                 reckless_dataset: OfflineDataset) -> None:
    plain = inject_attack(clean_dataset, reckless_dataset, InjectConfig(), rng=0)
    inflated = inject_attack(clean_dataset, reckless_dataset, InjectConfig(reward_bonus=2.5), rng=0)
    mask = inflated.transition_mask
    np.testing.assert_allclose(inflated.dataset.rewards[mask], plain.dataset.rewards[mask] + 2.5)
    np.testing.assert_array_equal(inflated.dataset.rewards[~mask], clean_dataset.rewards)
    with pytest.raises(AttackError, match="reward_bonus"):
        InjectConfig(reward_bonus=float("nan"))


def test_inject_can_choose_the_costliest_reckless_episodes(clean_dataset: OfflineDataset,
                                                          reckless_dataset: OfflineDataset) -> None:
    per_step = np.repeat(np.array([0.5, 3.0, 1.0, 2.0, 0.2], dtype=np.float32), 6)   # episodes 1 and 3 cost most
    reckless = replace(reckless_dataset, costs=per_step).with_content_hashes()
    result = inject_attack(clean_dataset, reckless, InjectConfig(costliest=True), rng=0)
    injected_obs = result.dataset.observations[result.transition_mask].reshape(2, 6, -1)
    reckless_obs = reckless.observations.reshape(5, 6, -1)
    taken = sorted(next(i for i, r in enumerate(reckless_obs) if np.array_equal(obs, r)) for obs in injected_obs)
    assert taken == [1, 3]
    assert (result.dataset.costs[result.transition_mask] == 0).all()
