"""Episode accounting of the robots' step records, in one place: the fleet monitor judges episodes
with it, and the demo's and tests' fleet watch measures with it.

Per robot, `EpisodeCostMonitor` sums the reward and cost of each episode from its step records
(Float64MultiArray [reward, cost, terminated, truncated] with step key "<episode>@<step>"), and
follows which policy drove it from the robot's PolicyStatus messages: an episode counts as
policy-driven only when a runner reported an active policy from its first record (step 0) to its
last, with no status gap longer than `policy_status_timeout_s`. A finished episode becomes an
`EpisodeVerdict`: its cost against a threshold, the versions that drove it, or why it is not
attributed to one (the SKIP_* reasons). No ROS here: times are passed in (`now`), on one clock.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from saferule_core.data.from_bags import (
    STEP_COST,
    STEP_RECORD_FIELDS,
    STEP_REWARD,
    STEP_TERMINATED,
    STEP_TRUNCATED,
    parse_step_key,
)
from saferule_core.errors import ConfigError, SafeRuleError
from saferule_core.tasks.spec import get_task

RECENT_FLAGGED = 10

# Why an episode was not judged (RobotHealth.skipped keys).
SKIP_NO_POLICY = "no_policy"                        # no runner reported an active policy
SKIP_POLICY_STARTED = "policy_started_mid_episode"  # the first status naming a policy came during the episode
SKIP_POLICY_STOPPED = "policy_stopped_mid_episode"  # a status during the episode named no policy
SKIP_STATUS_LOST = "policy_status_lost"             # statuses stopped for longer than policy_status_timeout_s
SKIP_START_NOT_SEEN = "start_not_seen"              # its first records (from step 0) never reached the monitor
# Per-policy statistics keys besides the versions themselves.
MIXED_POLICY = "mixed"       # a judged episode during which the runner swapped versions
NO_POLICY = "none"           # an episode judged although no policy drove all of it (judge_only_policy_episodes off)



def episode_cost_threshold(cost_threshold: float, task: str) -> float:
    """The configured threshold, or for 0 the task's first DSRL cost threshold."""
    if cost_threshold < 0:
        raise ConfigError(f"cost_threshold must be >= 0, got {cost_threshold}")
    if cost_threshold > 0:
        return cost_threshold
    if not task:
        raise ConfigError("cost_threshold is 0 and no task is named: set one of them")
    try:
        return float(get_task(task).cost_thresholds[0])
    except SafeRuleError as err:
        raise ConfigError(f"task: {err}") from None


@dataclass(frozen=True)
class EpisodeVerdict:
    robot: str
    episode_id: str
    cost: float
    steps: int
    flagged: bool
    streak: int              # flagged episodes in a row, this one included (skipped episodes leave it as it was)
    complete: bool           # ended by its own flag (False: records of a newer episode arrived first)
    judged: bool = True      # False: skipped, not policy-driven (never flagged)
    skip_reason: str = ""    # "" when a policy drove the whole episode, else one of the SKIP_* reasons
    policies: tuple[str, ...] = ()   # the versions the runner reported during the episode, in order
    reward: float = 0.0
    started_at: float = 0.0          # `now` of its first and last record seen
    ended_at: float = 0.0

    @property
    def policy(self) -> str:
        """The version that drove the whole episode, MIXED_POLICY after a swap, NO_POLICY when none did."""
        if self.skip_reason or not self.policies:
            return NO_POLICY
        return self.policies[0] if len(self.policies) == 1 else MIXED_POLICY


@dataclass
class PolicyEpisodes:
    """Judged episodes of one robot under one policy attribution (a version, MIXED_POLICY or NO_POLICY)."""
    episodes: int = 0
    flagged: int = 0
    cost_sum: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"episodes": self.episodes, "flagged": self.flagged,
                "mean_cost": self.cost_sum / self.episodes if self.episodes else None}


@dataclass
class RobotHealth:
    robot: str
    episode_id: str = ""
    episode_cost: float = 0.0
    episode_reward: float = 0.0
    episode_started_at: float = 0.0
    episode_steps: int = 0
    episode_policies: list[str] = field(default_factory=list)
    episode_skip_reason: str = ""         # set once the running episode can no longer count as policy-driven
    episodes: int = 0                     # judged episodes
    flagged_episodes: int = 0
    streak: int = 0
    malformed_records: int = 0
    last_episode_id: str = ""
    last_episode_cost: float = 0.0
    recent_flagged: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_FLAGGED))
    skipped: dict[str, int] = field(default_factory=dict)       # skip reason -> episodes
    last_skipped: dict[str, Any] = field(default_factory=dict)  # episode_id, cost, reason of the latest skipped one
    by_policy: dict[str, PolicyEpisodes] = field(default_factory=dict)
    policy_version: str = ""              # what the robot's latest PolicyStatus names ("" none)
    policy_status_at: float = -math.inf   # when it arrived (the monitor's monotonic clock)

    def to_json(self) -> dict[str, Any]:
        return {"episodes": self.episodes, "flagged_episodes": self.flagged_episodes, "streak": self.streak,
                "current_episode": self.episode_id, "current_cost": self.episode_cost,
                "last_episode": self.last_episode_id, "last_cost": self.last_episode_cost,
                "recent_flagged": list(self.recent_flagged), "malformed_records": self.malformed_records,
                "skipped_episodes": sum(self.skipped.values()), "skipped": dict(self.skipped),
                "last_skipped": dict(self.last_skipped), "policy": self.policy_version,
                "by_policy": {name: stats.to_json() for name, stats in self.by_policy.items()}}

    def summary(self) -> str:
        """One line: "robot_1: 5 episodes judged, 2 flagged (v0001: 5), 3 skipped (3 no_policy)"."""
        line = f"{self.robot}: {self.episodes} episodes judged, {self.flagged_episodes} flagged"
        if self.by_policy:
            line += " (" + ", ".join(f"{name}: {stats.episodes}" for name, stats in self.by_policy.items()) + ")"
        line += f", {sum(self.skipped.values())} skipped"
        if self.skipped:
            line += " (" + ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) + ")"
        return line


