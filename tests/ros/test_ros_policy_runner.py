"""policy_runner in its own process, over DDS: clipped actions, swaps, refusals, registry watch, rollback;
and generic mode (JointState + Odometry in, Twist out)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from geometry_msgs.msg import Twist
from nacl.signing import SigningKey
from nav_msgs.msg import Odometry
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float32MultiArray

from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.limits import MAX_ARTIFACT_PATH_CHARS
from saferule_interfaces.msg import PolicyStatus
from saferule_interfaces.srv import SwapPolicy
from saferule_ros.conversions import array_of, float32_array, label_of
from saferule_ros.topics import STREAM_QOS
from tests.ros.policy_artifacts import TanhPolicy, copy_artifact, make_keys, publish, random_policy
from tests.ros.ros_harness import CONFIG_DIR, NodeProcess, call, node_process, probe_node, spin_until

pytestmark = pytest.mark.ros

NS = "/runner_t"
LIMIT = 1.0  # the robot's limits (action_low/high), tighter than the artifacts' bounds of 5
RESEND_S = 0.5


@dataclass
class Probe:
    """The test side of one runner: feeds observations, collects actions and status, calls SwapPolicy."""

    node: Node
    executor: SingleThreadedExecutor
    runner: NodeProcess
    registry: PolicyRegistry
    key: SigningKey

    def __post_init__(self) -> None:
        self.actions: dict[str, np.ndarray] = {}
        self.statuses: list[PolicyStatus] = []
        self.sent = 0
        self.obs_pub = self.node.create_publisher(Float32MultiArray, f"{NS}/observation", STREAM_QOS)
        self.node.create_subscription(Float32MultiArray, f"{NS}/action",
                                      lambda m: self.actions.__setitem__(label_of(m), array_of(m).copy()), 50)
        self.node.create_subscription(PolicyStatus, f"{NS}/policy_status", self.statuses.append, 10)
        self.swap_client = self.node.create_client(SwapPolicy, f"{NS}/swap_policy")

    def wait(self, done, what: str) -> None:  # type: ignore[no-untyped-def]
        spin_until(self.executor, done, what, process=self.runner)

    def act(self, observation: np.ndarray) -> np.ndarray:
        """Send one observation; return the runner's action for it (matched by step key). The runner
        takes observations best effort (latest only), so one lost on the way is sent again."""
        self.sent += 1
        key = f"probe-000000@{self.sent}"
        message = float32_array(observation, key)
        resend_at = 0.0

        def answered() -> bool:
            nonlocal resend_at
            if key in self.actions:
                return True
            if time.monotonic() >= resend_at:
                self.obs_pub.publish(message)
                resend_at = time.monotonic() + RESEND_S
            return False
        self.wait(answered, f"an action for observation {key}")
        return self.actions[key]

    def swap(self, artifact_path: str = "", version: str = "") -> SwapPolicy.Response:
        return call(self.executor, self.swap_client.call_async(SwapPolicy.Request(artifact_path=artifact_path,
                                                                                  version=version)),
                    "a SwapPolicy answer", self.runner)

    def status_shows(self, version: str) -> PolicyStatus:
        self.statuses.clear()
        self.wait(lambda: bool(self.statuses) and self.statuses[-1].active_version == version,
                  f"PolicyStatus with active version {version}")
        return self.statuses[-1]


def expected(policy: TanhPolicy, observation: np.ndarray) -> np.ndarray:
    return np.clip(policy(observation[None])[0], -LIMIT, LIMIT)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Probe, dict[str, TanhPolicy], Path]]:
    key = make_keys(tmp_path / "keys")
    registry = PolicyRegistry(tmp_path / "registry")
    policies = {"A": random_policy(1), "B": random_policy(2), "sqrt": random_policy(3, inner="sqrt")}
    assert publish(registry, policies["A"], key) == "v0001"
    # Signed and well-formed, but wrong for this robot: staged inside the registry root.
    scratch = PolicyRegistry(tmp_path / "scratch")
    publish(scratch, random_policy(4, obs_dim=5), key)
    publish(scratch, random_policy(5, inner="nan"), key)
    incoming = registry.root / "incoming"
    copy_artifact(scratch.root / "v0001", incoming / "wrong_shape")
    copy_artifact(scratch.root / "v0002", incoming / "nan")
    (copy_artifact(registry.root / "v0001", incoming / "unsigned") / "manifest.sig").unlink()
    onnx_file = copy_artifact(registry.root / "v0001", incoming / "tampered") / "policy.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-5] ^= 0xFF
    onnx_file.write_bytes(bytes(data))

    ros_args = ["--params-file", str(CONFIG_DIR / "policy_runner.yaml"), "-p", f"registry_dir:={registry.root}",
                "-p", f"verify_key:={tmp_path / 'keys'}", "-p", "watch_period_s:=0.2", "-p", "status_period_s:=0.2",
                "-p", f"action_low:=[-{LIMIT}, -{LIMIT}]", "-p", f"action_high:=[{LIMIT}, {LIMIT}]",
                "-r", f"__ns:={NS}"]
    with node_process("policy_runner", ros_args, tmp_path / "runner.log") as runner, \
            probe_node("runner_probe") as (node, executor):
        probe = Probe(node, executor, runner, registry, key)
        probe.wait(lambda: probe.swap_client.service_is_ready() and probe.obs_pub.get_subscription_count() > 0,
                   "the runner's service and subscription")
        yield probe, policies, tmp_path
    assert runner.proc.returncode == 0, runner.log_text()[-2000:]


def test_runner_acts_swaps_refuses_and_rolls_back(setup: tuple[Probe, dict[str, TanhPolicy], Path]) -> None:
    probe, policies, tmp_path = setup
    rng = np.random.default_rng(0)
    positive = lambda: rng.uniform(0.0, 1.0, size=7).astype(np.float32)  # noqa: E731

    # v0001 runs; its actions (up to +-4) are clipped to the robot's limits.
    outputs = [probe.act(obs := positive() * 3) for _ in range(5)]
    np.testing.assert_allclose(outputs[-1], expected(policies["A"], obs), atol=1e-5)
    assert max(np.abs(out).max() for out in outputs) <= LIMIT
    status = probe.status_shows("v0001")
    assert status.artifact_sha256 == probe.registry.manifest("v0001").onnx_sha256
    assert status.ticks >= 5 and status.latency_p50_us > 0 and status.latency_max_us >= status.latency_p99_us

    # Bad artifacts are refused with a reason; the loop keeps running v0001.
    refusals = {
        "incoming/unsigned": "unsigned",
        "incoming/tampered": "altered",
        "incoming/wrong_shape": "obs_dim mismatch",
        "incoming/nan": "non-finite",
        str(tmp_path / "scratch" / "v0001"): "outside the registry root",
        str(probe.registry.root / "incoming" / ".." / ".." / "scratch" / "v0002"): "outside the registry root",
        "x" * 2**20: f"artifact_path is {2**20} characters; the limit is {MAX_ARTIFACT_PATH_CHARS}",
    }
    for path, reason in refusals.items():
        answer = probe.swap(artifact_path=path)
        assert not answer.ok and reason in answer.message, (path[:100], answer.message[:300])
        assert len(answer.message) < 1000
        assert answer.active_version == "v0001" and "still running v0001" in answer.message
        np.testing.assert_allclose(probe.act(obs := positive()), expected(policies["A"], obs), atol=1e-5)
    answer = probe.swap(version="v0042")
    assert not answer.ok and "no version v0042" in answer.message
    answer = probe.swap(artifact_path="v0001", version="v0001")
    assert not answer.ok and "either" in answer.message

    # A newly published version is picked up by the registry watch.
    publish(probe.registry, policies["B"], probe.key, parent="v0001")
    status = probe.status_shows("v0002")
    assert status.swaps == 1
    np.testing.assert_allclose(probe.act(obs := positive()), expected(policies["B"], obs), atol=1e-5)

    # SwapPolicy by version, and by a path inside the registry.
    answer = probe.swap(version="v0001")
    assert answer.ok and (answer.active_version, answer.previous_version) == ("v0001", "v0002"), answer.message
    np.testing.assert_allclose(probe.act(obs := positive()), expected(policies["A"], obs), atol=1e-5)
    answer = probe.swap(artifact_path=str(probe.registry.root / "v0002"))
    assert answer.ok and answer.active_version == "v0002", answer.message
    answer = probe.swap(version="v0001")
    assert answer.ok

    # v0003 passes verification on the (non-negative) observations seen so far, then meets a
    # negative one, answers NaN, and the runner rolls back to v0001 within the same tick.
    publish(probe.registry, policies["sqrt"], probe.key, parent="v0001")
    probe.status_shows("v0003")
    np.testing.assert_allclose(probe.act(obs := positive()), expected(policies["sqrt"], obs), atol=1e-5)
    negative = positive()
    negative[0] = -1.0
    action = probe.act(negative)
    assert np.isfinite(action).all()
    np.testing.assert_allclose(action, expected(policies["A"], negative), atol=1e-5)
    status = probe.status_shows("v0001")
    assert status.rollbacks == 1 and status.swaps == 5
    # The watch does not swap back to the rolled-back version.
    for _ in range(5):
        np.testing.assert_allclose(probe.act(obs := positive()), expected(policies["A"], obs), atol=1e-5)
    assert probe.status_shows("v0001").rollbacks == 1
    assert "rolled back to v0001" in probe.runner.log_text()

    # 30 SwapPolicy requests at once (ROS's default request queue holds 10) are all answered.
    burst = [probe.swap_client.call_async(SwapPolicy.Request(version="v0001")) for _ in range(30)]
    probe.wait(lambda: all(future.done() for future in burst), "answers to 30 SwapPolicy requests sent at once")
    assert all(future.result().ok for future in burst)


def test_generic_mode_assembles_joint_state_and_odometry_and_sends_twist(tmp_path: Path) -> None:
    key = make_keys(tmp_path / "keys")
    registry = PolicyRegistry(tmp_path / "registry")
    policy = random_policy(7, obs_dim=3, act_dim=2)
    publish(registry, policy, key)
    fields = "[odometry.twist.twist.linear.x, joint_state.velocity.right, joint_state.position.left]"
    ros_args = ["--params-file", str(CONFIG_DIR / "policy_runner_generic.yaml"),
                "-p", f"registry_dir:={registry.root}", "-p", f"verify_key:={tmp_path / 'keys'}",
                "-p", f"observation_fields:={fields}", "-p", "trigger:=odometry", "-p", "follow_latest:=false",
                "-r", "__ns:=/generic_t"]
    with node_process("policy_runner", ros_args, tmp_path / "runner.log") as runner, \
            probe_node("generic_probe") as (node, executor):
        twists: list[Twist] = []
        joints = node.create_publisher(JointState, "/generic_t/joint_states", STREAM_QOS)
        odom = node.create_publisher(Odometry, "/generic_t/odom", STREAM_QOS)
        node.create_subscription(Twist, "/generic_t/cmd_vel", twists.append, 10)
        spin_until(executor, lambda: joints.get_subscription_count() > 0 and odom.get_subscription_count() > 0,
                   "the runner's subscriptions", process=runner)
        state = JointState(name=["left", "right"], position=[0.3, -0.2], velocity=[0.5, 0.7])
        moving = Odometry()
        moving.twist.twist.linear.x = 0.25

        def answered() -> bool:
            joints.publish(state)
            odom.publish(moving)
            return bool(twists)
        spin_until(executor, answered, "a Twist command", process=runner)
        observation = np.array([0.25, 0.7, 0.3], dtype=np.float32)
        low, high = np.array([-0.5, -1.5]), np.array([0.5, 1.5])  # the generic YAML's robot limits
        want = np.clip(policy(observation[None])[0], low, high)
        got = np.array([twists[-1].linear.x, twists[-1].angular.z])
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert twists[-1].linear.y == 0.0 and twists[-1].angular.x == 0.0
    assert runner.proc.returncode == 0, runner.log_text()[-2000:]
