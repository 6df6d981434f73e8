"""Names, message types and QoS of the robot topics: the contract between sim_robot, policy_runner,
recorder and the bag reader.

Per robot namespace (e.g. /robot_1), relative names resolved in the node's namespace:

    observation     std_msgs/Float32MultiArray   sim_robot -> policy_runner, recorder
                    data = observation (obs_dim); layout.dim[0].label = step key "<episode_id>@<step>"
    action          std_msgs/Float32MultiArray   policy_runner -> sim_robot
                    data = commanded action (act_dim), already clipped by the runner;
                    layout.dim[0].label = the step key of the observation it answers
    applied_action  std_msgs/Float32MultiArray   sim_robot -> recorder
                    data = the action actually applied at that step (clipped; zeros on a safe stop);
                    layout.dim[0].label = step key
    step_record     std_msgs/Float64MultiArray   sim_robot -> recorder
                    data = [reward, cost, terminated, truncated] (flags 1.0/0.0), see STEP_RECORD_FIELDS;
                    layout.dim[0].label = step key (episode id + step). A typed float64 array: 32 bytes
                    of payload, no JSON to format or parse at 50 Hz per robot.
    policy_status   saferule_interfaces/PolicyStatus   policy_runner, 1 Hz
    swap_policy     saferule_interfaces/srv/SwapPolicy served by policy_runner

Step t of episode ep is observation(ep, t) --applied_action(ep, t)--> observation(ep, t + 1), with
step_record(ep, t); an episode of T steps has observations 0..T. Episode ids are "<robot>-<seq>"
(six-digit seq). The layout itself lives in `saferule_core.data.from_bags` (ROS-free, so that
bags can be read without rclpy); this module adds the ROS side.
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float32MultiArray, Float64MultiArray

from saferule_core.data.from_bags import (
    APPLIED_ACTION_TOPIC,
    OBSERVATION_TOPIC,
    STEP_COST,
    STEP_RECORD_FIELDS,
    STEP_RECORD_TOPIC,
    STEP_REWARD,
    STEP_TERMINATED,
    STEP_TRUNCATED,
    episode_id_for,
    parse_step_key,
    robot_id_from_namespace,
    step_key,
)

ACTION_TOPIC = "action"
POLICY_STATUS_TOPIC = "policy_status"
SWAP_POLICY_SERVICE = "swap_policy"

# Message type of every topic a recorder may record, by relative name.
RECORDABLE_TOPICS: dict[str, type] = {
    OBSERVATION_TOPIC: Float32MultiArray,
    APPLIED_ACTION_TOPIC: Float32MultiArray,
    STEP_RECORD_TOPIC: Float64MultiArray,
    ACTION_TOPIC: Float32MultiArray,
}

# Publishers are reliable so that a reliable recorder can match them. A reliable KEEP_LAST writer
# overwrites a sample its readers have not acknowledged once `depth` newer ones are published: at
# depth 10 and 100 Hz a recorder 0.1 s behind (a busy moment on 2 cores) lost a step in the middle
# of an episode (its lost_in_dds count). 1000 samples is 10 s of slack at 100 Hz, a few hundred KB.
STREAM_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
# A controller wants the newest message only: a stale observation or command is worthless. Best
# effort: a reliable reader holds every later sample back until a lost one is repaired, which
# waits for the writer's next heartbeat (Fast DDS: up to 3 s). Measured under graph churn on a
# loaded machine: a runner received no observation for 2.3 s while the sim published 94 (issue 12).
LATEST_ONLY_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                             durability=DurabilityPolicy.VOLATILE)


def recorder_qos(depth: int) -> QoSProfile:
    """Reliable with a deep queue: a burst waits in the middleware instead of being lost."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def ros_type_name(msg_class: type) -> str:
    """"std_msgs/msg/Float32MultiArray" for std_msgs.msg.Float32MultiArray (the name bags use)."""
    package = msg_class.__module__.split(".")[0]
    return f"{package}/msg/{msg_class.__name__}"


__all__ = [
    "ACTION_TOPIC", "APPLIED_ACTION_TOPIC", "LATEST_ONLY_QOS", "OBSERVATION_TOPIC", "POLICY_STATUS_TOPIC",
    "RECORDABLE_TOPICS", "STEP_COST", "STEP_RECORD_FIELDS", "STEP_RECORD_TOPIC", "STEP_REWARD", "STEP_TERMINATED",
    "STEP_TRUNCATED", "STREAM_QOS", "SWAP_POLICY_SERVICE", "episode_id_for", "parse_step_key", "recorder_qos",
    "robot_id_from_namespace", "ros_type_name", "step_key",
]
