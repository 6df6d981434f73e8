"""Client side of the fleet's services: Forget, Unlearn, SwapPolicy (used by fleet_cli, fleet_monitor
and the unlearning server's swaps).

How a call waits is up to the caller: a command-line tool spins its own executor until the answer
is there (`spinning_waiter`); a node whose executor already spins in other threads waits on an
event from a worker thread (`event_waiter`). No answer in time raises `FleetCallError`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from action_msgs.msg import GoalStatus
from rclpy.action import ActionClient
from rclpy.action.client import ClientGoalHandle
from rclpy.callback_groups import CallbackGroup
from rclpy.executors import Executor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.task import Future

from saferule_core.errors import SafeRuleError
from saferule_interfaces.action import Unlearn
from saferule_interfaces.srv import Forget, SwapPolicy
from saferule_ros.topics import SWAP_POLICY_SERVICE, recorder_qos

Waiter = Callable[[Future, float], bool]
FeedbackFn = Callable[[Unlearn.Feedback], None]

DEFAULT_FORGET_SERVICE = "/forget"
# A client's queue of replies. With Fast DDS it also receives the replies meant for the service's
# other clients, so a burst of answers to several clients at once overflowed ROS's default of 10
# and lost some of ours (measured: 3-11 of 40 busy answers to 5 clients).
REPLY_QUEUE_DEPTH = 256
DEFAULT_UNLEARN_ACTION = "/unlearn"
STATUS_NAMES: dict[int, str] = {
    GoalStatus.STATUS_UNKNOWN: "unknown", GoalStatus.STATUS_ACCEPTED: "accepted",
    GoalStatus.STATUS_EXECUTING: "executing", GoalStatus.STATUS_CANCELING: "canceling",
    GoalStatus.STATUS_SUCCEEDED: "succeeded", GoalStatus.STATUS_CANCELED: "canceled",
    GoalStatus.STATUS_ABORTED: "aborted",
}


class FleetCallError(SafeRuleError):
    """A service or action server is not there, or did not answer in time."""


def spinning_waiter(executor: Executor) -> Waiter:
    def wait(future: Future, timeout_s: float) -> bool:
        executor.spin_until_future_complete(future, timeout_sec=timeout_s)
        return future.done()
    return wait


def event_waiter(future: Future, timeout_s: float) -> bool:
    """Wait from a non-executor thread for a future that the node's executor completes."""
    finished = threading.Event()
    future.add_done_callback(lambda _f: finished.set())
    return finished.wait(timeout_s) or future.done()


def stoppable_waiter(stop: threading.Event, slice_s: float = 0.5) -> Waiter:
    """`event_waiter` that also gives up (returns False) once `stop` is set: for long waits in a
    node that may be shut down meanwhile."""
    def wait(future: Future, timeout_s: float) -> bool:
        finished = threading.Event()
        future.add_done_callback(lambda _f: finished.set())
        deadline = time.monotonic() + timeout_s
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if finished.wait(min(slice_s, left)):
                return True
        return future.done()
    return wait


def reply_qos() -> QoSProfile:
    """QoS of a service client: ROS's default for services, with a reply queue of REPLY_QUEUE_DEPTH."""
    return recorder_qos(REPLY_QUEUE_DEPTH)


def swap_service_name(robot: str) -> str:
    """"/robot_1/swap_policy" for robot_1 (a namespace, with or without slashes)."""
    return f"/{robot.strip('/')}/{SWAP_POLICY_SERVICE}"


