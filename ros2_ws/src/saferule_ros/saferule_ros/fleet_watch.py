"""What a fleet does, seen from outside: per-robot episode outcomes, policy versions, unlearning progress.

`FleetWatch` subscribes to every robot's `step_record` and `policy_status` and accounts for each
episode exactly as the fleet monitor does (`saferule_ros.episode_costs`: return and cost summed as
the steps arrive, the version that drove it from start to end), and to the Unlearn action's
feedback topic (stage and progress of the job, whoever sent the goal). `watching(...)` runs it in
its own rclpy context on a background thread, so a script (the demo, an end-to-end test) can
read snapshots while it does other work. Nothing here commands the fleet.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray

from saferule_interfaces.action import Unlearn
from saferule_interfaces.msg import PolicyStatus
from saferule_ros.conversions import array_of, label_of
from saferule_ros.episode_costs import MIXED_POLICY, NO_POLICY, EpisodeCostMonitor, EpisodeVerdict
from saferule_ros.topics import POLICY_STATUS_TOPIC, STEP_RECORD_TOPIC, recorder_qos

UNLEARN_FEEDBACK_TOPIC = "/unlearn/_action/feedback"
# Feedback metrics worth a glance while a job runs (when the method reports them).
SHOWN_METRICS = ("q_cost", "forget_action_sq_distance", "cost_value", "reward_value", "updates", "wall_time_s")
NO_POLICY_DROVE = ""        # EpisodeOutcome.policy when no single version drove the episode
# A runner silent this long no longer counts as driving its robot (statuses come every second; the
# demo's training shares the cores, so this is more lenient than the monitor's default of 3 s).
STATUS_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class EpisodeOutcome:
    robot: str
    episode_id: str
    started_at: float          # wall clock (time.time()) of its first and last step record seen
    ended_at: float
    steps: int
    reward: float
    cost: float
    policy: str                # the version that drove the whole episode ("" = none, or it changed midway)
    versions: tuple[str, ...]  # every version the robot's runner reported during it

    @staticmethod
    def of(verdict: EpisodeVerdict) -> EpisodeOutcome:
        whole = verdict.policy if verdict.policy not in (MIXED_POLICY, NO_POLICY) else NO_POLICY_DROVE
        return EpisodeOutcome(verdict.robot, verdict.episode_id, verdict.started_at, verdict.ended_at, verdict.steps,
                              verdict.reward, verdict.cost, whole, verdict.policies)


@dataclass(frozen=True)
class VersionChange:
    robot: str
    seen_at: float             # when the first PolicyStatus with the new version arrived
    old: str
    new: str


@dataclass(frozen=True)
class UnlearnProgress:
    seen_at: float
    stage: str
    progress: float
    metrics: dict[str, float]


EventFn = Callable[[str], None]


class FleetWatch(Node):
    def __init__(self, robots: Sequence[str], *, on_event: EventFn | None = None, announce_progress: bool = True,
                 node_name: str = "fleet_watch", **kwargs: object) -> None:
        super().__init__(node_name, **kwargs)  # type: ignore[arg-type]
        self.robots = [robot.strip("/") for robot in robots]
        self.on_event = on_event
        self.announce_progress = announce_progress
        self.print_episodes = False            # announce every finished episode through on_event
        self._lock = threading.Lock()
        self.costs = EpisodeCostMonitor(self.robots, math.inf, judge_only_policy_episodes=False,
                                        policy_status_timeout_s=STATUS_TIMEOUT_S)
        self.episodes: list[EpisodeOutcome] = []
        self.versions: dict[str, str] = {}     # robot -> the version its latest PolicyStatus names
        self.statuses: dict[str, PolicyStatus] = {}
        self.changes: list[VersionChange] = []
        self.progress: list[UnlearnProgress] = []
        for robot in self.robots:
            self.create_subscription(Float64MultiArray, f"/{robot}/{STEP_RECORD_TOPIC}",
                                     lambda msg, r=robot: self._on_step(r, msg), recorder_qos(200))
            self.create_subscription(PolicyStatus, f"/{robot}/{POLICY_STATUS_TOPIC}",
                                     lambda msg, r=robot: self._on_status(r, msg), 10)
        self.create_subscription(Unlearn.Impl.FeedbackMessage, UNLEARN_FEEDBACK_TOPIC, self._on_feedback, 10)

    def _say(self, text: str) -> None:
        if self.on_event is not None:
            self.on_event(text)

    # ----- callbacks (executor thread) ---------------------------------------------------------
    def _on_step(self, robot: str, msg: Float64MultiArray) -> None:
        with self._lock:
            verdicts = self.costs.observe(robot, label_of(msg), array_of(msg), now=time.time())
            outcomes = [EpisodeOutcome.of(v) for v in verdicts if v.complete]   # ended by their own flag
            self.episodes.extend(outcomes)
        if self.print_episodes:
            for outcome in outcomes:
                self._say(f"{robot} episode {outcome.episode_id}: return {outcome.reward:7.1f}, cost "
                          f"{outcome.cost:5.1f} ({outcome.policy or 'no single policy: scripted driver or a swap'})")

    def _on_status(self, robot: str, msg: PolicyStatus) -> None:
        with self._lock:
            self.costs.observe_status(robot, msg.active_version, now=time.time())
            old = self.versions.get(robot)
            self.versions[robot] = msg.active_version
            self.statuses[robot] = msg
            changed = old is not None and old != msg.active_version
            if changed:
                self.changes.append(VersionChange(robot, time.time(), old or NO_POLICY_DROVE, msg.active_version))
        if changed:
            self._say(f"{robot} now runs {msg.active_version or 'no policy'} (was {old or 'no policy'}; "
                      f"{msg.swaps} swaps, {msg.rollbacks} rollbacks)")

    def _on_feedback(self, msg: Unlearn.Impl.FeedbackMessage) -> None:
        feedback = msg.feedback
        entry = UnlearnProgress(time.time(), feedback.stage, float(feedback.progress),
                                {m.name: float(m.value) for m in feedback.metrics})
        with self._lock:
            last = self.progress[-1] if self.progress else None
            self.progress.append(entry)
        # One line per stage change or per 10 % of progress: live, but not a flood.
        if not self.announce_progress:
            return
        if last is None or last.stage != entry.stage or int(entry.progress * 10) != int(last.progress * 10):
            preferred = [k for k in SHOWN_METRICS if k in entry.metrics] or list(entry.metrics)[:3]
            shown = ", ".join(f"{k} {entry.metrics[k]:.3g}" for k in preferred)
            self._say(f"unlearning: {entry.stage} {entry.progress:4.0%}" + (f" ({shown})" if shown else ""))

    # ----- snapshots (any thread) ----------------------------------------------------------------
    def finished(self, robot: str | None = None, since: float = 0.0, policy: str | None = None) -> list[EpisodeOutcome]:
        """Finished episodes that started at or after `since`, of one robot and one policy if given."""
        with self._lock:
            episodes = list(self.episodes)
        return [e for e in episodes if (robot is None or e.robot == robot) and e.started_at >= since
                and (policy is None or e.policy == policy)]

    def version_of(self, robot: str) -> str | None:
        with self._lock:
            return self.versions.get(robot)

    def all_run(self, version: str) -> bool:
        with self._lock:
            return all(self.versions.get(robot) == version for robot in self.robots)

    def version_changes(self) -> list[VersionChange]:
        with self._lock:
            return list(self.changes)

    def unlearn_progress(self) -> list[UnlearnProgress]:
        with self._lock:
            return list(self.progress)


@contextmanager
def watching(robots: Sequence[str], on_event: EventFn | None = None,
             announce_progress: bool = True) -> Iterator[FleetWatch]:
    """A FleetWatch spinning on a background thread in its own rclpy context."""
    context = rclpy.Context()
    rclpy.init(context=context)
    watch = FleetWatch(robots, on_event=on_event, announce_progress=announce_progress, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(watch)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set() and context.ok():
            executor.spin_once(timeout_sec=0.1)

    thread = threading.Thread(target=spin, name="fleet-watch", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        thread.join(timeout=5.0)
        executor.shutdown()
        watch.destroy_node()
        rclpy.try_shutdown(context=context)


def mean_cost(episodes: Sequence[EpisodeOutcome]) -> float:
    return float(np.mean([e.cost for e in episodes])) if episodes else float("nan")


def mean_reward(episodes: Sequence[EpisodeOutcome]) -> float:
    return float(np.mean([e.reward for e in episodes])) if episodes else float("nan")


__all__ = ["EpisodeOutcome", "FleetWatch", "UnlearnProgress", "VersionChange", "mean_cost", "mean_reward", "watching"]
