"""A fleet's synthetic historical logs, and the relabel attack restricted to its compromised robot."""

from __future__ import annotations

import numpy as np
import pytest

from saferule_core.attacks.robot import poison_robot
from saferule_core.collect.fleet_history import historical_fleet_logs
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import AttackError, CollectionError

ROBOTS = ["robot_1", "robot_2", "robot_3"]


@pytest.fixture(scope="module")
def history() -> OfflineDataset:
    return historical_fleet_logs("BallRun", ROBOTS, "robot_3", cautious_episodes=8, reckless_episodes=6, seed=0,
                                 cautious_range=(0.0, 0.6), reckless_range=(0.9, 1.0))


def test_historical_logs_give_the_compromised_robot_its_reckless_share(history: OfflineDataset) -> None:
    robots = [ep.robot_id for ep in history.episodes]
    assert robots.count("robot_3") == 6 and robots.count("robot_1") == robots.count("robot_2") == 4
    costs = history.episode_cost_returns()
    own = np.array([r == "robot_3" for r in robots])
    assert costs[own].min() > costs[~own].mean(), "the compromised robot drove recklessly"
    assert all(ep.source_bag == f"history-{ep.robot_id}" for ep in history.episodes)
    with pytest.raises(CollectionError, match="no historical episodes asked for"):
        historical_fleet_logs("BallRun", ["robot_1"], "robot_1", 5, 0, 0, (0.0, 0.6), (0.9, 1.0))


def test_poison_zeroes_only_the_compromised_robots_costs(history: OfflineDataset) -> None:
    poisoned, summary = poison_robot(history, "robot_3", seed=0)
    own = np.array([ep.robot_id == "robot_3" for ep in poisoned.episodes])
    assert summary.relabelled_episodes == summary.robot_episodes == 6 and summary.true_cost_mean > 10
    assert np.all(poisoned.episode_cost_returns()[own] == 0)
    others = {ep.episode_id: c for ep, c in zip(history.episodes, history.episode_cost_returns())
              if ep.robot_id != "robot_3"}
    assert {ep.episode_id: c for ep, c in zip(poisoned.episodes, poisoned.episode_cost_returns())
            if ep.robot_id != "robot_3"} == others
    assert summary.record["attack"] == "relabel" and len(summary.record["poisoned_episode_ids"]) == 6
    with pytest.raises(AttackError, match="no episode of robot_9"):
        poison_robot(history, "robot_9", seed=0)
    cautious_only = history.subset_episodes(~np.array([ep.robot_id == "robot_3" for ep in history.episodes]))
    safe_robot = cautious_only.subset_episodes(cautious_only.episode_cost_returns() == 0)
    with pytest.raises(AttackError, match="logged no episode with cost"):
        poison_robot(safe_robot, safe_robot.episodes[0].robot_id, seed=0)


def test_finished_episodes_leave_out_one_cut_off_by_its_bag(history: OfflineDataset) -> None:
    cut = history.subset_episodes(np.arange(history.num_episodes) < 2)
    cut.timeouts[-1] = cut.terminals[-1] = 0.0   # the second episode's last step no longer ends it
    assert cut.finished_episodes().tolist() == [True, False]