class FleetClient:
    def __init__(self, node: Node, wait: Waiter, forget_service: str = DEFAULT_FORGET_SERVICE,
                 unlearn_action: str = DEFAULT_UNLEARN_ACTION, timeout_s: float = 30.0,
                 callback_group: CallbackGroup | None = None) -> None:
        self.node = node
        self.wait = wait
        self.timeout_s = timeout_s
        self.callback_group = callback_group
        self.unlearn_action = unlearn_action
        self.forget_client = node.create_client(Forget, forget_service, qos_profile=reply_qos(),
                                                callback_group=callback_group)
        self.unlearn_client = ActionClient(node, Unlearn, unlearn_action, callback_group=callback_group,
                                           goal_service_qos_profile=reply_qos(), result_service_qos_profile=reply_qos(),
                                           cancel_service_qos_profile=reply_qos())
        self._swap_clients: dict[str, Any] = {}

    def _answer(self, future: Future, what: str, timeout_s: float | None = None) -> Any:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if not self.wait(future, timeout):
            future.cancel()
            raise FleetCallError(f"no answer from {what} within {timeout:g} s")
        return future.result()

    # ----- Forget ----------------------------------------------------------------------------
    def forget(self, request: Forget.Request) -> Forget.Response:
        name = self.forget_client.srv_name
        if not self.forget_client.wait_for_service(timeout_sec=self.timeout_s):
            raise FleetCallError(f"no Forget service {name} (is the unlearning server running, on this ROS_DOMAIN_ID?)")
        return self._answer(self.forget_client.call_async(request), f"the Forget service {name}")

    # ----- Unlearn -------------------------------------------------------------------------
    def send_unlearn(self, goal: Unlearn.Goal, on_feedback: FeedbackFn | None = None) -> ClientGoalHandle:
        if not self.unlearn_client.wait_for_server(timeout_sec=self.timeout_s):
            raise FleetCallError(f"no Unlearn action server {self.unlearn_action} (is the unlearning server running?)")
        if on_feedback is not None:
            self._await_feedback_publisher()
        callback = (lambda msg: on_feedback(msg.feedback)) if on_feedback is not None else None
        handle: ClientGoalHandle = self._answer(self.unlearn_client.send_goal_async(goal, feedback_callback=callback),
                                                "the Unlearn action server")
        if not handle.accepted:
            raise FleetCallError("the Unlearn goal was rejected (the server's queue is full; see its log)")
        return handle

    def _await_feedback_publisher(self) -> None:
        """Feedback is volatile: a goal sent before the server's feedback publisher is discovered
        would lose its first messages. The services being up does not imply it (separate endpoints)."""
        topic = self.node.resolve_topic_name(f"{self.unlearn_action}/_action/feedback")
        deadline = time.monotonic() + self.timeout_s
        while self.node.count_publishers(topic) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)

    def unlearn_result(self, handle: ClientGoalHandle, timeout_s: float) -> tuple[str, Unlearn.Result]:
        """(final status name, result) of an accepted goal."""
        answer = self._answer(handle.get_result_async(), "the Unlearn action server (result)", timeout_s)
        return STATUS_NAMES.get(answer.status, str(answer.status)), answer.result

    def cancel(self, handle: ClientGoalHandle) -> bool:
        response = self._answer(handle.cancel_goal_async(), "the Unlearn action server (cancel)")
        return bool(response.goals_canceling)

    # ----- SwapPolicy ------------------------------------------------------------------------
    def swap_client(self, robot: str) -> Any:
        client = self._swap_clients.get(robot)
        if client is None:
            client = self.node.create_client(SwapPolicy, swap_service_name(robot), qos_profile=reply_qos(),
                                             callback_group=self.callback_group)
            self._swap_clients[robot] = client
        return client

    def swap(self, robot: str, version: str = "", artifact_path: str = "",
             timeout_s: float | None = None) -> SwapPolicy.Response:
        client = self.swap_client(robot)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if not client.wait_for_service(timeout_sec=timeout):
            raise FleetCallError(f"no {swap_service_name(robot)} service (is {robot}'s policy_runner running?)")
        return self._answer(client.call_async(SwapPolicy.Request(version=version, artifact_path=artifact_path)),
                            swap_service_name(robot), timeout)

    def swap_all(self, robots: list[str], version: str, timeout_s: float) -> dict[str, SwapPolicy.Response | str]:
        """Ask every robot's runner to swap to `version`, requests sent together; per robot the
        answer, or a string saying why there is none."""
        outcomes: dict[str, SwapPolicy.Response | str] = {}
        pending: dict[str, Future] = {}
        for robot in robots:
            client = self.swap_client(robot)
            if not client.wait_for_service(timeout_sec=timeout_s):
                outcomes[robot] = f"no {swap_service_name(robot)} service"
                continue
            pending[robot] = client.call_async(SwapPolicy.Request(version=version))
        deadline = time.monotonic() + timeout_s
        for robot, future in pending.items():
            if self.wait(future, max(0.0, deadline - time.monotonic())):
                outcomes[robot] = future.result()
            else:
                self.swap_client(robot).remove_pending_request(future)
                outcomes[robot] = f"no answer within {timeout_s:g} s"
        return {robot: outcomes[robot] for robot in robots}

    def destroy(self) -> None:
        self.unlearn_client.destroy()
