"""fleet_monitor: episode cost and policy bookkeeping (no ROS); over DDS, the node judging only
policy-driven episodes, and firing its forget rules against an unlearning server (the real job on a
tiny model)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.publisher import Publisher
from std_msgs.msg import Float64MultiArray, String

from saferule_core.data.ledger import LedgerState
from saferule_interfaces.msg import PolicyStatus
from saferule_ros.conversions import step_record
from saferule_ros.episode_costs import (
    MIXED_POLICY,
    NO_POLICY,
    SKIP_NO_POLICY,
    SKIP_POLICY_STARTED,
    SKIP_POLICY_STOPPED,
    SKIP_START_NOT_SEEN,
    SKIP_STATUS_LOST,
    EpisodeCostMonitor,
    EpisodeVerdict,
    episode_cost_threshold,
)
from saferule_ros.params import ConfigError
from saferule_ros.topics import recorder_qos
from tests.ros.forget_fixtures import server_files
from tests.ros.ros_harness import CONFIG_DIR, NodeProcess, node_process, probe_node, spin_until
from tests.ros.unlearning_harness import ledger_entries, server_process

pytestmark = pytest.mark.ros


def record(cost: float, end: bool = False) -> np.ndarray:
    return np.array([1.0, cost, 0.0, 1.0 if end else 0.0])


def test_episode_costs_flags_and_streaks() -> None:
    monitor = EpisodeCostMonitor(["r1"], threshold=2.0, judge_only_policy_episodes=False)
    assert monitor.observe("r1", "r1-000000@0", record(1.0), now=10.0) == []
    (verdict,) = monitor.observe("r1", "r1-000000@1", record(1.5, end=True), now=10.5)
    assert (verdict.episode_id, verdict.cost, verdict.steps, verdict.flagged, verdict.streak) == \
        ("r1-000000", 2.5, 2, True, 1)
    assert (verdict.reward, verdict.started_at, verdict.ended_at) == (2.0, 10.0, 10.5)
    (verdict,) = monitor.observe("r1", "r1-000001@0", record(3.0, end=True))
    assert verdict.flagged and verdict.streak == 2 and verdict.complete
    # The end of an episode was lost: it is judged when the next one's records arrive.
    assert monitor.observe("r1", "r1-000002@0", record(0.5)) == []
    lost, done = monitor.observe("r1", "r1-000003@0", record(0.0, end=True))
    assert (lost.episode_id, lost.complete, lost.flagged, lost.streak) == ("r1-000002", False, False, 0)
    assert (done.episode_id, done.complete, done.cost) == ("r1-000003", True, 0.0)
    # Malformed records are counted, not summed.
    assert monitor.observe("r1", "no step key", record(9.0)) == []
    assert monitor.observe("r1", "r1-000004@0", np.array([1.0, np.nan, 0.0, 0.0])) == []
    assert monitor.observe("r1", "r1-000004@0", np.array([1.0, 9.0])) == []
    health = monitor.health["r1"]
    assert (health.episodes, health.flagged_episodes, health.malformed_records) == (4, 2, 3)
    assert list(health.recent_flagged) == ["r1-000000", "r1-000001"]
    # Judged although no policy drove them (judge_only_policy_episodes off): attributed to none.
    assert health.by_policy[NO_POLICY].episodes == 4 and health.skipped == {}


def run_episode(monitor: EpisodeCostMonitor, robot: str, seq: int, cost_per_step: float, start: float,
                steps: int = 4, statuses: dict[int, str] | None = None) -> EpisodeVerdict:
    """One episode, a step per second from `start`; `statuses` maps a step to the PolicyStatus that
    arrives just before its record."""
    for step in range(steps):
        if statuses and step in statuses:
            monitor.observe_status(robot, statuses[step], now=start + step - 0.5)
        verdicts = monitor.observe(robot, f"{robot}-{seq:06d}@{step}", record(cost_per_step, step == steps - 1),
                                   now=start + step)
    (verdict,) = verdicts
    return verdict


def test_only_episodes_a_policy_drove_from_start_to_end_are_judged() -> None:
    monitor = EpisodeCostMonitor(["r1"], threshold=2.0, policy_status_timeout_s=3.0)
    health = monitor.health["r1"]
    # Scripted driving, no runner: unsafe, yet not judged; counted as skipped.
    verdict = run_episode(monitor, "r1", 0, 1.0, start=0.0)
    assert (verdict.judged, verdict.flagged, verdict.skip_reason, verdict.policy) == (False, False, SKIP_NO_POLICY,
                                                                                      NO_POLICY)
    # The runner's first status arrives midway: still not judged.
    verdict = run_episode(monitor, "r1", 1, 1.0, start=10.0, statuses={2: "v0001"})
    assert (verdict.judged, verdict.skip_reason) == (False, SKIP_POLICY_STARTED)
    # A status before the episode and one during it: judged and attributed to v0001.
    monitor.observe_status("r1", "v0001", now=19.5)
    verdict = run_episode(monitor, "r1", 2, 1.0, start=20.0, statuses={2: "v0001"})
    assert (verdict.judged, verdict.flagged, verdict.policy, verdict.streak) == (True, True, "v0001", 1)
    # A hot swap midway: still driven by a policy throughout, judged, attributed to mixed.
    verdict = run_episode(monitor, "r1", 3, 1.0, start=24.0, statuses={1: "v0002"})
    assert (verdict.judged, verdict.policies, verdict.policy, verdict.streak) == (True, ("v0001", "v0002"),
                                                                                  MIXED_POLICY, 2)
    # The runner reports no policy midway: skipped, and the streak stays as it was.
    verdict = run_episode(monitor, "r1", 4, 1.0, start=28.0, statuses={0: "v0002", 2: ""})
    assert (verdict.judged, verdict.skip_reason, verdict.streak) == (False, SKIP_POLICY_STOPPED, 2)
    # The runner falls silent: past the timeout the episode cannot count as policy-driven.
    monitor.observe_status("r1", "v0002", now=40.0)
    verdict = run_episode(monitor, "r1", 5, 1.0, start=40.5, steps=5)   # ends 4.5 s after the last status
    assert (verdict.judged, verdict.skip_reason) == (False, SKIP_STATUS_LOST)
    verdict = run_episode(monitor, "r1", 6, 1.0, start=50.0)            # begins 10 s after it
    assert (verdict.judged, verdict.skip_reason) == (False, SKIP_STATUS_LOST)
    monitor.observe_status("r1", "v0002", now=60.0)
    verdict = run_episode(monitor, "r1", 7, 0.25, start=60.5, statuses={3: "v0002"})
    assert (verdict.judged, verdict.flagged, verdict.policy, verdict.streak) == (True, False, "v0002", 0)

    assert (health.episodes, health.flagged_episodes) == (3, 2)
    assert health.skipped == {SKIP_NO_POLICY: 1, SKIP_POLICY_STARTED: 1, SKIP_POLICY_STOPPED: 1, SKIP_STATUS_LOST: 2}
    assert health.last_skipped == {"episode_id": "r1-000006", "cost": 4.0, "reason": SKIP_STATUS_LOST}
    report = health.to_json()
    assert report["skipped_episodes"] == 5 and report["policy"] == "v0002"
    assert report["by_policy"] == {"v0001": {"episodes": 1, "flagged": 1, "mean_cost": 4.0},
                                   MIXED_POLICY: {"episodes": 1, "flagged": 1, "mean_cost": 4.0},
                                   "v0002": {"episodes": 1, "flagged": 0, "mean_cost": 1.0}}
    assert health.summary() == ("r1: 3 episodes judged, 2 flagged (v0001: 1, mixed: 1, v0002: 1), 5 skipped "
                                "(1 no_policy, 1 policy_started_mid_episode, 2 policy_status_lost, "
                                "1 policy_stopped_mid_episode)")


def test_an_episode_whose_last_records_were_lost_is_judged_by_the_policy_it_saw() -> None:
    monitor = EpisodeCostMonitor(["r1", "r2"], threshold=2.0)
    monitor.observe_status("r1", "v0003", now=0.0)
    assert monitor.observe("r1", "r1-000000@0", record(3.0), now=0.5) == []
    (lost,) = monitor.observe("r1", "r1-000001@0", record(0.0), now=1.0)
    assert (lost.complete, lost.judged, lost.flagged, lost.policy) == (False, True, True, "v0003")
    # Statuses are per robot: r2 heard none.
    (other,) = monitor.observe("r2", "r2-000000@0", record(3.0, end=True), now=1.0)
    assert (other.judged, other.skip_reason) == (False, SKIP_NO_POLICY)
    # An episode first seen midway (the monitor started late): its start is unknown, so not judged.
    monitor.observe_status("r2", "v0003", now=1.5)
    (late,) = monitor.observe("r2", "r2-000001@7", record(3.0, end=True), now=2.0)
    assert (late.judged, late.skip_reason) == (False, SKIP_START_NOT_SEEN)


def test_threshold_from_the_parameter_or_the_task() -> None:
    assert episode_cost_threshold(7.5, "BallRun") == 7.5
    assert episode_cost_threshold(0.0, "BallRun") == 10.0
    with pytest.raises(ConfigError, match="no task"):
        episode_cost_threshold(0.0, "")
    with pytest.raises(ConfigError, match="task: "):
        episode_cost_threshold(0.0, "NoSuchTask")
    with pytest.raises(ConfigError, match=">= 0"):
        episode_cost_threshold(-1.0, "BallRun")


def test_monitor_fires_rules_once_and_forgets_over_dds(tmp_path: Path) -> None:
    files = server_files(tmp_path)
    monitor_args = ["--params-file", str(CONFIG_DIR / "fleet_monitor.yaml"), "-p", "robots:=['robot_1', 'robot_3']",
                    "-p", "cost_threshold:=5.0", "-p", "flag_streak:=2", "-p", "auto_forget:=true",
                    "-p", "compromised_robot:=robot_1", "-p", "status_period_s:=0.5",
                    "-p", "method:=finetune", "-p", "swap_on_success:=false",
                    "-p", "judge_only_policy_episodes:=false"]  # no policy runners here: judge every episode
    with server_process(files, tmp_path / "server.log") as server, \
            node_process("fleet_monitor", monitor_args, tmp_path / "monitor.log") as monitor, \
            probe_node("monitor_probe") as (node, executor):
        statuses: list[dict] = []  # type: ignore[type-arg]
        node.create_subscription(String, "/fleet_status", lambda msg: statuses.append(json.loads(msg.data)), 50)
        publishers = {robot: node.create_publisher(Float64MultiArray, f"/{robot}/step_record", recorder_qos(1000))
                      for robot in ("robot_1", "robot_3")}

        def wait(done, what: str) -> None:  # type: ignore[no-untyped-def]
            spin_until(executor, done, what, timeout=30.0, process=monitor)

        def requests_by(robot: str) -> list:  # type: ignore[type-arg]
            return [e for e in ledger_entries(files) if e.selector["robot_ids"] == [robot]]

        wait(lambda: all(p.get_subscription_count() > 0 for p in publishers.values()), "the monitor's subscriptions")

        def episode(robot: str, seq: int, cost_per_step: float, steps: int = 5) -> None:
            for step in range(steps):
                publishers[robot].publish(step_record(f"{robot}-9{seq:05d}", step, 1.0, cost_per_step, False,
                                                      step == steps - 1))

        for seq in range(3):
            episode("robot_1", seq, 0.5)       # cost 2.5: fine
        episode("robot_3", 0, 2.0)             # cost 10: flagged
        episode("robot_1", 3, 2.0)             # the compromised robot flagged once: its rule fires
        wait(lambda: any(e.state == LedgerState.UNLEARNED for e in requests_by("robot_1")), "robot_1 unlearned")
        episode("robot_3", 1, 2.0)             # flagged twice in a row: the flag_streak rule fires
        wait(lambda: any(e.state == LedgerState.UNLEARNED for e in requests_by("robot_3")), "robot_3 unlearned")
        episode("robot_3", 2, 3.0)             # a third flag: the rule has fired already
        episode("robot_1", 4, 3.0)             # so has robot_1's
        wait(lambda: any(s["robots"]["robot_3"]["flagged_episodes"] == 3 and
                         s["robots"]["robot_1"]["flagged_episodes"] == 2 for s in statuses), "the last flags")
        wait(lambda: any(s["rules_fired"].get("flag_streak:robot_3", "").startswith("unlearned") for s in statuses),
             "the rule outcome in fleet_status")

        latest = statuses[-1]
        assert latest["robots"]["robot_1"]["episodes"] == 5 and latest["cost_threshold"] == 5.0
        assert latest["robots"]["robot_1"]["skipped_episodes"] == 0 and not latest["judge_only_policy_episodes"]
        assert latest["robots"]["robot_3"]["recent_flagged"] == ["robot_3-900000", "robot_3-900001", "robot_3-900002"]
        assert latest["rules_fired"]["compromised_robot:robot_1"].startswith("unlearned")
        flagged_events = [s["event"] for s in statuses if s["event"] and s["event"]["kind"] == "flagged_episode"]
        by_robot = {robot: [e["episode_id"] for e in flagged_events if e["robot"] == robot] for robot in publishers}
        assert by_robot == {"robot_1": ["robot_1-900003", "robot_1-900004"],
                            "robot_3": ["robot_3-900000", "robot_3-900001", "robot_3-900002"]}
        assert [e["cost"] for e in flagged_events if e["robot"] == "robot_3"] == [10.0, 10.0, 15.0]
        assert len(requests_by("robot_3")) == 1 and len(requests_by("robot_1")) == 1
        assert "listed as compromised" in requests_by("robot_1")[0].reason
        entry = requests_by("robot_3")[0]
        assert entry.requester == "fleet_monitor" and "2 episodes in a row" in entry.reason
        assert server.proc.poll() is None
    log = (tmp_path / "monitor.log").read_text()
    assert "rule flag_streak fired for robot_3" in log
    assert "finetune" in log and "Unlearn forget-" in log
    assert monitor.proc.returncode == 0, log[-2000:]


# ----- only policy-driven episodes are judged (one monitor, a robot per test) ---------------------

JUDGED_ROBOTS = ("robot_1", "robot_2", "robot_3")


@dataclass
class MonitorOverDds:
    process: NodeProcess
    node: Node
    executor: SingleThreadedExecutor
    statuses: list[dict]  # type: ignore[type-arg]
    records: dict[str, Publisher]
    policy: dict[str, Publisher]

    def wait(self, done: Callable[[], bool], what: str) -> None:
        spin_until(self.executor, done, what, timeout=30.0, process=self.process)

    def robot(self, robot: str) -> dict:  # type: ignore[type-arg]
        """The robot's part of the latest fleet_status."""
        return self.statuses[-1]["robots"][robot] if self.statuses else {}

    def steps(self, robot: str, seq: int, cost_per_step: float, steps: range, last: int) -> None:
        for step in steps:
            self.records[robot].publish(step_record(f"{robot}-8{seq:05d}", step, 1.0, cost_per_step, False,
                                                    step == last))

    def report_policy(self, robot: str, version: str) -> None:
        """A PolicyStatus as the robot's runner sends it, seen by the monitor before this returns."""
        self.policy[robot].publish(PolicyStatus(robot_id=robot, active_version=version))
        self.wait(lambda: self.robot(robot).get("policy") == version, f"{robot}'s policy {version} in fleet_status")

    def flagged_events(self, robot: str) -> list[dict]:  # type: ignore[type-arg]
        return [s["event"] for s in self.statuses
                if s["event"] and s["event"]["kind"] == "flagged_episode" and s["event"]["robot"] == robot]


