"""Offline data collection: scripted behaviour families rolled out on the simulated tasks."""

from saferule_core.collect.behaviours import SUPPORTED_TASKS, make_behaviour
from saferule_core.collect.collect import (
    DEFAULT_EPISODES,
    CollectConfig,
    collect,
    collect_episodes,
    default_episodes,
    episode_aggressiveness,
)
from saferule_core.collect.plot import reward_cost_png, save_reward_cost_png
from saferule_core.collect.rollout import Rollouts, run_episodes
from saferule_core.errors import CollectionError
from saferule_core.tasks.spec import PolicyFn

__all__ = [
    "DEFAULT_EPISODES", "SUPPORTED_TASKS", "CollectConfig", "CollectionError", "PolicyFn", "Rollouts", "collect",
    "collect_episodes", "default_episodes", "episode_aggressiveness", "make_behaviour", "reward_cost_png",
    "run_episodes", "save_reward_cost_png",
]
