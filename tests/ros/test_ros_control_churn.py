"""The control loop keeps its period while the DDS graph changes, measured from outside (issue 12, item 2).

A sim_robot and a policy_runner run at 20 Hz; a watcher process records every action's send and
arrival times; meanwhile participants join and leave (a new one every second, each living 3 s,
half of them killed with SIGKILL) and a service server is killed and restarted every third one.
Before the fix a killed subscriber's shared-memory port blocked publish() for up to 1 s at a time
(0.35-1.5 s without actions), and a reliable latest-only subscription could wait seconds for the
repair of one lost sample (see saferule_ros.control_path and topics.LATEST_ONLY_QOS). Asserted: no
gap between consecutive actions longer than two control periods, by send time and by arrival, and
no action lost on the way.

SAFERULE_CONTROL_SHM=1 shows the old transport (the nodes keep shared memory): this test then
failed with 352 ms (7 periods) where it passed with 70-81 ms.
"""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from saferule_core.artifacts.registry import PolicyRegistry
from saferule_ros.action_gaps import MISS_PERIODS, ActionStamps, gap_summary, watching_actions
from saferule_ros.control_path import use_udp_loopback
from saferule_ros.graph_churn import ChurnSettings, graph_churn
from tests.ros.policy_artifacts import make_keys, publish, random_policy
from tests.ros.ros_harness import CONFIG_DIR, node_process

pytestmark = pytest.mark.ros

NS = "/churn_t"
RATE_HZ = 20.0          # 2 periods = 100 ms: far from a loaded 2-core machine's jitter, far below 350 ms
CHURN_S = 15.0
SETTLE_S = 2.0
# What is measured is the DDS graph changing, not the CPU share other work leaves the loop: the
# control processes run above normal priority where the test may raise it (CI runs as root), the
# churn's processes below it (graph_churn). Without it, the gaps left on a machine shared with
# other test runs (load 10-20) were run-queue waits (/proc/<pid>/task/*/schedstat), not DDS.
CONTROL_NICE = -10


def raise_priority(pid: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, pid, CONTROL_NICE)
    except OSError:
        pass


def test_no_action_gap_over_two_periods_while_the_graph_churns(tmp_path: Path) -> None:
    key = make_keys(tmp_path / "keys")
    registry = PolicyRegistry(tmp_path / "registry")
    publish(registry, random_policy(1), key)
    period_s = 1.0 / RATE_HZ
    sim_args = ["--params-file", str(CONFIG_DIR / "sim_robot.yaml"), "-p", f"rate_hz:={RATE_HZ}",
                "-r", f"__ns:={NS}"]
    runner_args = ["--params-file", str(CONFIG_DIR / "policy_runner.yaml"), "-p", f"registry_dir:={registry.root}",
                   "-p", f"verify_key:={tmp_path / 'keys'}", "-p", "follow_latest:=false",
                   "-p", f"deadline_ms:={period_s * 1e3}", "-r", f"__ns:={NS}"]
    with node_process("sim_robot", sim_args, tmp_path / "sim.log") as sim, \
            node_process("policy_runner", runner_args, tmp_path / "runner.log") as runner, \
            watching_actions(f"{NS}/action", tmp_path / "actions.json") as watch:
        for pid in (sim.proc.pid, runner.proc.pid, watch.proc.pid):
            raise_priority(pid)
        watch.wait_ready()
        time.sleep(SETTLE_S)
        began = time.time_ns()
        with graph_churn(ChurnSettings(robot=NS, interval_s=1.0, life_s=3.0, server_every=3)) as churn:
            time.sleep(CHURN_S)
        ended = time.time_ns()
        time.sleep(1.0)
        for node in (sim, runner):
            assert node.proc.poll() is None, node.log_text()[-2000:]
    assert sim.proc.returncode == 0 and runner.proc.returncode == 0

    kills = sum(1 for _, what in churn.events if what == "SIGKILL server")
    assert churn.joiners_started >= 10 and kills >= 3, churn.events
    actions = watch.stamps.window(began, ended)
    summary = actions.summary(period_s)
    print(f"\nactions during {CHURN_S:g} s of churn ({churn.joiners_started} joiners, {kills} server kills): {summary}")
    assert actions.sent.size >= 0.8 * CHURN_S * RATE_HZ, summary
    assert actions.unseen() == 0, summary
    for stamps in ("sent", "arrived"):
        gaps = summary[stamps]
        assert gaps["misses"] == 0 and gaps["longest_gap_periods"] <= MISS_PERIODS, (stamps, summary)


@pytest.mark.parametrize("environ, switched", [
    ({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}, True),
    ({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"}, True),
    ({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}, False),
    ({}, False),
    ({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "SAFERULE_CONTROL_SHM": "1"}, False),
    ({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}, False),
    ({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "FASTDDS_DEFAULT_PROFILES_FILE": "/etc/mine.xml"}, False),
    ({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_STATIC_PEERS": "10.0.0.2"}, False),
])
def test_control_path_takes_udp_on_loopback_only_where_localhost_asks_for_nothing_else(
        environ: dict[str, str], switched: bool) -> None:
    before = dict(environ)
    changes = use_udp_loopback(environ)
    if not switched:
        assert changes == {} and environ == before
        return
    assert environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SYSTEM_DEFAULT"
    profile = ET.parse(environ["FASTDDS_DEFAULT_PROFILES_FILE"]).getroot()

    def texts(tag: str) -> set[str | None]:
        return {element.text for element in profile.iter() if element.tag.rsplit("}", 1)[-1] == tag}
    assert texts("type") == {"UDPv4"} and texts("useBuiltinTransports") == {"false"}
    assert texts("address") == {"127.0.0.1"}
    assert {element.get("name") for element in profile.iter() if element.tag.endswith("interface")} == {"127.0.0.1"}


def test_gap_summary_counts_what_an_outside_watcher_misses() -> None:
    period_ns = 50_000_000
    sent = np.array([0, 1, 2, 3, 8, 9, 10], dtype=np.int64) * period_ns   # one 5-period gap
    gaps = gap_summary(sent, period_ns / 1e9)
    assert gaps.actions == 7 and gaps.misses == 1 and gaps.missed_ticks == 4
    assert gaps.longest_gap_periods == pytest.approx(5.0)
    stamps = ActionStamps(sent, sent + 1000, np.array([1, 2, 3, 4, 6, 7, 8]))
    assert stamps.unseen() == 1
    assert list(stamps.window(3 * period_ns, 9 * period_ns).seq) == [4, 6]


def test_realtime_priority_is_asked_for_only_with_a_valid_priority(capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess
    import sys

    from saferule_ros.control_path import RT_PRIORITY, use_realtime_priority

    assert use_realtime_priority({}) == 0 and use_realtime_priority({RT_PRIORITY: "0"}) == 0
    for bad in ("high", "150", "-3"):
        assert use_realtime_priority({RT_PRIORITY: bad}) == 0
        assert "expected an integer from 1 to 99" in capsys.readouterr().err
    # in a child process (this one stays at normal priority): SCHED_FIFO where the system allows it,
    # else one line on stderr and normal scheduling, never an exception
    probe = ("import os; from saferule_ros.control_path import use_realtime_priority as u; "
             "p = u({'SAFERULE_CONTROL_RT_PRIORITY': '7'}); "
             "print(p, os.sched_getscheduler(0) == os.SCHED_FIFO, os.sched_getparam(0).sched_priority)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    granted, fifo, priority = out.stdout.split()
    if granted == "7":
        assert fifo == "True" and priority == "7"
    else:
        assert granted == "0" and fifo == "False" and "SCHED_FIFO refused" in out.stderr
