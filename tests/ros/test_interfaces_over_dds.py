"""A plain rclpy client in this process and the real unlearning_server node in another exchange
Forget and Unlearn over Fast DDS on loopback: the interface contract as any fleet monitor sees it
(the real job on a tiny model)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import rclpy
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from saferule_core.data.ledger import LedgerState
from saferule_interfaces.action import Unlearn
from saferule_interfaces.srv import Forget
from tests.ros.forget_fixtures import server_files
from tests.ros.unlearning_harness import ledger_entry, server_process

pytestmark = pytest.mark.ros


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


def test_forget_and_unlearn_round_trip(client_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node, executor = client_node
    files = server_files(tmp_path)
    with server_process(files, tmp_path / "server.log") as server:
        forget = node.create_client(Forget, "forget")
        assert forget.wait_for_service(timeout_sec=30.0), "Forget service not discovered on loopback\n" + \
            server.log_text()[-2000:]

        dry = Forget.Request(dry_run=True, reason="audit", requester="pytest")
        dry.selector.robot_ids = ["robot_2"]
        answer = call(executor, forget.call_async(dry))
        assert answer.accepted and answer.request_id == "", answer.message
        assert sorted(answer.matched_episode_ids) == ["robot_2-000000", "robot_2-000001", "robot_2-000002",
                                                      "robot_2-000003"]

        nothing = Forget.Request(reason="audit", requester="pytest")
        nothing.selector.robot_ids = ["robot_9"]
        answer = call(executor, forget.call_async(nothing))
        assert not answer.accepted and "matches none" in answer.message, answer.message

        real = Forget.Request(reason="compromised", requester="pytest")
        real.selector.robot_ids = ["robot_2"]
        answer = call(executor, forget.call_async(real))
        assert answer.accepted and answer.request_id.startswith("forget-"), answer.message
        assert answer.matched_transitions == 4 * 20
        assert ledger_entry(files, answer.request_id).state == LedgerState.QUARANTINED

        unlearn = ActionClient(node, Unlearn, "unlearn")
        assert unlearn.wait_for_server(timeout_sec=20.0)
        feedback: list[tuple[str, float]] = []
        goal = Unlearn.Goal(request_id=answer.request_id, method="safe_rule", requester="pytest", reason="contract")
        handle = call(executor, unlearn.send_goal_async(
            goal, feedback_callback=lambda msg: feedback.append((msg.feedback.stage, msg.feedback.progress))))
        assert handle.accepted
        result = call(executor, handle.get_result_async(), timeout=60.0).result
        assert result.success and result.new_policy_version == "v0002", result.message
        stages = [stage for stage, _ in feedback]
        assert stages[0] == "safe_rule" and "suppress" in stages and "publish" in stages, stages
        assert feedback[-1][1] == pytest.approx(1.0)
        assert ledger_entry(files, answer.request_id).state == LedgerState.UNLEARNED
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
