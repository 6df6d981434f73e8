"""Synthetic "historical" logs of a robot fleet: the healthy robots drove cautiously, one compromised
robot recklessly, with the scripted behaviour family that a launched fleet's live behaviour drivers
use (their aggressiveness ranges are the fleet's settings, passed in). The demo and the
launched-fleet benchmark start from them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from saferule_core.collect.collect import collect_episodes
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import CollectionError

HISTORY_BAG_PREFIX = "history-"   # source_bag of every historical episode: history-<robot>


def historical_fleet_logs(task: str, robot_ids: Sequence[str], compromised_robot: str, cautious_episodes: int,
                          reckless_episodes: int, seed: int, cautious_range: tuple[float, float],
                          reckless_range: tuple[float, float]) -> OfflineDataset:
    """`cautious_episodes` spread over the healthy robots (aggressiveness drawn in `cautious_range`) and
    `reckless_episodes` of the compromised one (in `reckless_range`; none when it is ""), each episode
    named after its robot."""
    healthy = [robot for robot in robot_ids if robot != compromised_robot]
    parts = []
    if healthy and cautious_episodes:
        cautious = collect_episodes(task, episodes=cautious_episodes, seed=seed + 1, robots=len(healthy),
                                    aggressiveness_range=cautious_range)
        parts.append(_renamed_robots(cautious, dict(zip([f"robot_{i + 1}" for i in range(len(healthy))], healthy))))
    if compromised_robot and reckless_episodes:
        reckless = collect_episodes(task, episodes=reckless_episodes, seed=seed + 2, robots=1,
                                    aggressiveness_range=reckless_range)
        parts.append(_renamed_robots(reckless, {"robot_1": compromised_robot}))
    if not parts:
        raise CollectionError("no historical episodes asked for (no healthy robot with cautious episodes, "
                              "no compromised robot with reckless ones)")
    merged = OfflineDataset.concatenate(parts)
    merged.attrs = {"source": "historical logs (saferule collect, in-process)"}
    return merged.with_content_hashes()


def _renamed_robots(dataset: OfflineDataset, names: dict[str, str]) -> OfflineDataset:
    episodes = [dataclasses.replace(ep, robot_id=names.get(ep.robot_id, ep.robot_id),
                                    source_bag=f"{HISTORY_BAG_PREFIX}{names.get(ep.robot_id, ep.robot_id)}")
                for ep in dataset.episodes]
    return dataclasses.replace(dataset, episodes=episodes)


def fleet_dataset_summary(dataset: OfflineDataset) -> dict[str, Any]:
    """Per robot: episodes, how many came from the fleet's bags (not the historical logs), mean
    return and cost; plus the dataset's size and hash."""
    robots: dict[str, dict[str, float]] = {}
    costs, returns = dataset.episode_cost_returns(), dataset.episode_returns()
    for robot in sorted({ep.robot_id for ep in dataset.episodes}):
        mask = np.array([ep.robot_id == robot for ep in dataset.episodes])
        from_bags = sum(1 for ep, m in zip(dataset.episodes, mask) if m and not ep.source_bag.startswith(HISTORY_BAG_PREFIX))
        robots[robot] = {"episodes": int(mask.sum()), "from_bags": from_bags,
                         "mean_return": float(returns[mask].mean()), "mean_cost": float(costs[mask].mean())}
    return {"episodes": dataset.num_episodes, "transitions": dataset.num_transitions, "robots": robots,
            "dataset_hash": dataset.dataset_hash()}
