"""saferule_ros.processes: node specs as supervised processes (real nodes, real signals)."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from saferule_ros.bringup import FleetArgs, NodeSpec, fleet_nodes, prepare_data_root
from saferule_ros.processes import FleetProcesses

pytestmark = pytest.mark.ros

WAIT_S = 60.0


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, label: str, line: str) -> None:
        with self.lock:
            self.lines.append((label, line))

    def of(self, label: str) -> list[str]:
        with self.lock:
            return [line for who, line in self.lines if who == label]

    def wait_for(self, label: str, text: str, processes: FleetProcesses) -> None:
        deadline = time.monotonic() + WAIT_S
        while not any(text in line for line in self.of(label)):
            processes.check_alive()
            assert time.monotonic() < deadline, f"no {text!r} from {label} within {WAIT_S:g} s: {self.of(label)}"
            time.sleep(0.1)


def two_nodes(tmp_path: Path) -> list[NodeSpec]:
    fleet = FleetArgs(robots=1, data_root=str(tmp_path / "fleet"), compromised_robot="")
    prepare_data_root(fleet.layout)
    return [spec for spec in fleet_nodes(fleet) if spec.executable in ("sim_robot", "recorder")]


def test_nodes_run_prefixed_and_stop_cleanly_on_sigint(tmp_path: Path) -> None:
    lines = Lines()
    processes = FleetProcesses(two_nodes(tmp_path), echo=lines, log_dir=tmp_path / "logs")
    try:
        processes.start(["recorder"])          # a subset first (the demo starts its monitor later)
        assert list(processes.nodes) == ["recorder"]
        with pytest.raises(ValueError, match="no node robot_7/sim_robot"):
            processes.start(["robot_7/sim_robot"])
        processes.start()                      # the rest; the recorder is not started twice
        assert sorted(processes.nodes) == ["recorder", "robot_1/sim_robot"]
        lines.wait_for("robot_1/sim_robot", "robot robot_1: task BallRun", processes)
        lines.wait_for("recorder", "recording 3 topics", processes)
        assert processes.exited() == []
    finally:
        statuses = processes.stop()
    assert statuses == {"robot_1/sim_robot": 0, "recorder": 0}
    # SIGINT reached the nodes' shutdown path: each logged its totals on the way out
    assert any("safe-stop steps" in line for line in lines.of("robot_1/sim_robot"))
    assert any("stopped:" in line for line in lines.of("recorder"))
    logged = (tmp_path / "logs" / "robot_1.sim_robot.log").read_text()
    assert "robot robot_1: task BallRun" in logged and "safe-stop steps" in logged


def test_a_node_that_dies_is_reported_with_its_last_output(tmp_path: Path) -> None:
    sim = two_nodes(tmp_path)[0]
    broken = dataclasses.replace(sim, parameters=(*sim.parameters, {"rate_hz": -1.0}))
    lines = Lines()
    with FleetProcesses([broken], echo=lines) as processes:
        deadline = time.monotonic() + WAIT_S
        while not processes.exited():
            assert time.monotonic() < deadline, "the misconfigured node kept running"
            time.sleep(0.1)
        assert processes.exited() == [("robot_1/sim_robot", 2)]
        with pytest.raises(RuntimeError, match=r"(?s)robot_1/sim_robot exited with status 2.*rate_hz"):
            processes.check_alive()


def test_node_names_must_be_unique(tmp_path: Path) -> None:
    sim = two_nodes(tmp_path)[0]
    with pytest.raises(ValueError, match="robot_1/sim_robot"):
        FleetProcesses([sim, sim])