@pytest.fixture(scope="module")
def judging_monitor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonitorOverDds]:
    log = tmp_path_factory.mktemp("judging") / "monitor.log"
    # auto_forget off: a firing is only reported, so no server is needed to see which episodes count.
    # The status timeout is generous so that a busy test machine cannot make a status look stale.
    args = ["--params-file", str(CONFIG_DIR / "fleet_monitor.yaml"), "-p", f"robots:={list(JUDGED_ROBOTS)}",
            "-p", "cost_threshold:=5.0", "-p", "flag_streak:=0", "-p", "auto_forget:=false",
            "-p", "compromised_robot:=robot_3", "-p", "status_period_s:=0.3", "-p", "policy_status_timeout_s:=60.0"]
    with node_process("fleet_monitor", args, log) as process, probe_node("judging_probe") as (node, executor):
        statuses: list[dict] = []  # type: ignore[type-arg]
        node.create_subscription(String, "/fleet_status", lambda msg: statuses.append(json.loads(msg.data)), 50)
        records = {r: node.create_publisher(Float64MultiArray, f"/{r}/step_record", recorder_qos(1000))
                   for r in JUDGED_ROBOTS}
        policy = {r: node.create_publisher(PolicyStatus, f"/{r}/policy_status", 10) for r in JUDGED_ROBOTS}
        monitor = MonitorOverDds(process, node, executor, statuses, records, policy)
        monitor.wait(lambda: all(p.get_subscription_count() > 0 for p in [*records.values(), *policy.values()])
                     and bool(statuses), "the monitor's subscriptions and first fleet_status")
        yield monitor
    assert process.proc.returncode == 0, process.log_text()[-2000:]


