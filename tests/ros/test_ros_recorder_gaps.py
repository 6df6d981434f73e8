"""recorder loss accounting: step keys read straight from CDR bytes, missing steps counted per topic,
and a recorder process that reports a hole in a published sequence in its log and its bags."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
from rclpy.qos import HistoryPolicy
from rclpy.serialization import serialize_message
from std_msgs.msg import Float32MultiArray, Float64MultiArray

from saferule_ros.conversions import float32_array, step_record
from saferule_ros.params import ConfigError
from saferule_ros.recorder import StepGaps, recorder_subscription_qos, step_key_of_cdr
from saferule_ros.topics import episode_id_for, recorder_qos, step_key
from tests.ros.ros_harness import node_process, probe_node, spin_until

pytestmark = pytest.mark.ros

TOPIC = "/robot_1/observation"


def _observation(key: str) -> bytes:
    return serialize_message(float32_array(np.zeros(3, dtype=np.float32), key))


def test_step_key_is_read_from_serialized_arrays_without_decoding() -> None:
    assert step_key_of_cdr(_observation("robot_1-000004@17")) == "robot_1-000004@17"
    assert step_key_of_cdr(serialize_message(step_record("robot_1-000000", 3, 1.0, 0.0, False, True))) == \
        "robot_1-000000@3"
    assert step_key_of_cdr(serialize_message(float32_array(np.zeros(2, dtype=np.float32)))) == ""
    assert step_key_of_cdr(serialize_message(Float32MultiArray())) is None   # no dimension at all
    assert step_key_of_cdr(serialize_message(Float64MultiArray())) is None
    assert step_key_of_cdr(b"\x00\x01") is None
    big_endian = b"\x00\x00\x00\x00" + struct.pack(">II", 1, 5) + b"e@12\x00" + bytes(12)
    assert step_key_of_cdr(big_endian) == "e@12"


def test_missing_steps_are_counted_per_topic() -> None:
    other = "/robot_2/step_record"
    gaps = StepGaps([TOPIC, other])
    for step in (3, 4, 7, 8, 8, 6, 9):            # starts mid-episode (not counted); 5, 6 skipped; 8, 6 repeat
        gaps.see(TOPIC, _observation(step_key("a", step)))
    for step in (2, 3):                           # a later episode that starts at step 2: 0 and 1 missing
        gaps.see(TOPIC, _observation(step_key("b", step)))
    gaps.see(TOPIC, _observation("no key here"))
    for step in range(5):
        gaps.see(other, _observation(step_key("c", step)))
    assert gaps.missing == {TOPIC: 4, other: 0}
    assert gaps.out_of_order == {TOPIC: 2, other: 0}
    assert gaps.unkeyed == {TOPIC: 1, other: 0}


def test_subscription_history_is_configurable() -> None:
    assert recorder_subscription_qos("keep_all", 10).history == HistoryPolicy.KEEP_ALL
    keep_last = recorder_subscription_qos("keep_last", 10)
    assert (keep_last.history, keep_last.depth) == (HistoryPolicy.KEEP_LAST, 10)
    with pytest.raises(ConfigError, match="qos_history 'keep_some'"):
        recorder_subscription_qos("keep_some", 10)


def test_recorder_reports_a_hole_in_the_published_steps(tmp_path: Path) -> None:
    out = tmp_path / "bags"
    ros_args = ["-p", "robots:=[gap_a, gap_b]", "-p", "topics:=[observation]", "-p", f"out_dir:={out}",
                "-p", "stats_period_s:=0.1"]
    holes = {"gap_a": {5, 6, 7, 20}, "gap_b": set()}
    published = 0
    with node_process("recorder", ros_args, tmp_path / "recorder.log") as recorder, \
            probe_node("gap_probe") as (node, executor):
        publishers = {robot: node.create_publisher(Float32MultiArray, f"/{robot}/observation", recorder_qos(100))
                      for robot in holes}
        spin_until(executor, lambda: all(p.get_subscription_count() > 0 for p in publishers.values()),
                   "the recorder's subscriptions", process=recorder)
        for robot, skipped in holes.items():
            episode = episode_id_for(robot, 0)
            for step in range(30):
                if step not in skipped:
                    publishers[robot].publish(float32_array(np.zeros(7, dtype=np.float32), step_key(episode, step)))
                    published += 1
        # A stats line counts the missing steps before the messages they came with as written.
        spin_until(executor, lambda: f"written {published}," in recorder.log_text(),
                   f"the recorder to write all {published} messages", process=recorder)
        assert recorder.stop() == 0, recorder.log_text()[-2000:]

    log = recorder.log_text()
    assert "missing steps: /gap_a/observation 4" in log
    assert "missing steps by topic: {'/gap_a/observation': 4}" in log
    (bag,) = [p for p in out.iterdir() if p.is_dir()]
    custom = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]["custom_data"]
    assert custom["saferule.recorder.missing_steps"] == "4"
    assert custom["saferule.recorder.missing_steps:/gap_a/observation"] == "4"
    assert "saferule.recorder.missing_steps:/gap_b/observation" not in custom
    assert (custom["saferule.recorder.written"], custom["saferule.recorder.lost_in_dds"]) == (str(published), "0")
