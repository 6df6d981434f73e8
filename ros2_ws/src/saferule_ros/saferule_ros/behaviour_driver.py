"""behaviour_driver: drives one robot with a scripted behaviour policy of `saferule_core.collect`
until the robot's policy runner runs a policy, so that the fleet logs data before any policy exists.

Each episode (step 0 of a new episode id on `observation`) draws an aggressiveness uniformly from
[aggressiveness_low, aggressiveness_high] and builds the matching driver (cautious: cost 0; reckless:
over the speed limit and across the boundary); each observation is answered with one action on
`action`, labelled with the observation's step key. Once `policy_status` names an active version
(the runner has a policy), the driver stops commanding for good (`yield_to_policy`), so the two
never fight over the robot for longer than one status period.

Why a separate node rather than the policy runner with an initial artifact: the behaviour family is
scripted numpy, not an ONNX network, and the runner must only ever run signed artifacts.

    python -m saferule_ros.behaviour_driver --ros-args -r __ns:=/robot_1 -p aggressiveness_high:=0.6
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rclpy.node import Node
from std_msgs.msg import Float32MultiArray

from saferule_core.collect.behaviours import BehaviourPolicy, make_behaviour
from saferule_core.errors import SafeRuleError
from saferule_core.tasks.spec import get_task
from saferule_interfaces.msg import PolicyStatus
from saferule_ros.conversions import array_of, float32_array, label_of
from saferule_ros.params import ConfigError, declare_config
from saferule_ros.spin import run_node
from saferule_ros.topics import (
    ACTION_TOPIC,
    LATEST_ONLY_QOS,
    OBSERVATION_TOPIC,
    POLICY_STATUS_TOPIC,
    STREAM_QOS,
    parse_step_key,
    robot_id_from_namespace,
)


@dataclass
class BehaviourDriverConfig:
    task: str = "BallRun"
    aggressiveness_low: float = 0.0
    aggressiveness_high: float = 1.0
    seed: int = 0
    yield_to_policy: bool = True     # stop for good once the policy runner reports an active policy


class BehaviourDriver(Node):
    def __init__(self, node_name: str = "behaviour_driver", **kwargs: object) -> None:
        super().__init__(node_name, **kwargs)  # type: ignore[arg-type]
        cfg = self.config = declare_config(self, BehaviourDriverConfig)
        if not 0.0 <= cfg.aggressiveness_low <= cfg.aggressiveness_high <= 1.0:
            raise ConfigError(f"aggressiveness range must satisfy 0 <= low <= high <= 1, got "
                              f"({cfg.aggressiveness_low}, {cfg.aggressiveness_high})")
        try:
            self.task = get_task(cfg.task)
            make_behaviour(self.task, np.zeros(1), np.random.default_rng(0))  # refuses unsupported tasks
        except SafeRuleError as err:
            raise ConfigError(f"task {cfg.task!r}: {err}") from None
        self.robot_id = robot_id_from_namespace(self.get_namespace())
        self.rng = np.random.default_rng(cfg.seed)
        self.episode_id = ""
        self.driver: BehaviourPolicy | None = None
        self.aggressiveness = float("nan")
        self.commands = self.episodes = 0
        self.yielded_to = ""
        self.action_pub = self.create_publisher(Float32MultiArray, ACTION_TOPIC, STREAM_QOS)
        self.create_subscription(Float32MultiArray, OBSERVATION_TOPIC, self._on_observation, LATEST_ONLY_QOS)
        self.create_subscription(PolicyStatus, POLICY_STATUS_TOPIC, self._on_status, 10)
        self.get_logger().info(f"driving {self.robot_id} ({self.task.name}) with scripted behaviours, "
                               f"aggressiveness in [{cfg.aggressiveness_low:g}, {cfg.aggressiveness_high:g}]")

    def _on_status(self, msg: PolicyStatus) -> None:
        if self.config.yield_to_policy and msg.active_version and not self.yielded_to:
            self.yielded_to = msg.active_version
            self.get_logger().info(f"{self.robot_id}: the policy runner runs {msg.active_version}; handing over "
                                   f"after {self.episodes} episodes and {self.commands} commands")

    def _on_observation(self, msg: Float32MultiArray) -> None:
        if self.yielded_to:
            return
        label = label_of(msg)
        try:
            episode_id, step = parse_step_key(label)
        except ValueError:
            return
        observation = array_of(msg)
        if observation.shape != (self.task.obs_dim,) or not np.isfinite(observation).all():
            return
        if episode_id != self.episode_id or self.driver is None:
            self.episode_id = episode_id
            cfg = self.config
            self.aggressiveness = float(self.rng.uniform(cfg.aggressiveness_low, cfg.aggressiveness_high))
            self.driver = make_behaviour(self.task, np.array([self.aggressiveness]), self.rng)
            self.episodes += 1
        # The scripted drivers count steps from 0 (their burst window is in steps); an observation
        # dropped by the latest-only subscription must not shift that window.
        if hasattr(self.driver, "step"):
            self.driver.step = step
        action = self.driver(observation.reshape(1, -1))[0]
        self.action_pub.publish(float32_array(action, label))
        self.commands += 1

    def close(self) -> None:
        self.get_logger().info(f"{self.robot_id}: {self.episodes} episodes, {self.commands} commands"
                               + (f", handed over to {self.yielded_to}" if self.yielded_to else ""))


def main(args: Sequence[str] | None = None) -> int:
    return run_node(BehaviourDriver, args, threads=2)


if __name__ == "__main__":
    raise SystemExit(main())
