"""`python -m saferule_ros.bringup up`: the whole node set as processes, stopped by Ctrl-C, and a
node that dies taking the fleet down with a non-zero exit status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from saferule_ros.bringup import FleetArgs, fleet_nodes
from tests.ros.ros_harness import REPO_ROOT

pytestmark = pytest.mark.ros

WAIT_S = 90.0


class Fleet:
    """`bringup up --robots 1` with its output collected line by line."""

    def __init__(self, data_root: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "saferule_ros.bringup", "up", "--robots", "1", "--data-root", str(data_root),
             "--compromised-robot", ""],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.labels = [spec.label for spec in fleet_nodes(FleetArgs(robots=1, data_root=str(data_root),
                                                                    compromised_robot=""))]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_until_every_node_spoke(self) -> None:
        deadline = time.monotonic() + WAIT_S
        while not all(any(line.startswith(f"[{label}] ") for line in self.lines) for label in self.labels):
            assert self.proc.poll() is None, f"bringup exited early ({self.proc.returncode}):\n{self.text()}"
            assert time.monotonic() < deadline, f"not every node started within {WAIT_S:g} s:\n{self.text()}"
            time.sleep(0.2)

    def wait(self) -> int:
        try:
            status = self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.reader.join(timeout=10)
        return status

    def children(self) -> dict[int, list[bytes]]:
        """bringup's own child processes: pid -> command line."""
        found = {}
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                found[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return found

    def child_pid(self, module: str) -> int:
        """The pid of the child running `python -m <module>`."""
        for pid, cmdline in self.children().items():
            if module.encode() in cmdline:
                return pid
        raise AssertionError(f"no child runs {module}")

    def kill(self) -> None:
        """After a failed test: bringup and the nodes it started (they run in their own sessions)."""
        if self.proc.poll() is None:
            pids = list(self.children())
            self.proc.kill()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_up_starts_every_node_and_ctrl_c_stops_them_all(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    try:
        fleet.wait_until_every_node_spoke()
        assert "created signing key pair" in fleet.text()
        fleet.proc.send_signal(signal.SIGINT)
        assert fleet.wait() == 0, fleet.text()
    finally:
        fleet.kill()
    text = fleet.text()
    assert "[bringup] stopping" in text
    # every node went through its own shutdown (its closing log line), none was killed
    assert "[robot_1/sim_robot] " in text and "safe-stop steps" in text
    assert "[recorder] " in text and "stopped:" in text
    assert "did not stop within" not in text


def test_up_exits_non_zero_when_a_node_dies(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    try:
        fleet.wait_until_every_node_spoke()
        os.kill(fleet.child_pid("saferule_ros.sim_robot"), signal.SIGKILL)
        assert fleet.wait() == 1, fleet.text()
    finally:
        fleet.kill()
    assert "robot_1/sim_robot exited with status -9; stopping the fleet" in fleet.text()
