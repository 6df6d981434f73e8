"""kill -9 of a policy runner while it swaps to a new version: the restarted runner comes back on the
registry's latest version and drives; the registry is untouched."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest
from std_msgs.msg import Float32MultiArray

from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.artifacts.signing import load_verify_key
from saferule_interfaces.msg import PolicyStatus
from saferule_ros.conversions import float32_array, label_of
from saferule_ros.topics import STREAM_QOS
from tests.ros.policy_artifacts import make_keys, publish, random_policy
from tests.ros.ros_harness import CONFIG_DIR, node_process, probe_node, spin_until

pytestmark = pytest.mark.ros

NS = "/crash_runner"
# seconds between publishing the next version and the kill: the runner polls `latest` every 0.2 s,
# then verifies and builds the new session in its watch thread, so these land before, during and
# after the swap
KILL_DELAYS_S = (0.05, 0.2, 0.3, 0.45, 0.8)


def test_a_runner_killed_mid_swap_comes_back_on_the_registrys_latest_version(tmp_path: Path) -> None:
    key = make_keys(tmp_path / "keys")
    registry = PolicyRegistry(tmp_path / "registry")
    assert publish(registry, random_policy(1), key) == "v0001"
    ros_args = ["--params-file", str(CONFIG_DIR / "policy_runner.yaml"), "-p", f"registry_dir:={registry.root}",
                "-p", f"verify_key:={tmp_path / 'keys'}", "-p", "watch_period_s:=0.2", "-p", "status_period_s:=0.2",
                "-r", f"__ns:={NS}"]
    with probe_node("crash_runner_probe") as (node, executor):
        statuses: list[PolicyStatus] = []
        actions: list[str] = []
        node.create_subscription(PolicyStatus, f"{NS}/policy_status", statuses.append, 10)
        node.create_subscription(Float32MultiArray, f"{NS}/action", lambda m: actions.append(label_of(m)), 50)
        observations = node.create_publisher(Float32MultiArray, f"{NS}/observation", STREAM_QOS)
        step = [0]

        def drive() -> None:   # a robot's observation stream at 50 Hz
            step[0] += 1
            observations.publish(float32_array(np.full(7, 0.1 * np.sin(step[0] / 10), dtype=np.float32),
                                               f"crash-000000@{step[0]}"))

        node.create_timer(0.02, drive)
        for attempt, delay in enumerate(KILL_DELAYS_S):
            current = registry.latest()
            with node_process("policy_runner", ros_args, tmp_path / f"runner-{attempt}.log") as runner:
                statuses.clear()
                spin_until(executor, lambda current=current: bool(statuses) and statuses[-1].active_version == current,
                           f"the runner on {current}", process=runner)
                new = publish(registry, random_policy(10 + attempt), key)
                deadline = time.monotonic() + delay
                spin_until(executor, lambda deadline=deadline: time.monotonic() >= deadline, "the kill moment",
                           process=runner)
                runner.proc.send_signal(signal.SIGKILL)
                assert runner.proc.wait(timeout=10) == -signal.SIGKILL
            # the registry holds every version whole and signed; nothing of the swap is on disk
            for version in registry.versions():
                registry.load(version, load_verify_key(tmp_path / "keys"))
            with node_process("policy_runner", ros_args, tmp_path / f"restart-{attempt}.log") as restarted:
                statuses.clear()
                spin_until(executor, lambda new=new: bool(statuses) and statuses[-1].active_version == new,
                           f"the restarted runner on {new}", process=restarted)
                seen = len(actions)
                spin_until(executor, lambda seen=seen: len(actions) > seen + 10, "actions from the restarted runner",
                           process=restarted)
            assert restarted.proc.returncode == 0, restarted.log_text()[-2000:]
