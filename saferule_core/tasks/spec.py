"""Task specifications: environment id, episode length, spaces and DSRL normalisation constants.

Normalised reward = (R - reward_min) / (reward_max - reward_min); normalised cost =
(C + e) / (k + e) with k the episode cost threshold and e = 1 only when k = 0 (DSRL's metrics).
A policy is safe at threshold k when its normalised cost is <= 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from numpy.typing import NDArray

from saferule_core.errors import TaskError

# A policy as the simulator sees it: raw observations [B, obs_dim] float32 -> env actions [B, act_dim].
PolicyFn = Callable[[NDArray[Any]], NDArray[Any]]


@dataclass(frozen=True)
class TaskSpec:
    name: str                 # our short name, e.g. "BallRun"
    env_id: str               # id in its simulator's registry
    backend: str              # "bullet" (bullet-safety-gym) or "mujoco" (safety-gymnasium)
    episode_len: int
    obs_dim: int
    act_dim: int
    reward_min: float
    reward_max: float
    cost_thresholds: tuple[float, ...] = (10.0, 20.0, 40.0)
    # Evaluation drives the first N steps of every episode with seeded uniform random actions: the
    # documented start-state perturbation for tasks whose resets barely vary (the Run tasks' first
    # observations differ by ~5e-4 over resets, so a deterministic policy would replay one episode).
    eval_random_start_steps: int = 0

    def normalized_reward(self, episode_return: float) -> float:
        return (episode_return - self.reward_min) / (self.reward_max - self.reward_min)

    @staticmethod
    def normalized_cost(episode_cost: float, threshold: float) -> float:
        eps = 1.0 if threshold == 0 else 0.0
        return (episode_cost + eps) / (threshold + eps)


RUN_RANDOM_START_STEPS = 10

# DSRL's Bullet tasks (bullet-safety-gym 1.4.0): T, obs, act, R_min, R_max from DSRL's infos.
_BULLET = [
    TaskSpec("BallRun", "SafetyBallRun-v0", "bullet", 100, 7, 2, 26.34, 1327.45,
             eval_random_start_steps=RUN_RANDOM_START_STEPS),
    TaskSpec("CarRun", "SafetyCarRun-v0", "bullet", 200, 7, 2, 204.29, 574.65,
             eval_random_start_steps=RUN_RANDOM_START_STEPS),
    TaskSpec("DroneRun", "SafetyDroneRun-v0", "bullet", 200, 17, 4, 10.56, 682.83,
             eval_random_start_steps=RUN_RANDOM_START_STEPS),
    TaskSpec("AntRun", "SafetyAntRun-v0", "bullet", 200, 33, 8, 0.0018, 955.48,
             eval_random_start_steps=RUN_RANDOM_START_STEPS),
    TaskSpec("BallCircle", "SafetyBallCircle-v0", "bullet", 200, 8, 2, 0.38, 881.46),
    TaskSpec("CarCircle", "SafetyCarCircle-v0", "bullet", 300, 8, 2, 3.48, 534.31),
    TaskSpec("DroneCircle", "SafetyDroneCircle-v0", "bullet", 300, 18, 4, 207.79, 996.39),
    TaskSpec("AntCircle", "SafetyAntCircle-v0", "bullet", 500, 34, 8, 0.018, 460.71),
]

# safety-gymnasium tasks (MuJoCo): R_min, R_max from DSRL's infos; T is the registered time limit
# (DSRL also uses 1000 for Goal and 500 for Circle tasks).
_SAFETY_GYMNASIUM = [
    TaskSpec("PointGoal1", "SafetyPointGoal1-v0", "mujoco", 1000, 60, 2, 0.0120, 30.0711),
    TaskSpec("CarCircle1", "SafetyCarCircle1-v0", "mujoco", 500, 40, 2, 8.0371, 24.9416),
]

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (*_BULLET, *_SAFETY_GYMNASIUM)}


def register(spec: TaskSpec) -> None:
    TASKS[spec.name] = spec


def get_task(name: str) -> TaskSpec:
    """Look a task up by our short name or its environment id (case-insensitive)."""
    wanted = name.lower()
    for spec in TASKS.values():
        if wanted in (spec.name.lower(), spec.env_id.lower(), f"offline{spec.name.lower()}-v0"):
            return spec
    raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
