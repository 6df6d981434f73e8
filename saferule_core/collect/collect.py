"""Generate an offline dataset by rolling out a family of scripted behaviour policies.

Each episode draws an aggressiveness in `aggressiveness_range` (stratified, so the range is
covered evenly) and is driven by the matching scripted policy from `behaviours`; together the
episodes span the reward/cost plane from cautious (cost 0) to reckless (high reward, high cost).
Episodes are spread round-robin over robots robot_1..robot_K and carry synthetic provenance:
source bag "sim-<task>-<robot>-<seed>", back-to-back start/end times at the task's step dt, and
the content hash of their rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from saferule_core.collect.behaviours import SUPPORTED_TASKS, make_behaviour
from saferule_core.collect.rollout import run_episodes
from saferule_core.data.dataset import EpisodeInfo, OfflineDataset
from saferule_core.errors import CollectionError, TaskError
from saferule_core.tasks.spec import PolicyFn, TaskSpec, get_task

AGGRESSIVENESS_ATTR = "behaviour_aggressiveness"   # attrs key: JSON {episode_id: aggressiveness}
# Bumped whenever the behaviour family changes, so caches keyed by it are not reused across changes.
# 2: reckless Run drivers leave their lane only during the burst and steer back after it.
# 3: reckless Run drivers cruise at 0.6-1.15 (was 0.6-0.88) times the speed limit.
BEHAVIOUR_VERSION = 3
DEFAULT_START_TIME = 1_700_000_000.0               # POSIX seconds of the first synthetic episode
EPISODE_GAP_S = 1.0                                # synthetic pause between consecutive episodes
# Default episode counts: about 30k-60k env steps, under a minute on one core.
DEFAULT_EPISODES: dict[str, int] = {"BallRun": 600, "CarRun": 120, "BallCircle": 300, "CarCircle": 100}


@dataclass(frozen=True)
class CollectConfig:
    episodes: int | None = None                     # None: DEFAULT_EPISODES[task]
    seed: int = 0
    robots: int = 3
    aggressiveness_range: tuple[float, float] = (0.0, 1.0)
    num_envs: int = 8                               # episodes run in lockstep per wave
    start_time: float = DEFAULT_START_TIME

    def validate(self) -> None:
        lo, hi = self.aggressiveness_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise CollectionError(f"aggressiveness range must satisfy 0 <= low <= high <= 1, got ({lo}, {hi})")
        if self.episodes is not None and self.episodes < 1:
            raise CollectionError(f"need at least one episode, got {self.episodes}")
        if self.robots < 1:
            raise CollectionError(f"need at least one robot, got {self.robots}")
        if self.num_envs < 1:
            raise CollectionError(f"need at least one environment per wave, got {self.num_envs}")
        if self.seed < 0:
            raise CollectionError(f"seed must be non-negative, got {self.seed}")


def default_episodes(task: str | TaskSpec) -> int:
    spec = _supported(task)
    return DEFAULT_EPISODES[spec.name]


def _supported(task: str | TaskSpec) -> TaskSpec:
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if spec.name not in SUPPORTED_TASKS:
        raise TaskError(f"no scripted behaviour family for task {spec.name!r}; collection supports "
                        f"{', '.join(SUPPORTED_TASKS)}")
    return spec


def stratified_aggressiveness(count: int, low: float, high: float, rng: np.random.Generator) -> NDArray[Any]:
    """`count` values covering [low, high] evenly (one per equal-width stratum), in random order."""
    strata = (rng.permutation(count) + rng.uniform(size=count)) / count
    return low + (high - low) * strata


def collect_episodes(task: str | TaskSpec, episodes: int | None = None, seed: int = 0, robots: int = 3,
                     aggressiveness_range: tuple[float, float] = (0.0, 1.0), num_envs: int = 8,
                     start_time: float = DEFAULT_START_TIME, progress: bool = False) -> OfflineDataset:
    """Roll out the behaviour family on `task`; see the module docstring.

    `aggressiveness_range=(0.8, 1.0)` gives reckless-only episodes (what the inject attack needs).
    The result is reproducible for the same arguments (num_envs included).
    """
    config = CollectConfig(episodes, seed, robots, tuple(aggressiveness_range), num_envs, start_time)  # type: ignore[arg-type]
    return collect(task, config, progress=progress)


def collect(task: str | TaskSpec, config: CollectConfig, progress: bool = False) -> OfflineDataset:
    config.validate()
    spec = _supported(task)
    count = config.episodes if config.episodes is not None else DEFAULT_EPISODES[spec.name]
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0xC011EC7]))
    aggressiveness = stratified_aggressiveness(count, *config.aggressiveness_range, rng)

    def policy_for(indices: NDArray[Any]) -> PolicyFn:
        return make_behaviour(spec, aggressiveness[indices], rng)

    rollouts = run_episodes(spec, policy_for, count, seed=config.seed, num_envs=config.num_envs,
                            progress=f"collect {spec.name}" if progress else None)
    durations = rollouts.episode_lengths * rollouts.dt
    starts = config.start_time + np.concatenate([[0.0], np.cumsum(durations + EPISODE_GAP_S)[:-1]])
    infos: list[EpisodeInfo] = []
    for i in range(count):
        robot = f"robot_{i % config.robots + 1}"
        infos.append(EpisodeInfo(
            episode_id=f"{spec.name}-s{config.seed}-{i:05d}", robot_id=robot,
            source_bag=f"sim-{spec.name}-{robot}-{config.seed}",
            start_time=float(starts[i]), end_time=float(starts[i] + durations[i])))
    attrs = {
        "source": "saferule collect: scripted behaviour family",
        "behaviour_version": str(BEHAVIOUR_VERSION),
        "seed": str(config.seed),
        "aggressiveness_range": f"{config.aggressiveness_range[0]},{config.aggressiveness_range[1]}",
        "step_dt": repr(rollouts.dt),
        "action_low": json.dumps(rollouts.action_low.tolist()),
        "action_high": json.dumps(rollouts.action_high.tolist()),
        AGGRESSIVENESS_ATTR: json.dumps({info.episode_id: round(float(a), 4)
                                         for info, a in zip(infos, aggressiveness)}),
    }
    dataset = OfflineDataset(
        observations=rollouts.observations, next_observations=rollouts.next_observations,
        actions=rollouts.actions, rewards=rollouts.rewards, costs=rollouts.costs,
        terminals=rollouts.terminals, timeouts=rollouts.timeouts,
        episodes=infos, episode_lengths=rollouts.episode_lengths, task=spec.name, attrs=attrs)
    return dataset.with_content_hashes()


def episode_aggressiveness(dataset: OfflineDataset) -> NDArray[Any]:
    """Per episode, the aggressiveness of the behaviour that drove it (NaN where not recorded)."""
    recorded: dict[str, float] = json.loads(dataset.attrs.get(AGGRESSIVENESS_ATTR, "{}"))
    return np.array([recorded.get(ep.episode_id, np.nan) for ep in dataset.episodes], dtype=np.float64)
