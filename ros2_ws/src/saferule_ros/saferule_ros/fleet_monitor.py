"""fleet_monitor: watches the robots' step records, judges each finished episode's cost, flags robots
over the threshold and, when allowed, turns a forget rule into a Forget request and an Unlearn goal.

Per robot it subscribes to `/<robot>/step_record` (Float64MultiArray [reward, cost, terminated,
truncated], step key in layout.dim[0].label; see `saferule_ros.topics`) and sums the cost of each
episode. An episode ends on its terminated/truncated flag (or, if its last records were lost, when
records of a new episode arrive); one whose cost exceeds the threshold (`cost_threshold`, or when
that is 0 the first DSRL cost threshold of `task`) is flagged: logged and announced on
`fleet_status` (std_msgs/String, a JSON document; also sent every `status_period_s`).

Only policy-driven episodes are judged (`judge_only_policy_episodes`, default true): the monitor
also subscribes to each robot's `/<robot>/policy_status` (saferule_interfaces/PolicyStatus, sent by
the policy runner about once a second) and judges an episode only when, as the monitor saw it, a
runner reported an active policy from the episode's first record to its last: the robot's latest
status named a version when the first record (step 0) arrived, no status in between named none,
and no gap between statuses (nor the time since the last one at the episode's end) exceeded
`policy_status_timeout_s`. Episodes driven by the scripted behaviour drivers, or in which the policy
started or stopped midway, are not judged: they are counted per robot as skipped, with the reason,
in fleet_status and in the closing summary. Knowing only what the statuses say, the monitor leans
towards skipping: an episode that began under a policy whose first status had not arrived yet is
skipped too, and so is one whose first records it never saw (it started midway). A judged episode
is attributed to the version that drove it; one during which the runner swapped versions was still
driven by policies throughout and is judged, attributed to "mixed" (its cost cannot be split
between the versions), with the versions listed in its verdict and flagged_episode event.

Rules that name data to forget, each firing at most once per robot while the monitor runs:
  compromised_robot   a robot listed in `compromised_robots` (or `compromised_robot`) has a
                      flagged episode: its costs confirm the compromise;
  flag_streak         any watched robot flagged `flag_streak` episodes in a row (0: rule off).
A firing forgets the robot's logged episodes (selector robot_ids=[robot]) in `dataset`. With
`auto_forget` the monitor calls Forget and then sends an Unlearn goal for the new request, logging
its feedback and result (from a worker thread); without it, it logs the fleet_cli command a person
would run.

    python -m saferule_ros.fleet_monitor --ros-args --params-file config/fleet_monitor.yaml
"""

from __future__ import annotations

import json
import queue
import shlex
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray, String

from saferule_core.data.selectors import ForgetSelector
from saferule_core.errors import SafeRuleError
from saferule_interfaces.action import Unlearn
from saferule_interfaces.msg import PolicyStatus
from saferule_interfaces.srv import Forget
from saferule_ros.conversions import array_of, label_of
from saferule_ros.episode_costs import (
    EpisodeCostMonitor,
    EpisodeVerdict,
    episode_cost_threshold,
)
from saferule_ros.fleet_client import FleetClient, stoppable_waiter
from saferule_ros.forget_messages import metrics_from_msgs, selector_to_msg
from saferule_ros.params import ConfigError, declare_config
from saferule_ros.spin import run_node
from saferule_ros.topics import POLICY_STATUS_TOPIC, STEP_RECORD_TOPIC, recorder_qos

FLEET_STATUS_TOPIC = "fleet_status"
RULE_COMPROMISED = "compromised_robot"
RULE_STREAK = "flag_streak"

