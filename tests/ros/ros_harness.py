"""Helpers for the node tests: a node under test in its own process, a test-side node in its own
rclpy context, and waiting on DDS traffic with a deadline (liveness, never a timing assertion)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "ros2_ws" / "src" / "saferule_ros" / "config"
WAIT_S = 20.0


@dataclass
class NodeProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextmanager
def node_process(module: str, ros_args: list[str], log: Path) -> Iterator[NodeProcess]:
    """`python -m saferule_ros.<module> --ros-args ...` with its output in `log`; SIGINT at exit."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", f"saferule_ros.{module}", "--ros-args", *ros_args],
                                cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    handle = NodeProcess(proc, log)
    try:
        yield handle
    finally:
        handle.stop()


@contextmanager
def probe_node(name: str) -> Iterator[tuple[Node, SingleThreadedExecutor]]:
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        yield node, executor
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)


def spin_until(executor: SingleThreadedExecutor, done: Callable[[], bool], what: str,
               timeout: float = WAIT_S, process: NodeProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if process is not None and process.proc.poll() is not None:
            raise AssertionError(f"node process exited ({process.proc.returncode}) while waiting for {what}:\n"
                                 f"{process.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            tail = f"\nnode log:\n{process.log_text()[-3000:]}" if process is not None else ""
            raise AssertionError(f"no {what} within {timeout:g} s{tail}")
        executor.spin_once(timeout_sec=0.02)


def call(executor: SingleThreadedExecutor, future, what: str, process: NodeProcess | None = None):  # type: ignore[no-untyped-def]
    spin_until(executor, future.done, what, process=process)
    return future.result()
