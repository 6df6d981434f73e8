"""Two rclpy nodes, in two processes, exchange Forget and Unlearn over Fast DDS on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import rclpy
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from saferule_interfaces.action import Unlearn
from saferule_interfaces.srv import Forget

pytestmark = pytest.mark.ros


@pytest.fixture
def contract_server(repo_root: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.ros.contract_server"], cwd=repo_root,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    yield proc
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def client_node() -> Iterator[tuple[Node, SingleThreadedExecutor]]:
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node("contract_client", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    yield node, executor
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown(context=context)


def call(executor: SingleThreadedExecutor, future, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    executor.spin_until_future_complete(future, timeout_sec=timeout)
    assert future.done(), "no answer over DDS in time"
    return future.result()


def test_forget_and_unlearn_round_trip(contract_server, client_node) -> None:  # type: ignore[no-untyped-def]
    node, executor = client_node
    forget = node.create_client(Forget, "forget")
    assert forget.wait_for_service(timeout_sec=20.0), "Forget service not discovered on loopback"

    dry = Forget.Request(dry_run=True, reason="audit", requester="pytest")
    dry.selector.robot_ids = ["robot_2"]
    answer = call(executor, forget.call_async(dry))
    assert answer.accepted and answer.request_id == ""
    assert sorted(answer.matched_episode_ids) == ["ep-0002", "ep-0003"]

    nothing = Forget.Request()
    nothing.selector.robot_ids = ["robot_9"]
    answer = call(executor, forget.call_async(nothing))
    assert not answer.accepted and "matched nothing" in answer.message

    real = Forget.Request(reason="compromised", requester="pytest")
    real.selector.robot_ids = ["robot_2"]
    answer = call(executor, forget.call_async(real))
    assert answer.accepted and answer.request_id.startswith("fr-")
    assert answer.matched_transitions == 200

    unlearn = ActionClient(node, Unlearn, "unlearn")
    assert unlearn.wait_for_server(timeout_sec=20.0)
    feedback: list[tuple[str, float]] = []
    goal = Unlearn.Goal(request_id=answer.request_id, method="safe_rule")
    handle = call(executor, unlearn.send_goal_async(
        goal, feedback_callback=lambda msg: feedback.append((msg.feedback.stage, msg.feedback.progress))))
    assert handle.accepted
    result = call(executor, handle.get_result_async()).result
    assert result.success and result.new_policy_version == "v0002"
    assert [stage for stage, _ in feedback] == ["suppress", "repair", "select", "export"]
    assert feedback[-1][1] == pytest.approx(1.0)
    unlearn.destroy()


def test_dds_traffic_went_through_the_loopback_guard() -> None:
    """Under `make test` the guard saw this process's DDS sends, all of them to loopback."""
    log = os.environ.get("SAFERULE_NET_GUARD_LOG")
    if not log:
        pytest.fail("run the suite with `make test`: it preloads the loopback guard")
    ok = Path(log + ".ok")
    deadline = time.monotonic() + 5
    while not ok.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ok.exists(), "the guard saw no loopback traffic: is it preloaded?"
    assert f"pid {os.getpid()}" in ok.read_text()
