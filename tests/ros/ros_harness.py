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
from rclpy.publisher import Publisher
from std_msgs.msg import Float32MultiArray, Float64MultiArray

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


@dataclass
class RobotTopics:
    """Publishers of one robot's recorded topics (what its sim_robot publishes), on a test-side node."""

    observation: Publisher
    applied_action: Publisher
    step_record: Publisher

    @staticmethod
    def create(node: Node, robot: str) -> RobotTopics:
        from saferule_ros.topics import recorder_qos

        qos = recorder_qos(1000)   # a reliable history deep enough for a whole burst
        return RobotTopics(node.create_publisher(Float32MultiArray, f"/{robot}/observation", qos),
                           node.create_publisher(Float32MultiArray, f"/{robot}/applied_action", qos),
                           node.create_publisher(Float64MultiArray, f"/{robot}/step_record", qos))

    def subscribed(self) -> bool:
        return all(p.get_subscription_count() > 0 for p in (self.observation, self.applied_action, self.step_record))

    def publish_episode(self, episode_id: str, steps: int, seed: int = 0) -> int:
        """A BallRun-shaped episode of `steps` steps as one burst; returns the number of messages."""
        import numpy as np

        from saferule_ros.conversions import float32_array, step_record
        from saferule_ros.topics import step_key

        rng = np.random.default_rng(seed)
        observations = rng.normal(size=(steps + 1, 7)).astype(np.float32)
        actions = rng.uniform(-1, 1, size=(steps, 2)).astype(np.float32)
        for t in range(steps):
            self.observation.publish(float32_array(observations[t], step_key(episode_id, t)))
            self.applied_action.publish(float32_array(actions[t], step_key(episode_id, t)))
            self.step_record.publish(step_record(episode_id, t, float(rng.normal()), 0.0, False, t == steps - 1))
        self.observation.publish(float32_array(observations[steps], step_key(episode_id, steps)))
        return 3 * steps + 1