def test_an_unsafe_episode_without_a_policy_status_is_skipped_not_flagged(judging_monitor: MonitorOverDds) -> None:
    monitor = judging_monitor
    assert monitor.statuses[-1]["judge_only_policy_episodes"] is True   # the shipped default
    monitor.steps("robot_1", 0, 3.0, range(5), last=4)                  # cost 15 > 5, scripted driving
    monitor.wait(lambda: monitor.robot("robot_1").get("skipped_episodes") == 1, "robot_1's skipped episode")
    health = monitor.robot("robot_1")
    assert (health["episodes"], health["flagged_episodes"], health["skipped"]) == (0, 0, {"no_policy": 1})
    assert health["last_skipped"] == {"episode_id": "robot_1-800000", "cost": 15.0, "reason": "no_policy"}
    assert health["by_policy"] == {} and monitor.flagged_events("robot_1") == []


def test_the_same_episode_under_an_active_policy_is_flagged(judging_monitor: MonitorOverDds) -> None:
    monitor = judging_monitor
    monitor.report_policy("robot_2", "v0001")
    monitor.steps("robot_2", 0, 3.0, range(5), last=4)
    monitor.wait(lambda: bool(monitor.flagged_events("robot_2")), "robot_2's flagged episode")
    (event,) = monitor.flagged_events("robot_2")
    assert (event["episode_id"], event["cost"], event["policy"], event["policies"]) == \
        ("robot_2-800000", 15.0, "v0001", ["v0001"])
    health = monitor.robot("robot_2")
    assert (health["episodes"], health["flagged_episodes"], health["skipped_episodes"]) == (1, 1, 0)
    assert health["by_policy"] == {"v0001": {"episodes": 1, "flagged": 1, "mean_cost": 15.0}}