class EpisodeCostMonitor:
    """Sums step costs per robot episode, follows which policy drove it, and judges finished episodes
    against a threshold. Times (`now`) are on one monotonic clock, the monitor's own."""

    def __init__(self, robots: Sequence[str], threshold: float, judge_only_policy_episodes: bool = True,
                 policy_status_timeout_s: float = 3.0) -> None:
        self.threshold = threshold
        self.judge_only_policy_episodes = judge_only_policy_episodes
        self.policy_status_timeout_s = policy_status_timeout_s
        self.health = {robot: RobotHealth(robot) for robot in robots}

    def observe_status(self, robot: str, active_version: str, now: float | None = None) -> None:
        """A PolicyStatus of `robot`'s runner ("" = it runs no policy)."""
        now = time.monotonic() if now is None else now
        health = self.health[robot]
        if health.episode_id:
            if not health.episode_skip_reason:
                if now - health.policy_status_at > self.policy_status_timeout_s:
                    health.episode_skip_reason = SKIP_STATUS_LOST
                elif not active_version:
                    health.episode_skip_reason = SKIP_POLICY_STOPPED
            elif health.episode_skip_reason == SKIP_NO_POLICY and active_version:
                health.episode_skip_reason = SKIP_POLICY_STARTED
            if active_version and active_version not in health.episode_policies:
                health.episode_policies.append(active_version)
        health.policy_version, health.policy_status_at = active_version, now

    def observe(self, robot: str, label: str, record: np.ndarray, now: float | None = None) -> list[EpisodeVerdict]:
        """One step record; returns the verdicts of the episodes it finished (0, 1 or 2)."""
        now = time.monotonic() if now is None else now
        health = self.health[robot]
        try:
            episode_id, step = parse_step_key(label)
        except ValueError:
            health.malformed_records += 1
            return []
        if record.shape != (len(STEP_RECORD_FIELDS),) or not np.isfinite(record).all():
            health.malformed_records += 1
            return []
        verdicts = []
        if health.episode_id and episode_id != health.episode_id:
            verdicts.append(self._close(health, complete=False, now=now))
        if not health.episode_id:
            self._open(health, episode_id, step, now)
        health.episode_cost += float(record[STEP_COST])
        health.episode_reward += float(record[STEP_REWARD])
        health.episode_steps += 1
        if record[STEP_TERMINATED] != 0 or record[STEP_TRUNCATED] != 0:
            verdicts.append(self._close(health, complete=True, now=now))
        return verdicts

    def _fresh(self, health: RobotHealth, now: float) -> bool:
        return now - health.policy_status_at <= self.policy_status_timeout_s

    def _open(self, health: RobotHealth, episode_id: str, step: int, now: float) -> None:
        health.episode_id, health.episode_started_at = episode_id, now
        health.episode_policies = [health.policy_version] if health.policy_version else []
        if not health.policy_version:
            health.episode_skip_reason = SKIP_NO_POLICY
        elif not self._fresh(health, now):
            health.episode_skip_reason = SKIP_STATUS_LOST
        elif step != 0:  # e.g. the monitor started midway: who drove the first steps is unknown
            health.episode_skip_reason = SKIP_START_NOT_SEEN
        else:
            health.episode_skip_reason = ""

    def _close(self, health: RobotHealth, complete: bool, now: float) -> EpisodeVerdict:
        if not health.episode_skip_reason and not self._fresh(health, now):
            health.episode_skip_reason = SKIP_STATUS_LOST
        reason = health.episode_skip_reason
        judged = not reason or not self.judge_only_policy_episodes
        flagged = judged and health.episode_cost > self.threshold
        if judged:
            health.episodes += 1
            health.streak = health.streak + 1 if flagged else 0
            if flagged:
                health.flagged_episodes += 1
                health.recent_flagged.append(health.episode_id)
        else:
            health.skipped[reason] = health.skipped.get(reason, 0) + 1
            health.last_skipped = {"episode_id": health.episode_id, "cost": health.episode_cost, "reason": reason}
        verdict = EpisodeVerdict(health.robot, health.episode_id, health.episode_cost, health.episode_steps, flagged,
                                 health.streak, complete, judged, reason, tuple(health.episode_policies),
                                 reward=health.episode_reward, started_at=health.episode_started_at, ended_at=now)
        if judged:
            stats = health.by_policy.setdefault(verdict.policy, PolicyEpisodes())
            stats.episodes += 1
            stats.flagged += int(flagged)
            stats.cost_sum += verdict.cost
        health.last_episode_id, health.last_episode_cost = health.episode_id, health.episode_cost
        health.episode_id, health.episode_cost, health.episode_reward, health.episode_steps = "", 0.0, 0.0, 0
        health.episode_policies, health.episode_skip_reason = [], ""
        return verdict
