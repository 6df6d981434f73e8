"""Message conversions, typed parameters, the shipped YAML configs and the runner's windows (no DDS traffic)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import rclpy
import yaml
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Float32MultiArray, Float64MultiArray

from saferule_ros.conversions import (
    JOINT_STATE,
    ODOMETRY,
    ActionEncoder,
    ObservationAssembler,
    array_of,
    float32_array,
    label_of,
    step_record,
)
from saferule_ros.dataset_ingestor import DatasetIngestorConfig
from saferule_ros.fleet_monitor import FleetMonitorConfig
from saferule_ros.params import ConfigError, config_defaults, declare_config
from saferule_ros.policy_runner import PolicyRunnerConfig
from saferule_ros.policy_swap import LatencyWindow, ObservationWindow
from saferule_ros.recorder import RecorderConfig
from saferule_ros.sim_robot import SimRobotConfig
from saferule_ros.topics import STEP_COST, STEP_REWARD, STEP_TRUNCATED, parse_step_key
from saferule_ros.unlearning_server import UnlearningServerConfig
from tests.ros.ros_harness import CONFIG_DIR


def test_arrays_round_trip_with_their_step_key() -> None:
    values = np.array([0.5, -1.25, 3.0], dtype=np.float32)
    msg = float32_array(values, "robot_1-000002@7")
    assert isinstance(msg, Float32MultiArray) and msg.layout.dim[0].size == 3
    np.testing.assert_array_equal(array_of(msg), values)
    assert parse_step_key(label_of(msg)) == ("robot_1-000002", 7)
    record = step_record("robot_1-000002", 7, reward=1.5, cost=1.0, terminated=False, truncated=True)
    assert isinstance(record, Float64MultiArray)
    data = array_of(record)
    assert (data[STEP_REWARD], data[STEP_COST], data[STEP_TRUNCATED]) == (1.5, 1.0, 1.0)
    assert label_of(record) == "robot_1-000002@7" and array_of(Float32MultiArray()).shape == (0,)


def test_observation_assembler_reads_named_fields_in_order() -> None:
    assembler = ObservationAssembler(["odometry.twist.twist.angular.z", "joint_state.velocity.right",
                                      "joint_state.position.left", "odometry.pose.pose.position.x"])
    assert assembler.sources == {JOINT_STATE, ODOMETRY} and assembler.width == 4
    odom = Odometry()
    odom.twist.twist.angular.z = -0.5
    odom.pose.pose.position.x = 2.0
    assembler.update(ODOMETRY, odom)
    assert assembler.assemble() is None and assembler.missing_sources() == [JOINT_STATE]
    assembler.update(JOINT_STATE, JointState(name=["left", "right"], position=[0.1, 0.2], velocity=[1.0, 2.0]))
    np.testing.assert_allclose(assembler.assemble(), [-0.5, 2.0, 0.1, 2.0])
    # Joint order may differ between messages; names decide.
    assembler.update(JOINT_STATE, JointState(name=["right", "left"], position=[0.2, 0.1], velocity=[3.0, 4.0]))
    np.testing.assert_allclose(assembler.assemble(), [-0.5, 3.0, 0.1, 2.0])
    assembler.update(JOINT_STATE, JointState(name=["right"], position=[0.2], velocity=[3.0]))
    with pytest.raises(ValueError, match="no joint"):
        assembler.assemble()
    assembler.update(JOINT_STATE, JointState(name=["right", "left"], position=[0.2, 0.1], velocity=[]))
    with pytest.raises(ValueError, match="velocity has 0 entries"):
        assembler.assemble()


@pytest.mark.parametrize("fields, problem", [
    ([], "empty"), (["imu.linear_acceleration.x"], "must start with"), (["joint_state.torque.left"], "expected"),
    (["joint_state.position"], "expected"), (["odometry.twist.nope"], "no field"), (["odometry.pose"], "not a number"),
])
def test_observation_fields_are_checked_at_start(fields: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ObservationAssembler(fields)


def test_action_encoders() -> None:
    twist = ActionEncoder("twist", ["linear.x", "angular.z"]).encode(np.array([0.3, -0.7], dtype=np.float32))
    assert isinstance(twist, Twist) and twist.angular.z == pytest.approx(-0.7) and twist.linear.x == pytest.approx(0.3)
    assert twist.linear.y == 0.0
    wide = ActionEncoder("float64_array").encode(np.array([0.3, -0.7], dtype=np.float32))
    assert isinstance(wide, Float64MultiArray) and array_of(wide).dtype == np.float64
    with pytest.raises(ValueError, match="twist_fields"):
        ActionEncoder("twist", ["linear.q"])
    with pytest.raises(ValueError, match="expected float32_array"):
        ActionEncoder("json")
    with pytest.raises(ValueError, match="names 2 fields"):
        ActionEncoder("twist", ["linear.x", "angular.z"]).check_width(3)


@dataclass
class _Config:
    rate: float = 50.0
    name: str = "x"
    count: int = 3
    limits: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=lambda: ["a"])


@pytest.fixture
def context() -> Iterator[rclpy.Context]:
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


def _node(context: rclpy.Context, **overrides: object) -> Node:
    return Node("params_probe", context=context,
                parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])


def test_typed_parameters_coerce_integers_and_fill_empty_lists(context: rclpy.Context) -> None:
    node = _node(context, rate=20, limits=[-1, 1], names=["p", "q"])
    config = declare_config(node, _Config)
    node.destroy_node()
    assert config == _Config(rate=20.0, name="x", count=3, limits=[-1.0, 1.0], names=["p", "q"])
    assert isinstance(config.rate, float) and all(isinstance(v, float) for v in config.limits)
    node = _node(context, rate="fast")
    with pytest.raises(ConfigError, match="parameter rate"):
        declare_config(node, _Config)
    node.destroy_node()


@pytest.mark.parametrize("file, config", [("sim_robot.yaml", SimRobotConfig), ("recorder.yaml", RecorderConfig),
                                          ("policy_runner.yaml", PolicyRunnerConfig),
                                          ("policy_runner_generic.yaml", PolicyRunnerConfig),
                                          ("fleet_monitor.yaml", FleetMonitorConfig),
                                          ("unlearning_server.yaml", UnlearningServerConfig),
                                          ("dataset_ingestor.yaml", DatasetIngestorConfig)])
def test_shipped_yaml_names_only_real_parameters(file: str, config: type) -> None:
    params = yaml.safe_load((CONFIG_DIR / file).read_text())["/**"]["ros__parameters"]
    defaults = config_defaults(config)
    assert set(params) <= set(defaults), set(params) - set(defaults)
    for name, value in params.items():
        default = defaults[name]
        assert isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int)), name
    if file in ("sim_robot.yaml", "recorder.yaml", "dataset_ingestor.yaml"):  # these state every default
        assert params == defaults


def test_observation_and_latency_windows() -> None:
    window = ObservationWindow(3)
    assert window.snapshot() is None
    for i in range(5):
        window.push(np.full(2, i, dtype=np.float32))
    assert sorted(window.snapshot()[:, 0].tolist()) == [2.0, 3.0, 4.0]
    window.push(np.zeros(4, dtype=np.float32))  # a new width starts over
    assert window.snapshot().shape == (1, 4)
    latency = LatencyWindow(100)
    assert latency.summary() == (0.0, 0.0, 0.0)
    for value in range(1, 201):
        latency.record(float(value))
    p50, p99, worst = latency.summary()
    assert worst == 200.0 and 149.0 <= p50 <= 152.0 and p99 > p50


def test_config_dir_is_installed_with_the_package() -> None:
    installed = Path(__file__).resolve().parents[2] / "ros2_ws" / "install" / "share" / "saferule_ros" / "config"
    assert sorted(p.name for p in installed.glob("*.yaml")) == sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