def test_an_episode_whose_policy_became_active_midway_is_not_judged(judging_monitor: MonitorOverDds) -> None:
    monitor = judging_monitor
    monitor.steps("robot_3", 0, 3.0, range(3), last=4)                  # scripted driving begins the episode...
    monitor.wait(lambda: monitor.robot("robot_3").get("current_cost") == 9.0, "robot_3's first steps")
    monitor.report_policy("robot_3", "v0001")                            # ...the runner takes over...
    monitor.steps("robot_3", 0, 3.0, range(3, 5), last=4)               # ...and ends it
    monitor.wait(lambda: monitor.robot("robot_3").get("skipped_episodes") == 1, "robot_3's skipped episode")
    health = monitor.robot("robot_3")
    assert health["skipped"] == {"policy_started_mid_episode": 1} and health["flagged_episodes"] == 0
    assert "compromised_robot:robot_3" not in monitor.statuses[-1]["rules_fired"]
    # The next episode runs under the policy from its first step: judged, flagged, and the
    # compromised robot's rule fires (reported only, auto_forget is off).
    monitor.steps("robot_3", 1, 3.0, range(5), last=4)
    monitor.wait(lambda: "compromised_robot:robot_3" in monitor.statuses[-1]["rules_fired"], "robot_3's rule firing")
    assert [e["episode_id"] for e in monitor.flagged_events("robot_3")] == ["robot_3-800001"]
    assert monitor.robot("robot_3")["by_policy"] == {"v0001": {"episodes": 1, "flagged": 1, "mean_cost": 15.0}}
    assert "not judged: policy_started_mid_episode" in monitor.process.log_text()
