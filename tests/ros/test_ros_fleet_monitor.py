"""fleet_monitor: episode cost bookkeeping (no ROS), and the node over DDS firing its forget rules
against an unlearning server whose job is the edge stand-in of tests/ros/unlearning_server_double.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from std_msgs.msg import Float64MultiArray, String

from saferule_core.data.ledger import LedgerState
from saferule_ros.conversions import step_record
from saferule_ros.fleet_monitor import EpisodeCostMonitor, episode_cost_threshold
from saferule_ros.params import ConfigError
from saferule_ros.topics import recorder_qos
from tests.ros.forget_fixtures import server_files
from tests.ros.ros_harness import CONFIG_DIR, node_process, probe_node, spin_until
from tests.ros.unlearning_harness import ledger_entries, server_process

pytestmark = pytest.mark.ros


def record(cost: float, end: bool = False) -> np.ndarray:
    return np.array([1.0, cost, 0.0, 1.0 if end else 0.0])


def test_episode_costs_flags_and_streaks() -> None:
    monitor = EpisodeCostMonitor(["r1"], threshold=2.0)
    assert monitor.observe("r1", "r1-000000@0", record(1.0)) == []
    (verdict,) = monitor.observe("r1", "r1-000000@1", record(1.5, end=True))
    assert (verdict.episode_id, verdict.cost, verdict.steps, verdict.flagged, verdict.streak) == \
        ("r1-000000", 2.5, 2, True, 1)
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
                    "-p", "method:=finetune", "-p", "swap_on_success:=false"]
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
    assert "suppress" in log and "Unlearn forget-" in log
    assert monitor.proc.returncode == 0, log[-2000:]
