"""A stand-in unlearning server for the interface contract test (issue: foundation).

It speaks the real saferule_interfaces over Fast DDS in its own process, but does no
unlearning: it answers Forget from a fixed episode table and runs a scripted Unlearn job with
feedback. Run as `python -m tests.ros.contract_server`; it prints READY once serving.
"""

from __future__ import annotations

import time
import uuid

import rclpy
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from saferule_interfaces.action import Unlearn
from saferule_interfaces.msg import Metric
from saferule_interfaces.srv import Forget

EPISODES = {"ep-0001": "robot_1", "ep-0002": "robot_2", "ep-0003": "robot_2"}
STAGES = ("suppress", "repair", "select", "export")


class ContractServer(Node):
    def __init__(self) -> None:
        super().__init__("contract_server")
        group = ReentrantCallbackGroup()
        self.requests: dict[str, list[str]] = {}
        self.create_service(Forget, "forget", self.on_forget, callback_group=group)
        ActionServer(self, Unlearn, "unlearn", execute_callback=self.execute, callback_group=group,
                     goal_callback=lambda _goal: GoalResponse.ACCEPT,
                     cancel_callback=lambda _goal: CancelResponse.ACCEPT)

    def on_forget(self, request: Forget.Request, response: Forget.Response) -> Forget.Response:
        sel = request.selector
        matched = [ep for ep, robot in EPISODES.items()
                   if (not sel.episode_ids or ep in sel.episode_ids)
                   and (not sel.robot_ids or robot in sel.robot_ids)]
        if not (sel.episode_ids or sel.robot_ids):
            response.accepted, response.message = False, "empty selector"
            return response
        response.matched_episode_ids = matched
        response.matched_transitions = 100 * len(matched)
        response.accepted = bool(matched)
        if matched and not request.dry_run:
            response.request_id = f"fr-{uuid.uuid4().hex[:8]}"
            self.requests[response.request_id] = matched
        response.message = f"{len(matched)} episodes matched" if matched else "selector matched nothing"
        return response

    def execute(self, goal_handle) -> Unlearn.Result:  # type: ignore[no-untyped-def]
        result = Unlearn.Result()
        if goal_handle.request.request_id not in self.requests:
            goal_handle.abort()
            result.message = f"unknown request id {goal_handle.request.request_id!r}"
            return result
        for i, stage in enumerate(STAGES):
            feedback = Unlearn.Feedback(stage=stage, progress=(i + 1) / len(STAGES),
                                        metrics=[Metric(name="step", value=float(i))])
            goal_handle.publish_feedback(feedback)
            time.sleep(0.05)
        goal_handle.succeed()
        result.success = True
        result.new_policy_version = "v0002"
        result.parent_policy_version = "v0001"
        result.message = f"forgot {len(self.requests[goal_handle.request.request_id])} episodes"
        return result


def main() -> None:
    rclpy.init()
    node = ContractServer()
    executor = MultiThreadedExecutor()
    executor.add_node(node)
    print("READY", flush=True)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
