"""collect_episodes: a valid dataset with provenance that spans safe and unsafe behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from saferule_core.collect import CollectionError, collect_episodes, default_episodes, episode_aggressiveness
from saferule_core.errors import TaskError
from saferule_core.tasks import get_task


@pytest.fixture(scope="module")
def ballrun():
    return collect_episodes("BallRun", episodes=20, seed=3, robots=3)


def test_collection_is_a_valid_dataset_with_provenance(ballrun) -> None:
    spec = get_task("BallRun")
    ballrun.validate()
    assert ballrun.task == "BallRun" and ballrun.num_episodes == 20
    assert (ballrun.obs_dim, ballrun.act_dim) == (spec.obs_dim, spec.act_dim)
    assert {ep.robot_id for ep in ballrun.episodes} == {"robot_1", "robot_2", "robot_3"}
    for ep in ballrun.episodes:
        assert ep.source_bag == f"sim-BallRun-{ep.robot_id}-3"
    starts = np.array([ep.start_time for ep in ballrun.episodes])
    ends = np.array([ep.end_time for ep in ballrun.episodes])
    assert (np.diff(starts) > 0).all() and (ends[:-1] <= starts[1:]).all()
    dt = float(ballrun.attrs["step_dt"])
    assert np.allclose(ends - starts, ballrun.episode_lengths * dt)
    assert all(ep.content_hash == ballrun.episode_content_hash(i) for i, ep in enumerate(ballrun.episodes))
    assert len(set(ballrun.episode_ids())) == 20


def test_collection_holds_safe_decent_episodes_and_unsafe_high_reward_ones(ballrun) -> None:
    spec = get_task("BallRun")
    returns, costs = ballrun.episode_returns(), ballrun.episode_cost_returns()
    safe, unsafe = costs < 10.0, costs > 20.0
    assert safe.sum() >= 4 and unsafe.sum() >= 4
    assert spec.normalized_reward(returns[safe].max()) > 0.2
    assert returns[unsafe].max() > 2 * returns[safe].max()
    aggressiveness = episode_aggressiveness(ballrun)
    assert ((aggressiveness >= 0) & (aggressiveness <= 1)).all()
    assert np.corrcoef(aggressiveness, costs)[0, 1] > 0.8


def test_reckless_only_collection_is_all_unsafe() -> None:
    reckless = collect_episodes("BallRun", episodes=4, seed=1, aggressiveness_range=(0.8, 1.0))
    assert (reckless.episode_cost_returns() > 40.0).all()
    assert (episode_aggressiveness(reckless) >= 0.8).all()


def test_collection_is_reproducible_per_seed() -> None:
    first = collect_episodes("BallCircle", episodes=3, seed=4, num_envs=2)
    again = collect_episodes("BallCircle", episodes=3, seed=4, num_envs=2)
    other = collect_episodes("BallCircle", episodes=3, seed=5, num_envs=2)
    assert first.dataset_hash() == again.dataset_hash() != other.dataset_hash()


def test_car_circle_collection_spans_safe_and_unsafe() -> None:
    dataset = collect_episodes("CarCircle", episodes=6, seed=0, num_envs=6)
    costs = dataset.episode_cost_returns()
    assert (costs < 10.0).any() and (costs > 20.0).any()


@pytest.mark.parametrize("kwargs, message", [
    ({"episodes": 0}, "episode"),
    ({"robots": 0}, "robot"),
    ({"aggressiveness_range": (0.9, 0.1)}, "aggressiveness"),
    ({"aggressiveness_range": (0.0, 1.5)}, "aggressiveness"),
])
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(CollectionError, match=message):
        collect_episodes("BallRun", **kwargs)


def test_unsupported_and_unknown_tasks_are_refused() -> None:
    with pytest.raises(TaskError, match="supports"):
        collect_episodes("AntRun", episodes=1)
    with pytest.raises(TaskError, match="known tasks"):
        default_episodes("Bogus")


def test_reckless_run_drivers_cross_the_boundary_during_the_burst_and_come_back() -> None:
    """Behaviour version 2: the data must show recoveries from an unsafe lane, not only drivers
    that stay across the boundary (an offline learner cannot learn a recovery it never sees)."""
    reckless = collect_episodes("BallRun", episodes=16, seed=3, aggressiveness_range=(0.85, 0.95))
    crossed = recovered = 0
    start = 0
    for length in reckless.episode_lengths:
        lateral = 10.0 * reckless.observations[start:start + length, 1]     # obs[1] is 0.1 y
        outside = np.nonzero(np.abs(lateral) > 2.0)[0]
        if outside.size:
            crossed += 1
            recovered += int(outside.max() < length - 1)
        start += length
    assert crossed >= 12
    assert recovered >= 2
