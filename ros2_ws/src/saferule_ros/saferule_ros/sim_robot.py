"""sim_robot: one simulated robot (a Bullet-Safety-Gym task, PyBullet DIRECT) stepped at a fixed rate.

Each tick applies the last command received on `action` (or a zero action, a safe stop, when none
arrived for `command_timeout_s`), steps the task and publishes `applied_action`, `step_record` and
the new `observation` (layouts in `saferule_ros.topics`). At the end of an episode the final
observation is published, the task is reset and a new episode id `<robot>-<seq>` begins.

Each episode starts from a randomised state: after the reset the simulator takes
`random_start_steps` seeded uniform random actions that are not part of the episode (nothing is
published or recorded for them). The default is the task's start-state perturbation, the one the
offline evaluation uses, so that a cost measured on the fleet and one measured offline describe
the same starts; 0 starts every episode at rest.

    python -m saferule_ros.sim_robot --ros-args --params-file config/sim_robot.yaml -r __ns:=/robot_1
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_msgs.msg import Float32MultiArray, Float64MultiArray

from saferule_core.tasks.envs import make_env
from saferule_ros.control_path import frozen_after_build, use_realtime_priority, use_udp_loopback
from saferule_ros.conversions import array_of, float32_array, step_record
from saferule_ros.params import ConfigError, declare_config
from saferule_ros.spin import run_node
from saferule_ros.topics import (
    ACTION_TOPIC,
    APPLIED_ACTION_TOPIC,
    LATEST_ONLY_QOS,
    OBSERVATION_TOPIC,
    STEP_RECORD_TOPIC,
    STREAM_QOS,
    episode_id_for,
    robot_id_from_namespace,
    step_key,
)


@dataclass
class SimRobotConfig:
    task: str = "BallRun"
    rate_hz: float = 50.0
    seed: int = 0
    robot_id: str = ""              # empty: the node's namespace ("/robot_1" -> "robot_1")
    command_timeout_s: float = 0.2  # no command for this long -> zero action (safe stop)
    max_episode_steps: int = 0      # 0: the task's episode length; otherwise the smaller of the two
    first_episode_seq: int = -1     # episode ids count up from here; -1: the start time in ms, so that a
                                    # restarted robot never repeats an id (below 1000 episodes a second)
    tamper_cost_log: bool = False   # red-team only: step records claim zero cost (a compromised robot's logs)
    random_start_steps: int = -1    # random-action steps before each episode; -1: the task's eval perturbation


class SimRobot(Node):
    def __init__(self, node_name: str = "sim_robot", **kwargs: object) -> None:
        super().__init__(node_name, **kwargs)  # type: ignore[arg-type]
        self.config = declare_config(self, SimRobotConfig)
        cfg = self.config
        if cfg.rate_hz <= 0 or cfg.command_timeout_s <= 0:
            raise ConfigError(f"rate_hz ({cfg.rate_hz}) and command_timeout_s ({cfg.command_timeout_s}) must be > 0")
        if cfg.random_start_steps < -1:
            raise ConfigError(f"random_start_steps must be >= 0, or -1 for the task's, got {cfg.random_start_steps}")
        self.robot_id = cfg.robot_id or robot_id_from_namespace(self.get_namespace())
        self.env = make_env(cfg.task, seed=cfg.seed)
        task_start = self.env.task.eval_random_start_steps
        self.random_start_steps = task_start if cfg.random_start_steps < 0 else cfg.random_start_steps
        self.start_rng = np.random.default_rng([cfg.seed, 0x5747])
        task_len = self.env.task.episode_len
        self.episode_limit = min(cfg.max_episode_steps, task_len) if cfg.max_episode_steps > 0 else task_len
        self.action_low = self.env.action_space.low
        self.action_high = self.env.action_space.high
        self.act_dim = int(self.action_low.size)

        self.obs_pub = self.create_publisher(Float32MultiArray, OBSERVATION_TOPIC, STREAM_QOS)
        self.applied_pub = self.create_publisher(Float32MultiArray, APPLIED_ACTION_TOPIC, STREAM_QOS)
        self.record_pub = self.create_publisher(Float64MultiArray, STEP_RECORD_TOPIC, STREAM_QOS)
        self.create_subscription(Float32MultiArray, ACTION_TOPIC, self._on_action, LATEST_ONLY_QOS)

        self.command: np.ndarray | None = None
        self.command_time = 0.0
        self.stopped = True
        self.ticks = 0
        self.safe_stop_ticks = 0
        self.rejected_commands = 0
        first = cfg.first_episode_seq if cfg.first_episode_seq >= 0 else int(time.time() * 1000)
        self.episode_seq = first - 1
        self._start_episode()
        # A steady-clock timer (immune to system clock jumps). Timer and subscription share the
        # node's default (mutually exclusive) callback group: no locking.
        self.timer = self.create_timer(1.0 / cfg.rate_hz, self._tick, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(f"robot {self.robot_id}: task {self.env.task.name} at {cfg.rate_hz:g} Hz, "
                               f"episodes of {self.episode_limit} steps from {self.random_start_steps} random "
                               f"steps, safe stop after "
                               f"{cfg.command_timeout_s:g} s without commands")

    def _start_episode(self) -> None:
        self.episode_seq += 1
        self.episode_id = episode_id_for(self.robot_id, self.episode_seq)
        self.step = 0
        observation = self.env.reset_randomised(self.random_start_steps, self.start_rng)
        self.obs_pub.publish(float32_array(observation, step_key(self.episode_id, 0)))

    def _on_action(self, msg: Float32MultiArray) -> None:
        action = array_of(msg)
        if action.shape != (self.act_dim,) or not np.isfinite(action).all():
            self.rejected_commands += 1
            self.get_logger().warning(f"ignoring command of shape {action.shape} (expected ({self.act_dim},), "
                                      f"finite)", throttle_duration_sec=5.0)
            return
        self.command = action.copy()
        self.command_time = time.monotonic()

    def _current_action(self) -> np.ndarray:
        fresh = self.command is not None and time.monotonic() - self.command_time <= self.config.command_timeout_s
        if not fresh:
            if not self.stopped and self.command is not None:
                self.get_logger().warning(f"no command for {self.config.command_timeout_s:g} s: safe stop")
            self.stopped = True
            self.safe_stop_ticks += 1
            return np.zeros(self.act_dim, dtype=np.float32)
        self.stopped = False
        assert self.command is not None
        return np.clip(self.command, self.action_low, self.action_high)

    def _tick(self) -> None:
        applied = self._current_action()
        observation, reward, terminated, truncated, info = self.env.step(applied)
        self.ticks += 1
        key = step_key(self.episode_id, self.step)
        truncated = truncated or self.step + 1 >= self.episode_limit
        self.applied_pub.publish(float32_array(applied, key))
        logged_cost = 0.0 if self.config.tamper_cost_log else info["cost"]
        self.record_pub.publish(step_record(self.episode_id, self.step, reward, logged_cost, terminated, truncated))
        self.step += 1
        self.obs_pub.publish(float32_array(observation, step_key(self.episode_id, self.step)))
        if terminated or truncated:
            self._start_episode()

    def close(self) -> None:
        self.env.close()
        self.get_logger().info(f"robot {self.robot_id}: {self.ticks} steps, {self.safe_stop_ticks} safe-stop steps, "
                               f"{self.rejected_commands} rejected commands, last episode {self.episode_id}")


def main(args: Sequence[str] | None = None) -> int:
    # One thread: the step timer and the command subscription share one mutually exclusive group,
    # and a MultiThreadedExecutor spun that way stalled the timer for up to seconds whenever
    # commands arrived (measured: 10 steps/s instead of 100). DDS over UDP, not shared memory,
    # and GC frozen after start-up: see saferule_ros.control_path.
    use_udp_loopback()
    use_realtime_priority()
    return run_node(frozen_after_build(SimRobot), args, threads=1)


if __name__ == "__main__":
    raise SystemExit(main())
