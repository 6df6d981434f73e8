"""A recorder killed with SIGKILL leaves its bag open (no metadata.yaml); what it had flushed is
recovered, by `saferule from-bags` and by the next recorder started on the same directory."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
from rosbags.rosbag2 import Reader

from saferule_core.data.bag_recovery import recover_bag
from saferule_core.data.from_bags import dataset_from_bags
from saferule_ros.topics import episode_id_for
from tests.ros.ros_harness import CONFIG_DIR, RobotTopics, node_process, probe_node, spin_until

pytestmark = pytest.mark.ros

ROBOT, STEPS = "crash_a", 30


def recorder_args(out: Path) -> list[str]:
    return ["--params-file", str(CONFIG_DIR / "recorder.yaml"), "-p", f"robots:=[{ROBOT}]", "-p", f"out_dir:={out}",
            "-p", "stats_period_s:=0.1", "-p", "flush_period_s:=0.2"]


def recoverable(bag: Path, scratch: Path) -> int:
    """Messages a crash right now would leave readable (recovered from a copy; the bag stays open)."""
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(bag, scratch)
    recovery = recover_bag(scratch)
    return recovery.messages if recovery is not None else -1


def test_a_killed_recorders_bag_is_recovered_with_every_flushed_message(tmp_path: Path) -> None:
    out = tmp_path / "bags"
    with node_process("recorder", recorder_args(out), tmp_path / "killed.log") as killed, \
            probe_node("crash_probe") as (node, executor):
        topics = RobotTopics.create(node, ROBOT)
        spin_until(executor, topics.subscribed, "the recorder's subscriptions", process=killed)
        published = topics.publish_episode(episode_id_for(ROBOT, 0), STEPS)
        spin_until(executor, lambda: f"written {published}," in killed.log_text(),
                   f"the recorder to write {published} messages", process=killed)
        [bag] = [p for p in out.iterdir() if p.is_dir()]
        spin_until(executor, lambda: recoverable(bag, tmp_path / "scratch") == published,
                   "a flush of everything written", process=killed)
        killed.proc.send_signal(signal.SIGKILL)
        assert killed.proc.wait(timeout=30) == -signal.SIGKILL
    assert not (bag / "metadata.yaml").exists()
    shutil.copytree(out, tmp_path / "bags_again")

    dataset, report = dataset_from_bags([out], "BallRun")
    assert report.recovered_bags == [bag.name] and report.recovered_messages == published
    assert report.transitions == STEPS and report.messages_read == published
    assert f"{published} messages" in report.summary()

    again = tmp_path / "bags_again"
    with node_process("recorder", recorder_args(again), tmp_path / "restarted.log") as restarted, \
            probe_node("crash_probe_2") as (_, executor):
        line = f"recovered a bag left open by a crash: {bag.name}: {published} messages recovered"
        spin_until(executor, lambda: line in restarted.log_text(), "the restarted recorder's recovery",
                   process=restarted)
        assert restarted.stop() == 0
    reader = Reader(again / bag.name)
    reader.open()
    try:
        assert reader.message_count == published
    finally:
        reader.close()
