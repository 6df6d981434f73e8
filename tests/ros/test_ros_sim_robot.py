"""sim_robot in its own process: fixed-rate steps, applies (clipped) commands, safe stop, episode resets from
randomised starts."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from std_msgs.msg import Float32MultiArray, Float64MultiArray

from saferule_ros.conversions import array_of, float32_array, label_of
from saferule_ros.topics import STEP_TERMINATED, STEP_TRUNCATED, STREAM_QOS, parse_step_key, recorder_qos
from tests.ros.ros_harness import CONFIG_DIR, node_process, probe_node, spin_until

pytestmark = pytest.mark.ros

EPISODE_STEPS = 15


def next_episode(episode_id: str) -> str:
    """The id after `episode_id` ("<robot>-<seq>"; seq starts from the clock, so it has any width)."""
    robot, _, seq = episode_id.rpartition("-")
    return f"{robot}-{int(seq) + 1:06d}"


def test_sim_robot_steps_applies_commands_and_stops_safely(tmp_path: Path) -> None:
    ros_args = ["--params-file", str(CONFIG_DIR / "sim_robot.yaml"), "-p", f"max_episode_steps:={EPISODE_STEPS}",
                "-p", "command_timeout_s:=0.3", "-r", "__ns:=/sim_t"]
    with node_process("sim_robot", ros_args, tmp_path / "sim.log") as sim, probe_node("sim_probe") as (node, ex):
        observations: list[tuple[str, int, np.ndarray]] = []
        applied: list[tuple[str, int, np.ndarray]] = []
        records: list[tuple[str, int, np.ndarray, float]] = []

        def keep(store: list, msg: Float32MultiArray | Float64MultiArray) -> None:  # type: ignore[type-arg]
            store.append((*parse_step_key(label_of(msg)), array_of(msg).copy(), time.monotonic()))

        node.create_subscription(Float32MultiArray, "/sim_t/observation", lambda m: keep(observations, m),
                                 recorder_qos(500))
        node.create_subscription(Float32MultiArray, "/sim_t/applied_action", lambda m: keep(applied, m),
                                 recorder_qos(500))
        node.create_subscription(Float64MultiArray, "/sim_t/step_record", lambda m: keep(records, m),
                                 recorder_qos(500))
        command = node.create_publisher(Float32MultiArray, "/sim_t/action", STREAM_QOS)

        # No commands yet: the robot steps on its own with zero actions, through an episode end.
        spin_until(ex, lambda: len(records) >= 2 * EPISODE_STEPS, "step records", process=sim)
        first = records[0][3], records[-1][3]
        print(f"sim_robot step rate: {(len(records) - 1) / (first[1] - first[0]):.1f} Hz (rate_hz 50)")
        assert all(np.array_equal(a[2], np.zeros(2)) for a in applied)
        assert all(o[2].shape == (7,) and np.isfinite(o[2]).all() for o in observations)
        for (ep_a, step_a, *_), (ep_b, step_b, *_) in zip(records, records[1:]):
            assert (ep_b, step_b) == ((ep_a, step_a + 1) if step_a + 1 < EPISODE_STEPS
                                      else (next_episode(ep_a), 0))
        ends = [r for r in records if r[1] == EPISODE_STEPS - 1]
        assert ends and all(r[2][STEP_TRUNCATED] == 1.0 or r[2][STEP_TERMINATED] == 1.0 for r in ends)
        # The final observation of an episode is published before the reset.
        seen = {(o[0], o[1]) for o in observations}
        assert (ends[0][0], EPISODE_STEPS) in seen and (next_episode(ends[0][0]), 0) in seen
        # Each episode starts from the task's randomised start (BallRun at rest: velocities ~1e-16).
        starts = [o[2] for o in observations if o[1] == 0]
        assert starts and all(np.abs(start[2:6]).max() > 1e-3 for start in starts), starts

        # Commands are applied, clipped to the action space.
        def commanded() -> bool:
            command.publish(float32_array(np.array([3.0, -0.25], dtype=np.float32)))
            return any(np.allclose(a[2], [1.0, -0.25]) for a in applied)
        spin_until(ex, commanded, "an applied command", process=sim)

        # Commands stop: after command_timeout_s the robot applies zero (safe stop).
        applied.clear()
        spin_until(ex, lambda: len(applied) > 0 and np.array_equal(applied[-1][2], np.zeros(2)),
                   "a safe stop", process=sim)
        assert sim.proc.poll() is None
    assert sim.proc.returncode == 0
    assert "safe-stop steps" in sim.log_text()
