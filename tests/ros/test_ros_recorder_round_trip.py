"""recorder in its own process: a burst of two robots' topics -> split MCAP bags -> from_bags dataset,
with every count matched (published = received = written = aligned)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from rclpy.publisher import Publisher
from std_msgs.msg import Float32MultiArray, Float64MultiArray

from saferule_core.data.from_bags import dataset_from_bags
from saferule_ros.conversions import float32_array, step_record
from saferule_ros.topics import episode_id_for, recorder_qos, step_key
from tests.ros.ros_harness import CONFIG_DIR, node_process, probe_node, spin_until

pytestmark = pytest.mark.ros

ROBOTS = ("rec_a", "rec_b")
EPISODES, STEPS = 3, 25


def test_recorder_bags_round_trip_into_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "bags"
    ros_args = ["--params-file", str(CONFIG_DIR / "recorder.yaml"), "-p", f"robots:=[{', '.join(ROBOTS)}]",
                "-p", f"out_dir:={out}", "-p", "split_max_bytes:=6000", "-p", "stats_period_s:=0.1"]
    rng = np.random.default_rng(0)
    started = time.time()
    sent: dict[str, dict[str, np.ndarray]] = {}
    with node_process("recorder", ros_args, tmp_path / "recorder.log") as recorder, \
            probe_node("fleet_probe") as (node, executor):
        qos = recorder_qos(1000)  # the test side keeps the whole burst too
        publishers: dict[str, dict[str, Publisher]] = {
            robot: {"observation": node.create_publisher(Float32MultiArray, f"/{robot}/observation", qos),
                    "applied_action": node.create_publisher(Float32MultiArray, f"/{robot}/applied_action", qos),
                    "step_record": node.create_publisher(Float64MultiArray, f"/{robot}/step_record", qos)}
            for robot in ROBOTS}
        spin_until(executor, lambda: all(p.get_subscription_count() > 0 for pubs in publishers.values()
                                         for p in pubs.values()), "the recorder's subscriptions", process=recorder)
        published = 0
        for seq in range(EPISODES):
            for robot in ROBOTS:  # robots interleaved, each episode published as one burst
                pubs, episode = publishers[robot], episode_id_for(robot, seq)
                obs = rng.normal(size=(STEPS + 1, 7)).astype(np.float32)
                actions = rng.uniform(-1, 1, size=(STEPS, 2)).astype(np.float32)
                rewards, costs = rng.normal(size=STEPS), (rng.random(STEPS) < 0.2).astype(float)
                sent[episode] = {"obs": obs, "actions": actions, "rewards": rewards, "costs": costs}
                for t in range(STEPS):
                    pubs["observation"].publish(float32_array(obs[t], step_key(episode, t)))
                    pubs["applied_action"].publish(float32_array(actions[t], step_key(episode, t)))
                    pubs["step_record"].publish(step_record(episode, t, rewards[t], costs[t], False, t == STEPS - 1))
                pubs["observation"].publish(float32_array(obs[STEPS], step_key(episode, STEPS)))
                published += 3 * STEPS + 1
        spin_until(executor, lambda: f"received {published}," in recorder.log_text(),
                   f"the recorder to receive all {published} messages", process=recorder)
        assert recorder.stop() == 0, recorder.log_text()[-2000:]

    bags = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(bags) >= 2, "split_max_bytes should have split the recording"
    for bag in bags:
        assert (bag / "metadata.yaml").is_file() and (bag / f"{bag.name}.mcap").is_file()
    meta = yaml.safe_load((bags[-1] / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == "mcap"
    totals = {key.rsplit(".", 1)[1]: int(value) for key, value in meta["custom_data"].items()}
    assert (totals["received"], totals["written"], totals["dropped"]) == (published, published, 0)
    assert (totals["missing_steps"], totals["lost_in_dds"], totals["out_of_order"], totals["unkeyed"]) == (0, 0, 0, 0)
    in_bags = sum(yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
                  ["message_count"] for bag in bags)
    assert in_bags == published
    assert re.search(rf"stopped: .*'written': {published}", recorder.log_text())

    dataset, report = dataset_from_bags([out], "BallRun")
    assert report.messages_read == published
    assert (report.step_records, report.transitions, report.dropped_steps) == (len(sent) * STEPS, len(sent) * STEPS, 0)
    assert (report.unused_observations, report.unused_actions, report.duplicate_messages,
            report.malformed_messages, report.unfinished_episodes) == (0, 0, 0, 0, 0)
    assert sorted(dataset.episode_ids()) == sorted(sent)
    assert {ep.robot_id for ep in dataset.episodes} == set(ROBOTS)
    assert {ep.source_bag for ep in dataset.episodes} <= {bag.name for bag in bags}
    for i, ep in enumerate(dataset.episodes):
        rows = slice(int(dataset.episode_starts[i]), int(dataset.episode_starts[i]) + STEPS)
        want = sent[ep.episode_id]
        assert ep.start_time <= ep.end_time and abs(ep.start_time - started) < 600  # receive times, POSIX clock
        np.testing.assert_array_equal(dataset.observations[rows], want["obs"][:-1])
        np.testing.assert_array_equal(dataset.next_observations[rows], want["obs"][1:])
        np.testing.assert_array_equal(dataset.actions[rows], want["actions"])
        np.testing.assert_allclose(dataset.rewards[rows], want["rewards"], rtol=1e-6)
        assert dataset.timeouts[rows].tolist() == [0.0] * (STEPS - 1) + [1.0]
