"""behaviour_driver with a real sim_robot: it drives the robot until a policy runner reports a policy."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from std_msgs.msg import Float32MultiArray

from saferule_interfaces.msg import PolicyStatus
from saferule_ros.conversions import array_of
from saferule_ros.topics import recorder_qos
from tests.ros.ros_harness import CONFIG_DIR, node_process, probe_node, spin_until

pytestmark = pytest.mark.ros

NS = "/driver_t"


def test_driver_drives_until_a_policy_runs_then_hands_over(tmp_path: Path) -> None:
    sim_args = ["--params-file", str(CONFIG_DIR / "sim_robot.yaml"), "-p", "command_timeout_s:=0.3",
                "-r", f"__ns:={NS}"]
    driver_args = ["-p", "aggressiveness_low:=0.9", "-p", "aggressiveness_high:=1.0", "-r", f"__ns:={NS}"]
    with node_process("sim_robot", sim_args, tmp_path / "sim.log") as sim, \
            node_process("behaviour_driver", driver_args, tmp_path / "driver.log") as driver, \
            probe_node("driver_probe") as (node, executor):
        applied: list[np.ndarray] = []
        node.create_subscription(Float32MultiArray, f"{NS}/applied_action",
                                 lambda m: applied.append(array_of(m).copy()), recorder_qos(500))
        status = node.create_publisher(PolicyStatus, f"{NS}/policy_status", 10)

        # the scripted (reckless) driver pushes the robot: applied actions are its commands, not zeros
        spin_until(executor, lambda: sum(bool(np.any(a != 0)) for a in applied) >= 20, "driven steps",
                   process=driver)
        assert sim.proc.poll() is None

        # a runner reports an active policy: the driver stops commanding, the robot safe-stops
        deadline = time.monotonic() + 20
        while "handing over" not in driver.log_text():
            status.publish(PolicyStatus(robot_id="driver_t", active_version="v0001"))
            executor.spin_once(timeout_sec=0.1)
            assert time.monotonic() < deadline, driver.log_text()
        applied.clear()
        spin_until(executor, lambda: len(applied) >= 30 and all(np.all(a == 0) for a in applied[-20:]),
                   "a safe stop once the driver handed over", process=sim)
    assert driver.proc.returncode == 0
    assert "handed over to v0001" in driver.log_text()


def test_driver_refuses_a_bad_aggressiveness_range(tmp_path: Path) -> None:
    args = ["-p", "aggressiveness_low:=0.8", "-p", "aggressiveness_high:=0.2", "-r", f"__ns:={NS}"]
    with node_process("behaviour_driver", args, tmp_path / "driver.log") as driver:
        driver.proc.wait(timeout=60)
    assert driver.proc.returncode == 2
    assert "aggressiveness range" in driver.log_text()
