"""policy_runner: runs a signed ONNX policy in a robot's control loop and swaps it safely at run time.

Control: each observation (sim mode: Float32MultiArray on `observation`; generic mode: assembled
from JointState/Odometry fields, a tick per `trigger` message) -> one onnxruntime run -> the action,
clipped to the artifact's bounds within the robot's limits -> `action`.

Swaps (SwapPolicy service `swap_policy`, by path inside the registry or by version; and a
background watch of the registry's `latest` pointer): verify (signature, hash, widths, ONNX loads
with the declared I/O, finite and bounded actions on the last observations seen) and build the
session in the service / watch thread -> replace the slot the control callback reads, between two
ticks -> watch the new policy's first `watch_actions` actions and roll back to the previous policy
on a non-finite one. The control callback never waits on I/O, verification or a model build.
A refused artifact leaves the running policy untouched. PolicyStatus goes out every
`status_period_s` on `policy_status`.

    python -m saferule_ros.policy_runner --ros-args --params-file config/policy_runner.yaml -r __ns:=/robot_1
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from builtin_interfaces.msg import Time
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.task import Future
from sensor_msgs.msg import JointState
from std_msgs.msg import Float32MultiArray

from saferule_core.artifacts.signing import load_verify_key
from saferule_core.errors import ArtifactError
from saferule_interfaces.msg import PolicyStatus
from saferule_interfaces.srv import SwapPolicy
from saferule_ros.control_path import frozen_after_build, use_realtime_priority, use_udp_loopback
from saferule_ros.conversions import JOINT_STATE, ODOMETRY, ActionEncoder, ObservationAssembler, array_of, label_of
from saferule_ros.params import ConfigError, declare_config
from saferule_ros.policy_swap import LATEST, LatencyWindow, LoadedPolicy, ObservationWindow, PolicyLoader, PolicySlot
from saferule_ros.spin import run_node
from saferule_ros.topics import (
    ACTION_TOPIC,
    LATEST_ONLY_QOS,
    OBSERVATION_TOPIC,
    POLICY_STATUS_TOPIC,
    STREAM_QOS,
    SWAP_POLICY_SERVICE,
    recorder_qos,
    robot_id_from_namespace,
)

MODES = ("sim", "generic")
# SwapPolicy requests DDS holds while one swap verifies (they are answered in turn); ROS's default
# of 10 silently dropped the rest of a burst.
SWAP_QUEUE_DEPTH = 64


@dataclass
class PolicyRunnerConfig:
    registry_dir: str = "policies"
    verify_key: str = "~/.config/saferule/keys"     # key directory or the verify_key file
    robot_id: str = ""                                # empty: the node's namespace
    initial_version: str = LATEST                     # "latest", "v0003", or "" (wait for a swap)
    follow_latest: bool = True                        # swap when the registry's latest pointer moves
    watch_period_s: float = 1.0
    mode: str = "sim"                                 # "sim" or "generic"
    observation_topic: str = OBSERVATION_TOPIC        # sim mode
    action_topic: str = ACTION_TOPIC
    action_message: str = "float32_array"             # "float32_array", "float64_array" or "twist"
    twist_fields: list[str] = field(default_factory=lambda: ["linear.x", "angular.z"])
    joint_state_topic: str = "joint_states"           # generic mode
    odometry_topic: str = "odom"
    observation_fields: list[str] = field(default_factory=list)
    trigger: str = JOINT_STATE                        # generic: whose message starts a control tick
    action_low: list[float] = field(default_factory=list)   # robot limits; empty: the artifact's bounds
    action_high: list[float] = field(default_factory=list)
    verify_rows: int = 256                            # recent observations a new policy is judged on
    watch_actions: int = 50                           # first actions of a new policy watched for NaN/inf
    deadline_ms: float = 20.0                         # a control callback longer than this is a miss
    latency_window: int = 1000
    status_period_s: float = 1.0


@dataclass(frozen=True)
class SwapOutcome:
    ok: bool
    active_version: str
    previous_version: str
    message: str


class PolicyRunner(Node):
    def __init__(self, node_name: str = "policy_runner", **kwargs: object) -> None:
        super().__init__(node_name, **kwargs)  # type: ignore[arg-type]
        cfg = self.config = declare_config(self, PolicyRunnerConfig)
        self._check_config()
        self.robot_id = cfg.robot_id or robot_id_from_namespace(self.get_namespace())
        self.loader = PolicyLoader(Path(cfg.registry_dir), load_verify_key(Path(cfg.verify_key).expanduser()),
                                   cfg.action_low or None, cfg.action_high or None, cfg.verify_rows)
        try:
            self.encoder = ActionEncoder(cfg.action_message, cfg.twist_fields)
            self.assembler = ObservationAssembler(cfg.observation_fields) if cfg.mode == "generic" else None
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.assembler is not None and cfg.trigger not in self.assembler.sources:
            raise ConfigError(f"trigger {cfg.trigger!r} is not a source of observation_fields "
                              f"({', '.join(sorted(self.assembler.sources))})")

        self._slot = PolicySlot(active=None)
        self._slot_lock = threading.Lock()   # held only to replace the slot reference
        self._swap_lock = threading.Lock()   # one verification at a time
        self._refused_versions: set[str] = set()
        self.window = ObservationWindow(cfg.verify_rows)
        self.latency = LatencyWindow(cfg.latency_window)
        self.ticks = self.deadline_misses = self.swaps = self.rollbacks = 0
        self.skipped_observations = self.nonfinite_actions = 0
        self._deadline_ns = int(cfg.deadline_ms * 1e6)

        control = MutuallyExclusiveCallbackGroup()
        self.action_pub = self.create_publisher(self.encoder.message_type, cfg.action_topic, STREAM_QOS)
        if self.assembler is None:
            self.create_subscription(Float32MultiArray, cfg.observation_topic, self._on_observation,
                                     LATEST_ONLY_QOS, callback_group=control)
        else:
            if JOINT_STATE in self.assembler.sources:
                self.create_subscription(JointState, cfg.joint_state_topic,
                                         lambda msg: self._on_generic(JOINT_STATE, msg), LATEST_ONLY_QOS,
                                         callback_group=control)
            if ODOMETRY in self.assembler.sources:
                self.create_subscription(Odometry, cfg.odometry_topic, lambda msg: self._on_generic(ODOMETRY, msg),
                                         LATEST_ONLY_QOS, callback_group=control)
        self.status_pub = self.create_publisher(PolicyStatus, POLICY_STATUS_TOPIC, 10)
        self.create_service(SwapPolicy, SWAP_POLICY_SERVICE, self._on_swap_request,
                            qos_profile=recorder_qos(SWAP_QUEUE_DEPTH), callback_group=MutuallyExclusiveCallbackGroup())
        self.create_timer(cfg.status_period_s, self._publish_status, callback_group=MutuallyExclusiveCallbackGroup())

        self._last_latest = self._read_latest()
        if cfg.initial_version:
            outcome = self.swap(version=cfg.initial_version, reason="initial")
            if not outcome.ok:
                self.get_logger().error(f"no initial policy: {outcome.message}")
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch_registry, name="registry-watch", daemon=True)
        if cfg.follow_latest:
            self._watcher.start()

    def _check_config(self) -> None:
        cfg = self.config
        if cfg.mode not in MODES:
            raise ConfigError(f"mode {cfg.mode!r}: expected one of {', '.join(MODES)}")
        if cfg.mode == "generic" and not cfg.observation_fields:
            raise ConfigError("generic mode needs observation_fields (e.g. joint_state.position.wheel_left)")
        if len(cfg.action_low) != len(cfg.action_high):
            raise ConfigError(f"action_low has {len(cfg.action_low)} entries, action_high {len(cfg.action_high)}")
        for name in ("watch_period_s", "deadline_ms", "status_period_s"):
            if getattr(cfg, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(cfg, name)}")

    # ----- control thread ------------------------------------------------------------------
    @property
    def active(self) -> LoadedPolicy | None:
        return self._slot.active

    def _on_observation(self, msg: Float32MultiArray) -> None:
        self._control(array_of(msg), label_of(msg), time.perf_counter_ns())

    def _on_generic(self, source: str, msg: JointState | Odometry) -> None:
        assert self.assembler is not None
        self.assembler.update(source, msg)
        if source != self.config.trigger:
            return
        start = time.perf_counter_ns()
        try:
            observation = self.assembler.assemble()
        except ValueError as err:
            self.skipped_observations += 1
            self.get_logger().warning(f"cannot assemble an observation: {err}", throttle_duration_sec=5.0)
            return
        if observation is None:
            self.skipped_observations += 1
            return
        self._control(observation, "", start)

    def _control(self, observation: np.ndarray, label: str, start_ns: int) -> None:
        slot = self._slot
        policy = slot.active
        if policy is None or observation.shape != (policy.obs_dim,) or not np.isfinite(observation).all():
            self.skipped_observations += 1
            if policy is not None:
                self.get_logger().warning(f"skipping an observation of shape {observation.shape} (expected "
                                          f"({policy.obs_dim},), finite)", throttle_duration_sec=5.0)
            return
        self.window.push(observation)
        inference_start = time.perf_counter_ns()
        action = policy.act(observation)
        self.latency.record((time.perf_counter_ns() - inference_start) / 1e3)
        if not np.isfinite(action).all():
            policy, action = self._after_nonfinite(slot, observation)
        elif slot.watch_left > 0:
            slot.watch_left -= 1
        self.action_pub.publish(self.encoder.encode(np.clip(action, policy.low, policy.high), label))
        self.ticks += 1
        if time.perf_counter_ns() - start_ns > self._deadline_ns:
            self.deadline_misses += 1

    def _after_nonfinite(self, slot: PolicySlot, observation: np.ndarray) -> tuple[LoadedPolicy, np.ndarray]:
        """Roll back if the new policy is still watched; otherwise command a zero action (safe stop)."""
        bad, previous = slot.active, slot.previous
        assert bad is not None
        if slot.watch_left > 0 and previous is not None:
            with self._slot_lock:
                rolled = self._slot is slot  # a swap may have replaced the slot meanwhile
                if rolled:
                    self._slot = PolicySlot(active=previous)
            if rolled:
                self.rollbacks += 1
                self._refused_versions.add(bad.version)
                self.get_logger().error(f"{bad.version} produced a non-finite action after its swap: rolled back "
                                        f"to {previous.version}")
                action = previous.act(observation)
                if np.isfinite(action).all():
                    return previous, action
        self.nonfinite_actions += 1
        self.get_logger().error(f"{bad.version} produced a non-finite action: commanding zero",
                                throttle_duration_sec=5.0)
        return bad, np.zeros(bad.act_dim, dtype=np.float32)

    # ----- swaps (service and watch threads) -----------------------------------------------
    def swap(self, artifact_path: str = "", version: str = "", reason: str = "request") -> SwapOutcome:
        with self._swap_lock:
            current = self._slot.active
            current_version = current.version if current else ""
            dims = (current.obs_dim, current.act_dim) if current else (
                self.assembler.width if self.assembler else None, None)
            try:
                artifact = self.loader.load(artifact_path, version)
                policy = self.loader.prepare(artifact, self.window.snapshot(), *dims)
                self.encoder.check_width(policy.act_dim)
            except (ArtifactError, ValueError, OSError) as err:
                what = (artifact_path or version)[:200]   # an over-long one is refused, not echoed
                message = f"refused {what}: {err}; still running {current_version or 'no policy'}"
                self.get_logger().warning(f"{reason} swap {message}")
                return SwapOutcome(False, current_version, "", message)
            if current is not None and (policy.version, policy.sha256) == (current.version, current.sha256):
                return SwapOutcome(True, current_version, current_version, f"{current_version} is already active")
            with self._slot_lock:
                self._slot = PolicySlot(active=policy, previous=current, watch_left=self.config.watch_actions)
            if current is not None:
                self.swaps += 1
            message = (f"switched from {current_version or 'no policy'} to {policy.version} "
                       f"(sha256 {policy.sha256[:12]}, {reason})")
            self.get_logger().info(message)
            return SwapOutcome(True, policy.version, current_version, message)

    async def _on_swap_request(self, request: SwapPolicy.Request,
                               response: SwapPolicy.Response) -> SwapPolicy.Response:
        # Verifying an artifact (signature, ONNX session, test run) takes tens of ms: it runs on a
        # worker thread while this coroutine waits, so the single-threaded executor keeps running
        # the control loop; the switch itself is one reference assignment between two ticks.
        finished: Future[SwapOutcome] = Future()
        executor = self.executor
        if executor is not None:
            finished.add_done_callback(lambda _done: executor.wake())

        def verify_and_switch() -> None:
            try:
                finished.set_result(self.swap(request.artifact_path, request.version, reason="SwapPolicy"))
            except BaseException as err:  # noqa: BLE001 (re-raised in the service callback)
                finished.set_exception(err)

        threading.Thread(target=verify_and_switch, name="swap-verify", daemon=True).start()
        outcome = await finished
        assert outcome is not None
        response.ok = outcome.ok
        response.active_version = outcome.active_version
        response.previous_version = outcome.previous_version
        response.message = outcome.message
        return response

    def _read_latest(self) -> str | None:
        try:
            return self.loader.registry.latest()
        except ArtifactError as err:
            self.get_logger().warning(f"registry watch: {err}", throttle_duration_sec=30.0)
            return None

    def _watch_registry(self) -> None:
        while not self._stop.wait(self.config.watch_period_s):
            latest = self._read_latest()
            if latest is None or latest == self._last_latest:
                continue
            self._last_latest = latest
            active = self.active
            if latest in self._refused_versions or (active is not None and active.version == latest):
                continue
            outcome = self.swap(version=latest, reason="registry latest")
            if not outcome.ok:
                self._refused_versions.add(latest)

    # ----- status --------------------------------------------------------------------------
    def status(self) -> PolicyStatus:
        policy = self.active
        p50, p99, worst = self.latency.summary()
        msg = PolicyStatus(robot_id=self.robot_id, ticks=self.ticks, deadline_misses=self.deadline_misses,
                           swaps=self.swaps, rollbacks=self.rollbacks, latency_p50_us=p50, latency_p99_us=p99,
                           latency_max_us=worst)
        msg.stamp = self.get_clock().now().to_msg()
        if policy is not None:
            msg.active_version = policy.version
            msg.artifact_sha256 = policy.sha256
            msg.loaded_at = Time(sec=policy.loaded_at_ns // 1_000_000_000, nanosec=policy.loaded_at_ns % 1_000_000_000)
        return msg

    def _publish_status(self) -> None:
        self.status_pub.publish(self.status())

    def close(self) -> None:
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join(timeout=5.0)
        status = self.status()
        self.get_logger().info(
            f"robot {self.robot_id}: {status.ticks} actions, {status.deadline_misses} deadline misses, "
            f"{status.swaps} swaps, {status.rollbacks} rollbacks, {self.skipped_observations} skipped observations, "
            f"inference p50 {status.latency_p50_us:.0f} us p99 {status.latency_p99_us:.0f} us")


def main(args: Sequence[str] | None = None) -> int:
    # One thread for every callback (control, SwapPolicy, status): rclpy's multi-threaded executor
    # costs the control callback GIL hand-offs (measured inference p99 in the ms); swaps verify on
    # their own worker thread (see _on_swap_request). DDS over UDP, not shared memory, and GC
    # frozen after start-up: see saferule_ros.control_path.
    use_udp_loopback()
    use_realtime_priority()
    return run_node(frozen_after_build(PolicyRunner), args, threads=1)


if __name__ == "__main__":
    raise SystemExit(main())
