"""numpy <-> ROS message conversions for the robot topics (layouts: see `saferule_ros.topics`).

Generic robots: an observation vector is assembled from named fields of sensor_msgs/JointState and
nav_msgs/Odometry, and an action vector goes out as std_msgs/Float64MultiArray or
geometry_msgs/Twist. Field names, one per vector entry:

    joint_state.position.<joint>     joint_state.velocity.<joint>     joint_state.effort.<joint>
    odometry.<attribute path>        e.g. odometry.twist.twist.linear.x, odometry.pose.pose.position.y
    twist: linear.x linear.y linear.z angular.x angular.y angular.z   (action fields)
"""

from __future__ import annotations

import array
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from sensor_msgs.msg import JointState
from std_msgs.msg import Float32MultiArray, Float64MultiArray, MultiArrayDimension

from saferule_ros.topics import step_key

JOINT_STATE = "joint_state"
ODOMETRY = "odometry"
JOINT_ARRAYS = ("position", "velocity", "effort")
TWIST_FIELDS = ("linear.x", "linear.y", "linear.z", "angular.x", "angular.y", "angular.z")


# ----- multi-arrays with a step key ----------------------------------------------------------
def _labelled(msg: Float32MultiArray | Float64MultiArray, label: str, size: int) -> None:
    msg.layout.dim = [MultiArrayDimension(label=label, size=size, stride=size)]


def float32_array(values: np.ndarray, label: str = "") -> Float32MultiArray:
    data = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    msg = Float32MultiArray()
    _labelled(msg, label, data.size)
    msg.data = array.array("f", data.tobytes())  # 4x cheaper than letting rclpy convert an ndarray
    return msg


def float64_array(values: np.ndarray, label: str = "") -> Float64MultiArray:
    data = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    msg = Float64MultiArray()
    _labelled(msg, label, data.size)
    msg.data = array.array("d", data.tobytes())
    return msg


def array_of(msg: Float32MultiArray | Float64MultiArray) -> np.ndarray:
    """The message's data as a read-only numpy view (float32 or float64), no copy."""
    dtype = np.float32 if isinstance(msg, Float32MultiArray) else np.float64
    return np.frombuffer(msg.data, dtype=dtype) if len(msg.data) else np.zeros(0, dtype=dtype)


def label_of(msg: Float32MultiArray | Float64MultiArray) -> str:
    return msg.layout.dim[0].label if msg.layout.dim else ""


def step_record(episode_id: str, step: int, reward: float, cost: float, terminated: bool,
                truncated: bool) -> Float64MultiArray:
    """The step_record message; its data follows topics.STEP_RECORD_FIELDS."""
    values = np.array([reward, cost, float(terminated), float(truncated)], dtype=np.float64)
    return float64_array(values, step_key(episode_id, step))


# ----- generic robots: observation from JointState / Odometry ---------------------------------
@dataclass(frozen=True)
class _JointField:
    slot: int
    array: str
    joint: str