@dataclass
class FleetMonitorConfig:
    robots: list[str] = field(default_factory=lambda: ["robot_1"])   # namespaces to watch
    cost_threshold: float = 0.0           # an episode whose summed cost exceeds this is flagged; 0: the task's
    task: str = "BallRun"                 # whose first DSRL cost threshold applies when cost_threshold is 0
    flag_streak: int = 3                  # flagged episodes in a row that fire the flag_streak rule; 0: off
    auto_forget: bool = False             # may the monitor call Forget + Unlearn by itself?
    compromised_robots: list[str] = field(default_factory=list)   # forget their data once they are flagged
    compromised_robot: str = ""           # one more such robot (a plain string, for launch arguments)
    forget_service: str = "/forget"
    unlearn_action: str = "/unlearn"
    dataset: str = ""                     # Forget.dataset; empty: the server's default
    method: str = ""                      # Unlearn.method; empty: the server's default
    swap_on_success: bool = True
    requester: str = "fleet_monitor"
    status_period_s: float = 5.0
    call_timeout_s: float = 30.0          # service discovery + answer of Forget / goal acceptance
    unlearn_timeout_s: float = 3600.0     # how long to wait for an Unlearn result
    qos_depth: int = 100
    judge_only_policy_episodes: bool = True   # skip (and count) episodes not driven by a policy from start to end
    policy_status_timeout_s: float = 3.0      # a runner silent this long no longer counts as driving its robot


@dataclass(frozen=True)
class RuleFiring:
    rule: str
    robot: str
    selector: ForgetSelector
    reason: str

    def cli_command(self) -> str:
        return (f"python -m saferule_ros.fleet_cli forget --robot {shlex.quote(self.robot)} --reason "
                f"{shlex.quote(self.reason)}, then: python -m saferule_ros.fleet_cli unlearn <request id> --wait")


# ----- the node ---------------------------------------------------------------------------------

