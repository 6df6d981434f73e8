"""Bags of robot topics (written here with rosbags, as the recorder or `ros2 bag record` would) -> dataset."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from saferule_core.cli import main as cli_main
from saferule_core.data.from_bags import (
    APPLIED_ACTION_TOPIC,
    OBSERVATION_TOPIC,
    RECORDED_TOPIC_TYPES,
    STEP_RECORD_TOPIC,
    dataset_from_bags,
    episode_id_for,
    find_bags,
    parse_step_key,
    step_key,
)
from saferule_core.data.store import DatasetStore
from saferule_core.errors import DatasetError

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
OBS_DIM, ACT_DIM = 7, 2  # BallRun
T0 = 1_700_000_000_000_000_000


@dataclass
class Message:
    topic: str
    time_ns: int
    label: str
    data: np.ndarray


def topic_type(topic: str) -> str:
    return RECORDED_TOPIC_TYPES.get(topic.rpartition("/")[2], "std_msgs/msg/Float32MultiArray")


def serialize(topic: str, label: str, data: np.ndarray) -> bytes:
    msgtype = topic_type(topic)
    dim = TYPESTORE.types["std_msgs/msg/MultiArrayDimension"](label=label, size=len(data), stride=len(data))
    layout = TYPESTORE.types["std_msgs/msg/MultiArrayLayout"](dim=[dim], data_offset=0)
    dtype = np.float32 if msgtype.endswith("Float32MultiArray") else np.float64
    msg = TYPESTORE.types[msgtype](layout=layout, data=np.asarray(data, dtype=dtype))
    return bytes(TYPESTORE.serialize_cdr(msg, msgtype))


def write_bag(path: Path, messages: list[Message], storage: StoragePlugin = StoragePlugin.MCAP) -> Path:
    writer = Writer(path, version=9, storage_plugin=storage)
    writer.open()
    connections = {}
    for msg in messages:
        if msg.topic not in connections:
            connections[msg.topic] = writer.add_connection(msg.topic, topic_type(msg.topic), typestore=TYPESTORE)
        writer.write(connections[msg.topic], msg.time_ns, serialize(msg.topic, msg.label, msg.data))
    writer.close()
    return path


@dataclass
class Episode:
    """What a sim robot publishes for one episode, and the rows a dataset should hold."""

    robot: str
    episode_id: str
    observations: np.ndarray   # [T + 1, obs_dim]
    actions: np.ndarray        # [T, act_dim]
    records: np.ndarray        # [T, 4]: reward, cost, terminated, truncated
    start_ns: int
    messages: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        ns = f"/{self.robot}"
        for t in range(len(self.actions) + 1):
            time_ns = self.start_ns + t * 20_000_000
            self.messages.append(Message(f"{ns}/{OBSERVATION_TOPIC}", time_ns, step_key(self.episode_id, t),
                                         self.observations[t]))
            if t < len(self.actions):
                key = step_key(self.episode_id, t)
                self.messages.append(Message(f"{ns}/{APPLIED_ACTION_TOPIC}", time_ns + 1000, key, self.actions[t]))
                self.messages.append(Message(f"{ns}/{STEP_RECORD_TOPIC}", time_ns + 2000, key, self.records[t]))


def make_episode(robot: str, seq: int, steps: int, start_ns: int, terminated: bool, seed: int) -> Episode:
    rng = np.random.default_rng(seed)
    records = np.zeros((steps, 4))
    records[:, 0] = rng.normal(size=steps)
    records[:, 1] = rng.random(steps) < 0.3
    records[-1, 2 if terminated else 3] = 1.0
    return Episode(robot, episode_id_for(robot, seq), rng.normal(size=(steps + 1, OBS_DIM)).astype(np.float32),
                   rng.uniform(-1, 1, size=(steps, ACT_DIM)).astype(np.float32), records, start_ns)


@pytest.fixture
def fleet() -> list[Episode]:
    """robot_1: episodes of 5 and 4 steps; robot_2: one of 6 steps, interleaved in time."""
    return [make_episode("robot_1", 0, 5, T0, terminated=True, seed=1),
            make_episode("robot_2", 0, 6, T0 + 5_000_000, terminated=False, seed=2),
            make_episode("robot_1", 1, 4, T0 + 200_000_000, terminated=False, seed=3)]


def by_time(episodes: list[Episode], extra: Callable[[list[Message]], list[Message]] = lambda m: m) -> list[Message]:
    return extra(sorted((m for ep in episodes for m in ep.messages), key=lambda m: m.time_ns))


def test_step_keys_round_trip_and_reject_garbage() -> None:
    assert parse_step_key(step_key("robot_1-000003", 17)) == ("robot_1-000003", 17)
    for bad in ("", "robot_1-000003", "@3", "robot_1@x", "robot_1@-1"):
        with pytest.raises(ValueError):
            parse_step_key(bad)


def test_split_bags_align_into_episodes_with_provenance(tmp_path: Path, fleet: list[Episode]) -> None:
    messages = by_time(fleet)
    cut = len(messages) // 3  # robot_1's first episode is split across the two bags
    write_bag(tmp_path / "rec" / "bag_000", messages[:cut])
    write_bag(tmp_path / "rec" / "bag_001", messages[cut:])
    dataset, report = dataset_from_bags([tmp_path / "rec"], "BallRun")

    assert report.bags == ["bag_000", "bag_001"] and report.robots == ["robot_1", "robot_2"]
    assert (report.step_records, report.transitions, report.dropped_steps) == (15, 15, 0)
    assert report.messages_read == len(messages)
    assert (report.malformed_messages, report.duplicate_messages, report.unused_observations,
            report.unused_actions, report.missing_step_records) == (0, 0, 0, 0, 0)
    assert report.unfinished_episodes == 0 and report.episodes_with_gaps == 0
    assert report.episodes_spanning_bags == 2  # the first two episodes straddle the cut

    assert dataset.task == "BallRun" and dataset.episode_ids() == [ep.episode_id for ep in fleet]
    assert dataset.episode_lengths.tolist() == [5, 6, 4]
    assert [info.source_bag for info in dataset.episodes] == ["bag_000", "bag_000", "bag_001"]
    for info, ep, start in zip(dataset.episodes, fleet, dataset.episode_starts):
        rows = slice(int(start), int(start) + len(ep.actions))
        assert info.robot_id == ep.robot
        assert info.start_time == pytest.approx(ep.start_ns / 1e9)
        assert info.end_time == pytest.approx((ep.start_ns + len(ep.actions) * 20_000_000) / 1e9)
        np.testing.assert_array_equal(dataset.observations[rows], ep.observations[:-1])
        np.testing.assert_array_equal(dataset.next_observations[rows], ep.observations[1:])
        np.testing.assert_array_equal(dataset.actions[rows], ep.actions)
        np.testing.assert_allclose(dataset.rewards[rows], ep.records[:, 0], rtol=1e-6)
        np.testing.assert_array_equal(dataset.costs[rows], ep.records[:, 1])
        np.testing.assert_array_equal(dataset.terminals[rows], ep.records[:, 2])
        np.testing.assert_array_equal(dataset.timeouts[rows], ep.records[:, 3])
    assert json.loads(dataset.attrs["source_bags"]) == ["bag_000", "bag_001"]
    assert json.loads(dataset.attrs["from_bags_report"])["transitions"] == 15


def test_lost_and_bad_messages_are_counted_not_hidden(tmp_path: Path, fleet: list[Episode]) -> None:
    ep = fleet[0]  # robot_1-000000, steps 0..4, observations 0..5
    lost = {(f"/robot_1/{OBSERVATION_TOPIC}", step_key(ep.episode_id, 2)),      # breaks steps 1 and 2
            (f"/robot_1/{APPLIED_ACTION_TOPIC}", step_key(ep.episode_id, 4)),   # breaks step 4
            (f"/robot_2/{STEP_RECORD_TOPIC}", step_key(fleet[1].episode_id, 5))}  # last step of robot_2: a hole

    def damage(messages: list[Message]) -> list[Message]:
        kept = [m for m in messages if (m.topic, m.label) not in lost]
        t = T0 + 999_000_000
        return kept + [
            kept[0],                                                               # duplicate
            Message(f"/robot_1/{OBSERVATION_TOPIC}", t, "no-key", np.zeros(OBS_DIM)),      # malformed key
            Message(f"/robot_1/{OBSERVATION_TOPIC}", t, step_key("robot_1-000009", 0), np.zeros(3)),  # width
            Message(f"/robot_1/{APPLIED_ACTION_TOPIC}", t, step_key("robot_1-000009", 0),
                    np.array([np.nan, 0.0])),                                      # non-finite
            Message(f"/robot_2/{APPLIED_ACTION_TOPIC}", t, step_key("robot_2-000042", 0), np.zeros(ACT_DIM)),
            Message("/robot_2/cmd_vel_debug", t, "x@0", np.zeros(2)),              # not a robot topic
        ]

    write_bag(tmp_path / "bag", by_time(fleet, damage))
    dataset, report = dataset_from_bags([tmp_path / "bag"], "BallRun")
    assert report.step_records == 14 and report.transitions == 11 and report.dropped_steps == 3
    assert (report.missing_observation, report.missing_next_observation, report.missing_action) == (1, 1, 1)
    assert report.missing_step_records == 0  # robot_2's lost record is its last one: no hole visible
    assert report.unfinished_episodes == 1  # ... so robot_2's episode now looks unfinished
    assert report.episodes_with_gaps == 1 and report.duplicate_messages == 1
    assert report.malformed_messages == 3
    # robot_2's last action and final observation lost their step record; robot_2-000042 never had one
    assert report.unused_actions == 2 and report.unused_observations == 1
    assert report.ignored_topics == ["/robot_2/cmd_vel_debug"]
    assert dataset.episode_lengths.tolist() == [2, 5, 4]
    assert dataset.num_transitions == report.transitions
    assert "3 dropped" in report.summary()


def test_a_hole_in_the_step_records_is_counted(tmp_path: Path, fleet: list[Episode]) -> None:
    hole = (f"/robot_1/{STEP_RECORD_TOPIC}", step_key(fleet[2].episode_id, 1))
    write_bag(tmp_path / "bag", by_time(fleet, lambda ms: [m for m in ms if (m.topic, m.label) != hole]))
    dataset, report = dataset_from_bags([tmp_path / "bag"], "BallRun")
    assert report.missing_step_records == 1 and report.episodes_with_gaps == 1
    assert report.unused_actions == 1 and report.transitions == 14
    assert dataset.episode_lengths.tolist() == [5, 6, 3]


def test_sqlite3_bags_from_ros2_bag_record_are_read(tmp_path: Path, fleet: list[Episode]) -> None:
    write_bag(tmp_path / "db3bag", by_time(fleet[:1]), storage=StoragePlugin.SQLITE3)
    dataset, report = dataset_from_bags([tmp_path / "db3bag"], "BallRun")
    assert report.transitions == 5 and dataset.episodes[0].source_bag == "db3bag"


def test_unusable_inputs_are_refused_with_a_reason(tmp_path: Path, fleet: list[Episode]) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "half.mcap").write_bytes(b"")
    with pytest.raises(DatasetError, match="no metadata.yaml"):
        find_bags([tmp_path / "half"])
    with pytest.raises(DatasetError, match="does not exist"):
        find_bags([tmp_path / "nope"])
    write_bag(tmp_path / "actions_only", [m for m in by_time(fleet) if m.topic.endswith(APPLIED_ACTION_TOPIC)])
    with pytest.raises(DatasetError, match="no step could be aligned"):
        dataset_from_bags([tmp_path / "actions_only"], "BallRun")
    write_bag(tmp_path / "a" / "same", by_time(fleet[:1]))
    write_bag(tmp_path / "b" / "same", by_time(fleet[1:2]))
    with pytest.raises(DatasetError, match="unique"):
        find_bags([tmp_path / "a" / "same", tmp_path / "b" / "same"])
    with pytest.raises(DatasetError, match="obs_dim|observation|aligned"):
        dataset_from_bags([tmp_path / "a" / "same"], "DroneRun")  # widths 17/4: every message malformed


def test_cli_from_bags_writes_a_dataset_and_a_report(tmp_path: Path, fleet: list[Episode],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    write_bag(tmp_path / "rec" / "bag_000", by_time(fleet))
    out, report_file = tmp_path / "ds", tmp_path / "report.json"
    code = cli_main(["from-bags", str(tmp_path / "rec"), "--task", "BallRun", "--out", str(out),
                     "--report", str(report_file)])
    assert code == 0
    assert "15 of 15 steps aligned into 3 episodes" in capsys.readouterr().out
    store = DatasetStore.open(out)
    assert store.num_transitions == 15 and store.episode_ids() == [ep.episode_id for ep in fleet]
    loaded = store.load()
    assert [ep.robot_id for ep in loaded.episodes] == ["robot_1", "robot_2", "robot_1"]
    assert json.loads(report_file.read_text())["dropped_steps"] == 0
    assert cli_main(["from-bags", str(tmp_path / "rec"), "--task", "BallRun", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