class ObservationAssembler:
    """Builds an observation vector from the latest JointState and Odometry, per `fields`."""

    def __init__(self, fields: Sequence[str]) -> None:
        if not fields:
            raise ValueError("observation_fields is empty: name at least one field")
        self.fields = tuple(fields)
        self._joint_fields: list[_JointField] = []
        self._odometry_slots: list[int] = []
        self._odometry_getters: list[Callable[[Any], Any]] = []
        probe = Odometry()
        for slot, name in enumerate(self.fields):
            source, _, rest = name.partition(".")
            if source == JOINT_STATE:
                kind, _, joint = rest.partition(".")
                if kind not in JOINT_ARRAYS or not joint:
                    raise ValueError(f"observation field {name!r}: expected joint_state.<{'|'.join(JOINT_ARRAYS)}>"
                                     f".<joint name>")
                self._joint_fields.append(_JointField(slot, kind, joint))
            elif source == ODOMETRY:
                getter = operator.attrgetter(rest)
                try:
                    value = getter(probe)
                except AttributeError:
                    raise ValueError(f"observation field {name!r}: nav_msgs/Odometry has no field {rest!r}") from None
                if not isinstance(value, float):
                    raise ValueError(f"observation field {name!r} is not a number (it is {type(value).__name__})")
                self._odometry_slots.append(slot)
                self._odometry_getters.append(getter)
            else:
                raise ValueError(f"observation field {name!r} must start with '{JOINT_STATE}.' or '{ODOMETRY}.'")
        self.sources = frozenset(([JOINT_STATE] if self._joint_fields else [])
                                 + ([ODOMETRY] if self._odometry_slots else []))
        self._index_cache: dict[tuple[str, ...], dict[str, np.ndarray]] = {}
        self._latest: dict[str, Any] = {}

    @property
    def width(self) -> int:
        return len(self.fields)

    def update(self, source: str, msg: JointState | Odometry) -> None:
        self._latest[source] = msg

    def missing_sources(self) -> list[str]:
        return sorted(self.sources - self._latest.keys())

    def _joint_indices(self, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        cached = self._index_cache.get(names)
        if cached is None:
            where = {name: i for i, name in enumerate(names)}
            missing = sorted({f.joint for f in self._joint_fields if f.joint not in where})
            if missing:
                raise ValueError(f"JointState has no joint(s) {', '.join(missing)} (it has {', '.join(names)})")
            cached = {kind: np.array([where[f.joint] for f in self._joint_fields if f.array == kind], dtype=np.int64)
                      for kind in JOINT_ARRAYS}
            self._index_cache = {names: cached}  # joint order rarely changes: keep one entry
        return cached

    def assemble(self) -> np.ndarray | None:
        """The observation, or None until every source has been seen. ValueError on a bad message."""
        if len(self._latest) < len(self.sources):
            return None
        out = np.empty(self.width, dtype=np.float32)
        if self._joint_fields:
            joints: JointState = self._latest[JOINT_STATE]
            indices = self._joint_indices(tuple(joints.name))
            for kind in JOINT_ARRAYS:
                wanted = indices[kind]
                if wanted.size:
                    values = np.frombuffer(getattr(joints, kind), dtype=np.float64) \
                        if len(getattr(joints, kind)) else np.zeros(0)
                    if values.size <= int(wanted.max()):
                        raise ValueError(f"JointState.{kind} has {values.size} entries for {len(joints.name)} joints")
                    out[[f.slot for f in self._joint_fields if f.array == kind]] = values[wanted]
        if self._odometry_slots:
            odom = self._latest[ODOMETRY]
            out[self._odometry_slots] = [getter(odom) for getter in self._odometry_getters]
        return out


# ----- actions out ---------------------------------------------------------------------------
class ActionEncoder:
    """Turns an action vector into the configured message: Float32MultiArray (sim),
    Float64MultiArray or Twist (generic)."""

    def __init__(self, message: str, twist_fields: Sequence[str] = ()) -> None:
        self.message = message
        self.twist_fields = tuple(twist_fields)
        if message == "float32_array":
            self.message_type: type = Float32MultiArray
        elif message == "float64_array":
            self.message_type = Float64MultiArray
        elif message == "twist":
            self.message_type = Twist
            unknown = [f for f in self.twist_fields if f not in TWIST_FIELDS]
            if not self.twist_fields or unknown:
                raise ValueError(f"twist_fields {list(self.twist_fields)}: name one of {', '.join(TWIST_FIELDS)} "
                                 f"per action entry")
        else:
            raise ValueError(f"action message {message!r}: expected float32_array, float64_array or twist")

    def check_width(self, act_dim: int) -> None:
        if self.message == "twist" and len(self.twist_fields) != act_dim:
            raise ValueError(f"twist_fields names {len(self.twist_fields)} fields but the policy has {act_dim} "
                             f"action entries")

    def encode(self, action: np.ndarray, label: str = "") -> Any:
        if self.message == "float32_array":
            return float32_array(action, label)
        if self.message == "float64_array":
            return float64_array(action, label)
        msg = Twist()
        for name, value in zip(self.twist_fields, action.tolist()):
            part, _, axis = name.partition(".")
            setattr(getattr(msg, part), axis, float(value))
        return msg