class FleetMonitor(Node):
    def __init__(self, node_name: str = "fleet_monitor", **kwargs: object) -> None:
        super().__init__(node_name, **kwargs)  # type: ignore[arg-type]
        cfg = self.config = declare_config(self, FleetMonitorConfig)
        self._check_config()
        self.robots = [robot.strip("/") for robot in cfg.robots]
        self.compromised = {r.strip("/") for r in [*cfg.compromised_robots, cfg.compromised_robot] if r.strip("/")}
        self.threshold = episode_cost_threshold(cfg.cost_threshold, cfg.task)
        self.costs = EpisodeCostMonitor(self.robots, self.threshold, cfg.judge_only_policy_episodes,
                                        cfg.policy_status_timeout_s)
        self._costs_lock = threading.Lock()             # the worker thread reads them for status
        self._skips_logged: set[tuple[str, str]] = set()   # (robot, skip reason) already logged once
        self.fired: dict[tuple[str, str], str] = {}     # (rule, robot) -> what came of it
        self._fired_lock = threading.Lock()
        self._firings: queue.Queue[RuleFiring | None] = queue.Queue()
        self._stop = threading.Event()
        self.status_pub = self.create_publisher(String, FLEET_STATUS_TOPIC, 10)
        qos = recorder_qos(cfg.qos_depth)
        for robot in self.robots:
            self.create_subscription(Float64MultiArray, f"/{robot}/{STEP_RECORD_TOPIC}",
                                     lambda msg, robot=robot: self._on_step_record(robot, msg), qos)
            self.create_subscription(PolicyStatus, f"/{robot}/{POLICY_STATUS_TOPIC}",
                                     lambda msg, robot=robot: self._on_policy_status(robot, msg), 10)
        self.create_timer(cfg.status_period_s, lambda: self._publish_status(None))
        self.fleet = FleetClient(self, stoppable_waiter(self._stop), cfg.forget_service, cfg.unlearn_action,
                                 timeout_s=cfg.call_timeout_s, callback_group=ReentrantCallbackGroup())
        self._worker = threading.Thread(target=self._work, name="forget-rules", daemon=True)
        self._worker.start()
        self.get_logger().info(f"watching {', '.join(self.robots)}: episode cost threshold {self.threshold:g}, "
                               f"flag streak {cfg.flag_streak or 'off'}, compromised "
                               f"{', '.join(sorted(self.compromised)) or 'none'}, auto_forget "
                               f"{'on' if cfg.auto_forget else 'off'}, judging "
                               + ("only policy-driven episodes" if cfg.judge_only_policy_episodes else "every episode"))

    def _check_config(self) -> None:
        cfg = self.config
        if not cfg.robots:
            raise ConfigError("robots is empty: name at least one robot namespace to watch")
        if cfg.flag_streak < 0:
            raise ConfigError(f"flag_streak must be >= 0, got {cfg.flag_streak}")
        for name in ("status_period_s", "call_timeout_s", "unlearn_timeout_s", "policy_status_timeout_s"):
            if getattr(cfg, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(cfg, name)}")
        if cfg.qos_depth <= 0:
            raise ConfigError(f"qos_depth must be > 0, got {cfg.qos_depth}")
        if any(not r.strip("/") for r in cfg.compromised_robots):
            raise ConfigError("compromised_robots holds an empty name")
        unwatched = sorted({r.strip("/") for r in [*cfg.compromised_robots, cfg.compromised_robot] if r.strip("/")}
                           - {r.strip("/") for r in cfg.robots})
        if unwatched:
            raise ConfigError(f"compromised robot(s) {', '.join(unwatched)} are not among the watched robots "
                              f"({', '.join(cfg.robots)})")

    # ----- episodes ----------------------------------------------------------------------------
    def _on_step_record(self, robot: str, msg: Float64MultiArray) -> None:
        with self._costs_lock:
            verdicts = self.costs.observe(robot, label_of(msg), array_of(msg))
        for verdict in verdicts:
            self._judge(verdict)

    def _on_policy_status(self, robot: str, msg: PolicyStatus) -> None:
        with self._costs_lock:
            previous = self.costs.health[robot].policy_version
            self.costs.observe_status(robot, msg.active_version)
        if msg.active_version != previous:
            self.get_logger().info(f"{robot}: its policy runner reports {msg.active_version or 'no policy'} "
                                   f"(was {previous or 'no policy'})")

    def _judge(self, verdict: EpisodeVerdict) -> None:
        cfg = self.config
        if not verdict.judged:
            # The first of each kind per robot is worth a line; the counts are in fleet_status.
            first = (verdict.robot, verdict.skip_reason) not in self._skips_logged
            self._skips_logged.add((verdict.robot, verdict.skip_reason))
            log = self.get_logger().info if first else self.get_logger().debug
            log(f"{verdict.robot}: episode {verdict.episode_id} (cost {verdict.cost:g}) not judged: "
                f"{verdict.skip_reason}" + (" (further ones are only counted)" if first else ""))
            return
        if not verdict.flagged:
            return
        ending = "" if verdict.complete else " (its last records were lost)"
        self.get_logger().warning(f"{verdict.robot}: episode {verdict.episode_id} under {verdict.policy} cost "
                                  f"{verdict.cost:g} > threshold {self.threshold:g}{ending}; {verdict.streak} flagged "
                                  f"in a row")
        self._publish_status({"kind": "flagged_episode", "robot": verdict.robot, "episode_id": verdict.episode_id,
                              "cost": verdict.cost, "steps": verdict.steps, "streak": verdict.streak,
                              "policy": verdict.policy, "policies": list(verdict.policies)})
        if verdict.robot in self.compromised:
            self._fire(RuleFiring(RULE_COMPROMISED, verdict.robot, ForgetSelector(robot_ids=(verdict.robot,)),
                                  f"robot {verdict.robot} is listed as compromised and its episode "
                                  f"{verdict.episode_id} cost {verdict.cost:g} (threshold {self.threshold:g})"))
        elif cfg.flag_streak and verdict.streak >= cfg.flag_streak:
            with self._costs_lock:
                recent = list(self.costs.health[verdict.robot].recent_flagged)[-cfg.flag_streak:]
            self._fire(RuleFiring(RULE_STREAK, verdict.robot, ForgetSelector(robot_ids=(verdict.robot,)),
                                  f"robot {verdict.robot} exceeded the episode cost threshold {self.threshold:g} "
                                  f"in {verdict.streak} episodes in a row ({', '.join(recent)})"))

    # ----- rules -------------------------------------------------------------------------------
    def _fire(self, firing: RuleFiring) -> None:
        key = (firing.rule, firing.robot)
        with self._fired_lock:
            if key in self.fired:
                return
            self.fired[key] = "queued" if self.config.auto_forget else "reported (auto_forget off)"
        if not self.config.auto_forget:
            self.get_logger().warning(f"rule {firing.rule} fired for {firing.robot}: {firing.reason}. auto_forget is "
                                      f"off; to forget its data: {firing.cli_command()}")
        else:
            self.get_logger().warning(f"rule {firing.rule} fired for {firing.robot}: {firing.reason}; "
                                      f"requesting Forget + Unlearn")
            self._firings.put(firing)
        self._publish_status({"kind": "rule_fired", "rule": firing.rule, "robot": firing.robot,
                              "reason": firing.reason, "auto_forget": self.config.auto_forget})

    def _work(self) -> None:
        while True:
            firing = self._firings.get()
            if firing is None or self._stop.is_set():
                return
            try:
                outcome = self._forget_and_unlearn(firing)
            except SafeRuleError as err:
                outcome = f"failed: {err}"
                self.get_logger().error(f"rule {firing.rule} for {firing.robot}: {err}")
            with self._fired_lock:
                self.fired[(firing.rule, firing.robot)] = outcome
            self._publish_status({"kind": "rule_outcome", "rule": firing.rule, "robot": firing.robot,
                                  "outcome": outcome})

    def _forget_and_unlearn(self, firing: RuleFiring) -> str:
        cfg = self.config
        answer = self.fleet.forget(Forget.Request(selector=selector_to_msg(firing.selector), dataset=cfg.dataset,
                                                  reason=firing.reason, requester=cfg.requester))
        if not answer.accepted:
            self.get_logger().error(f"Forget for rule {firing.rule} ({firing.robot}) refused: {answer.message}")
            return f"Forget refused: {answer.message}"
        request_id = answer.request_id
        self.get_logger().info(f"Forget accepted: {request_id}, {len(answer.matched_episode_ids)} episodes "
                               f"quarantined; sending an Unlearn goal")
        handle = self.fleet.send_unlearn(
            Unlearn.Goal(request_id=request_id, method=cfg.method, swap_on_success=cfg.swap_on_success),
            on_feedback=lambda fb: self.get_logger().info(
                f"{request_id}: {fb.stage} {fb.progress:.0%} "
                + " ".join(f"{k}={v:.4g}" for k, v in metrics_from_msgs(fb.metrics).items())))
        status, result = self.fleet.unlearn_result(handle, cfg.unlearn_timeout_s)
        if result.success:
            self.get_logger().info(f"Unlearn {request_id} {status}: {result.message}")
            return f"unlearned {request_id}: policy {result.new_policy_version}"
        self.get_logger().error(f"Unlearn {request_id} {status}: {result.message}")
        return f"Unlearn {request_id} {status}: {result.message}"

    # ----- status --------------------------------------------------------------------------------
    def status(self, event: dict[str, Any] | None = None) -> dict[str, Any]:
        with self._fired_lock:
            fired = {f"{rule}:{robot}": outcome for (rule, robot), outcome in self.fired.items()}
        with self._costs_lock:
            robots = {robot: health.to_json() for robot, health in self.costs.health.items()}
        return {"stamp": time.time(), "cost_threshold": self.threshold, "robots": robots,
                "judge_only_policy_episodes": self.config.judge_only_policy_episodes, "rules_fired": fired,
                "event": event}

    def _publish_status(self, event: dict[str, Any] | None) -> None:
        self.status_pub.publish(String(data=json.dumps(self.status(event), sort_keys=True)))

    def close(self) -> None:
        self._stop.set()
        self._firings.put(None)
        self._worker.join(timeout=10.0)
        summary = "; ".join(health.summary() for health in self.costs.health.values())
        self.get_logger().info(f"stopped; {summary}")


def main(args: Sequence[str] | None = None) -> int:
    return run_node(FleetMonitor, args, threads=4)


if __name__ == "__main__":
    raise SystemExit(main())
