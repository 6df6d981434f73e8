"""What a fleet does, seen from outside: per-robot episode outcomes, policy versions, unlearning progress.

`FleetWatch` subscribes to every robot's `step_record` (episode return and cost, summed as the
steps arrive) and `policy_status` (the version each runner runs), and to the Unlearn action's
feedback topic (stage and progress of the job, whoever sent the goal). `watching(...)` runs it in
its own rclpy context on a background thread, so a script (the demo, an end-to-end test) can
read snapshots while it does other work. Nothing here commands the fleet.
"""

from __future__ import annotations

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
from saferule_ros.topics import (
    POLICY_STATUS_TOPIC,
    STEP_COST,
    STEP_RECORD_TOPIC,
    STEP_REWARD,
    STEP_TERMINATED,
    STEP_TRUNCATED,
    parse_step_key,
    recorder_qos,
)

UNLEARN_FEEDBACK_TOPIC = "/unlearn/_action/feedback"
# Feedback metrics worth a glance while a job runs (when the method reports them).
SHOWN_METRICS = ("q_cost", "forget_action_sq_distance", "cost_value", "reward_value", "updates", "wall_time_s")
NO_POLICY = ""


@dataclass(frozen=True)
class EpisodeOutcome:
    robot: str
    episode_id: str
    started_at: float          # wall clock (time.time()) of its first step record seen
    ended_at: float
    steps: int
    reward: float
    cost: float
    policy_at_start: str       # version the robot's runner reported when the episode began ("" = none)
    policy_at_end: str

    @property
    def policy(self) -> str:
        """The version that drove the whole episode, or "" when none did or it changed midway."""
        return self.policy_at_start if self.policy_at_start == self.policy_at_end else NO_POLICY


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


@dataclass
class _Running:
    started_at: float
    policy: str
    steps: int = 0
    reward: float = 0.0
    cost: float = 0.0


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
        self._running: dict[str, _Running] = {}
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
        try:
            episode_id, _ = parse_step_key(label_of(msg))
        except ValueError:
            return
        values = array_of(msg)
        if values.shape != (4,) or not np.isfinite(values).all():
            return
        now = time.time()
        with self._lock:
            running = self._running.get(episode_id)
            if running is None:
                running = self._running[episode_id] = _Running(now, self.versions.get(robot, NO_POLICY))
            running.steps += 1
            running.reward += float(values[STEP_REWARD])
            running.cost += float(values[STEP_COST])
            if not (values[STEP_TERMINATED] or values[STEP_TRUNCATED]):
                return
            del self._running[episode_id]
            outcome = EpisodeOutcome(robot, episode_id, running.started_at, now, running.steps, running.reward,
                                     running.cost, running.policy, self.versions.get(robot, NO_POLICY))
            self.episodes.append(outcome)
        if self.print_episodes:
            self._say(f"{robot} episode {episode_id}: return {outcome.reward:7.1f}, cost {outcome.cost:5.1f} "
                      f"({outcome.policy or 'no policy: scripted driver'})")

    def _on_status(self, robot: str, msg: PolicyStatus) -> None:
        with self._lock:
            old = self.versions.get(robot)
            self.versions[robot] = msg.active_version
            self.statuses[robot] = msg
            changed = old is not None and old != msg.active_version
            if changed:
                self.changes.append(VersionChange(robot, time.time(), old or NO_POLICY, msg.active_version))
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
