"""Bags left open by a crash (no metadata.yaml, an MCAP without summary or footer) are recovered:
what the writer had flushed is kept, the unflushed tail is what a crash loses."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from saferule_core.data.bag_recovery import BagLock, recover_bag, recover_open_bags
from saferule_core.data.from_bags import dataset_from_bags
from saferule_core.errors import DatasetError
from tests.core.data.test_data_from_bags import (  # noqa: F401  (fleet: the fixture, shared)
    TYPESTORE,
    Episode,
    Message,
    by_time,
    fleet,
    serialize,
    topic_type,
    write_bag,
)


class OpenBag:
    """A bag written the way the recorder writes it (rosbags MCAP, chunk closed and file flushed
    at each `flush`), never closed."""

    def __init__(self, path: Path) -> None:
        self.writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.connections: dict[str, object] = {}
        self.written = 0
        self.flushed = 0

    def write(self, messages: list[Message]) -> None:
        for msg in messages:
            if msg.topic not in self.connections:
                self.connections[msg.topic] = self.writer.add_connection(msg.topic, topic_type(msg.topic),
                                                                         typestore=TYPESTORE)
            self.writer.write(self.connections[msg.topic], msg.time_ns,  # type: ignore[arg-type]
                              serialize(msg.topic, msg.label, msg.data))
            self.written += 1

    def flush(self) -> None:
        storage = self.writer.storage
        storage.close_chunk()  # type: ignore[union-attr]
        storage.bio.flush()    # type: ignore[union-attr]
        self.flushed = self.written


def crash_copy(bag: Path, to: Path) -> Path:
    """The bag directory as a crash would leave it: the file as it is on disk, no metadata.yaml."""
    shutil.copytree(bag, to)
    return to


def read_count(bag: Path) -> int:
    reader = Reader(bag)
    reader.open()
    try:
        return sum(1 for _ in reader.messages())
    finally:
        reader.close()


def test_what_was_flushed_is_recovered_and_the_bag_becomes_readable(tmp_path: Path, fleet: list[Episode]) -> None:
    messages = by_time(fleet)
    live = OpenBag(tmp_path / "live")
    live.write(messages[:30])
    live.flush()
    live.write(messages[30:])   # not flushed: still in rosbags' open chunk when the crash comes
    crashed = crash_copy(tmp_path / "live", tmp_path / "rec" / "crashed")
    assert not (crashed / "metadata.yaml").exists()

    recovery = recover_bag(crashed)
    assert recovery is not None and (recovery.messages, recovery.dropped_bytes) == (30, 0)
    assert sum(recovery.topics.values()) == 30
    assert (crashed / "metadata.yaml").is_file() and not (crashed / ".recovering").exists()
    assert read_count(crashed) == 30
    meta = yaml.safe_load((crashed / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["custom_data"]["saferule.recovered.messages"] == "30" and meta["message_count"] == 30
    assert recover_bag(crashed) is None, "a complete bag is left alone"
    assert live.written == len(messages) > 30


def test_a_record_cut_off_mid_write_is_dropped_and_counted(tmp_path: Path, fleet: list[Episode]) -> None:
    messages = by_time(fleet)
    live = OpenBag(tmp_path / "live")
    live.write(messages[:20])
    live.flush()
    size_after_first = (tmp_path / "live" / "live.mcap").stat().st_size
    live.write(messages[20:40])
    live.flush()
    crashed = crash_copy(tmp_path / "live", tmp_path / "cut")
    mcap = crashed / "live.mcap"
    mcap.write_bytes(mcap.read_bytes()[:size_after_first + 100])   # the second chunk only began to reach the disk
    recovery = recover_bag(crashed)
    assert recovery is not None and recovery.messages == 20 and recovery.dropped_bytes == 100
    assert read_count(crashed) == 20 and [p.name for p in crashed.glob("*.mcap")] == ["cut.mcap"]


def test_a_bag_its_writer_still_holds_is_left_alone(tmp_path: Path, fleet: list[Episode]) -> None:
    live = OpenBag(tmp_path / "bags" / "live")
    live.write(by_time(fleet)[:10])
    live.flush()
    lock = BagLock(tmp_path / "bags" / "live")
    assert lock.acquire()
    try:
        assert recover_open_bags([tmp_path / "bags"]) == []
        assert not (tmp_path / "bags" / "live" / "metadata.yaml").exists()
    finally:
        lock.release()
    [recovery] = recover_open_bags([tmp_path / "bags"])
    assert recovery.messages == 10


def test_empty_and_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "empty.mcap").write_bytes(b"")   # killed before the header reached the disk
    recovery = recover_bag(tmp_path / "empty")
    assert recovery is not None and recovery.messages == 0 and read_count(tmp_path / "empty") == 0
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "junk.mcap").write_bytes(b"not an mcap file at all")
    with pytest.raises(DatasetError, match="not an MCAP file"):
        recover_bag(tmp_path / "junk")
    assert (tmp_path / "junk" / "junk.mcap").read_bytes() == b"not an mcap file at all", "left as it was"
    failures: list[Path] = []
    assert recover_open_bags([tmp_path / "junk"], on_error=lambda bag, err: failures.append(bag)) == []
    assert failures == [tmp_path / "junk"]


def test_from_bags_recovers_and_reports_a_bag_left_open(tmp_path: Path, fleet: list[Episode]) -> None:
    write_bag(tmp_path / "rec" / "bag_000", by_time(fleet[:2]))
    live = OpenBag(tmp_path / "live")
    live.write(by_time(fleet[2:]))
    live.flush()
    crash_copy(tmp_path / "live", tmp_path / "rec" / "bag_001")
    dataset, report = dataset_from_bags([tmp_path / "rec"], "BallRun")
    assert report.bags == ["bag_000", "bag_001"] and report.recovered_bags == ["bag_001"]
    assert report.recovered_messages == live.flushed == sum(len(ep.messages) for ep in fleet[2:])
    assert report.transitions == 15 and "1 bags left open by a crash were recovered" in report.summary()
    again = dataset_from_bags([tmp_path / "rec"], "BallRun")[1]
    assert again.recovered_bags == [] and again.transitions == 15


WRITE_THEN_HANG = """
import sys, time
import numpy as np
from tests.core.data.test_data_bag_recovery import OpenBag
from tests.core.data.test_data_from_bags import Message, OBSERVATION_TOPIC
bag = OpenBag(__import__("pathlib").Path(sys.argv[1]))
msgs = [Message(f"/robot_1/{OBSERVATION_TOPIC}", 1000 + i, f"robot_1-000000@{i}", np.zeros(7)) for i in range(500)]
bag.write(msgs[:300])
bag.flush()
bag.write(msgs[300:])
print(bag.flushed, flush=True)
time.sleep(60)
"""


def test_a_writer_killed_with_sigkill_loses_only_its_unflushed_tail(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[3]
    proc = subprocess.Popen([sys.executable, "-c", WRITE_THEN_HANG, str(tmp_path / "killed")], cwd=repo,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        flushed = int(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    recovery = recover_bag(tmp_path / "killed")
    assert recovery is not None and recovery.messages == flushed == 300
    assert read_count(tmp_path / "killed") == 300
