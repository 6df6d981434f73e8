"""Build an offline dataset from rosbag2 recordings of the robot topics (pure rosbags + numpy).

Wire layout of the robot topics. The ROS nodes in `saferule_ros` publish it; it lives here, free
of ROS, so that bags can be turned into datasets without rclpy. Per robot namespace `<ns>`:

    <ns>/observation     std_msgs/msg/Float32MultiArray  data = the observation (obs_dim floats)
    <ns>/applied_action  std_msgs/msg/Float32MultiArray  data = the action the robot applied (act_dim)
    <ns>/step_record     std_msgs/msg/Float64MultiArray  data = [reward, cost, terminated, truncated]

Every message carries its step key "<episode_id>@<step>" in `layout.dim[0].label`. Step t of an
episode is the transition observation(ep, t) --applied_action(ep, t)--> observation(ep, t + 1),
with step_record(ep, t) holding its reward, cost and end flags (1.0 / 0.0). An episode of T
steps therefore has observations 0..T (the last one is the final state, published before the
reset), actions 0..T-1 and step records 0..T-1. Episode ids are "<robot>-<seq>".

Alignment joins the three topics on the step key within each namespace; next_observation is the
observation with the following step of the same episode. Nothing is dropped silently: every
step record that cannot be aligned, every message that is malformed, duplicated or referenced by
no step record is counted in the `BagImportReport`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from saferule_core.data.dataset import EpisodeInfo, OfflineDataset
from saferule_core.errors import DatasetError

if TYPE_CHECKING:
    from saferule_core.tasks.spec import TaskSpec

# ----- wire layout ---------------------------------------------------------------------------
OBSERVATION_TOPIC = "observation"
APPLIED_ACTION_TOPIC = "applied_action"
STEP_RECORD_TOPIC = "step_record"
FLOAT32_ARRAY_TYPE = "std_msgs/msg/Float32MultiArray"
FLOAT64_ARRAY_TYPE = "std_msgs/msg/Float64MultiArray"
RECORDED_TOPIC_TYPES: dict[str, str] = {
    OBSERVATION_TOPIC: FLOAT32_ARRAY_TYPE,
    APPLIED_ACTION_TOPIC: FLOAT32_ARRAY_TYPE,
    STEP_RECORD_TOPIC: FLOAT64_ARRAY_TYPE,
}

STEP_RECORD_FIELDS: tuple[str, ...] = ("reward", "cost", "terminated", "truncated")
STEP_REWARD, STEP_COST, STEP_TERMINATED, STEP_TRUNCATED = range(len(STEP_RECORD_FIELDS))
STEP_KEY_SEPARATOR = "@"  # not allowed in ROS names, so it cannot occur in a robot id


def episode_id_for(robot_id: str, sequence: int) -> str:
    return f"{robot_id}-{sequence:06d}"


def step_key(episode_id: str, step: int) -> str:
    return f"{episode_id}{STEP_KEY_SEPARATOR}{step}"


def parse_step_key(label: str) -> tuple[str, int]:
    """(episode_id, step) from "<episode_id>@<step>"; ValueError for anything else."""
    episode_id, sep, step_text = label.rpartition(STEP_KEY_SEPARATOR)
    if not sep or not episode_id or not step_text.isdigit():
        raise ValueError(f"not a step key: {label!r} (expected '<episode_id>@<step>')")
    return episode_id, int(step_text)


def robot_id_from_namespace(namespace: str) -> str:
    """"/robot_1" -> "robot_1", "/fleet/robot_1" -> "fleet/robot_1", "/" -> "robot"."""
    return namespace.strip("/") or "robot"


# ----- report --------------------------------------------------------------------------------
@dataclass
class BagImportReport:
    """What was read and what could not be used, so that nothing is lost silently."""

    bags: list[str] = field(default_factory=list)
    robots: list[str] = field(default_factory=list)
    recovered_bags: list[str] = field(default_factory=list)   # left open by a crash, recovered first
    recovered_messages: int = 0          # ... the messages they still held (what was flushed)
    recovery_dropped_bytes: int = 0      # ... an unfinished record at the end, cut off by the crash
    ignored_topics: list[str] = field(default_factory=list)
    messages_read: int = 0
    malformed_messages: int = 0          # bad step key, wrong type or width, non-finite values
    duplicate_messages: int = 0          # same topic and step key again (the first one is kept)
    step_records: int = 0                # distinct step records
    transitions: int = 0                 # step records aligned into dataset rows
    missing_observation: int = 0         # step records whose observation(ep, t) was not recorded
    missing_next_observation: int = 0    # ... whose observation(ep, t + 1) was not recorded
    missing_action: int = 0              # ... whose applied_action(ep, t) was not recorded
    missing_step_records: int = 0        # holes in an episode's step numbers (0..last step)
    unused_observations: int = 0         # observations no step record refers to
    unused_actions: int = 0              # applied actions without a step record
    episodes: int = 0
    episodes_with_gaps: int = 0          # episodes whose rows are not consecutive steps from 0
    unfinished_episodes: int = 0         # last recorded step neither terminated nor truncated
    episodes_spanning_bags: int = 0      # source_bag names the bag of the episode's first row
    start_time: float = 0.0              # POSIX seconds of the first and last aligned message
    end_time: float = 0.0

    @property
    def dropped_steps(self) -> int:
        return self.step_records - self.transitions

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "dropped_steps": self.dropped_steps}

    def summary(self) -> str:
        lines = [
            f"{len(self.bags)} bags, {len(self.robots)} robots ({', '.join(self.robots)}), "
            f"{self.messages_read} messages read",
            f"{self.transitions} of {self.step_records} steps aligned into {self.episodes} episodes "
            f"({self.dropped_steps} dropped: {self.missing_observation} without observation, "
            f"{self.missing_next_observation} without next observation, {self.missing_action} without action)",
            f"{self.missing_step_records} step records missing inside episodes, {self.episodes_with_gaps} "
            f"episodes with gaps, {self.unfinished_episodes} unfinished, {self.episodes_spanning_bags} span bags",
            f"{self.malformed_messages} malformed and {self.duplicate_messages} duplicate messages; "
            f"{self.unused_observations} observations and {self.unused_actions} actions without a step record",
        ]
        if self.recovered_bags:
            lines.append(f"{len(self.recovered_bags)} bags left open by a crash were recovered "
                         f"({', '.join(self.recovered_bags)}): {self.recovered_messages} messages, "
                         f"{self.recovery_dropped_bytes} bytes of an unfinished record dropped")
        if self.ignored_topics:
            lines.append(f"ignored topics: {', '.join(self.ignored_topics)}")
        return "\n".join(lines)


# ----- finding and reading bags --------------------------------------------------------------
def find_bags(paths: Iterable[Path | str]) -> list[Path]:
    """Bag directories (with metadata.yaml) or storage files (.mcap, .db3) named by `paths`.

    A directory without metadata.yaml stands for the bag directories directly inside it (e.g. a
    recorder's output directory); a directory with neither is refused.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DatasetError(f"bag {path} does not exist")
        if path.is_file():
            if path.suffix not in (".mcap", ".db3"):
                raise DatasetError(f"{path} is not a bag (expected a bag directory, .mcap or .db3)")
            found.append(path)
        elif (path / "metadata.yaml").is_file():
            found.append(path)
        else:
            inner = sorted(p for p in path.iterdir() if p.is_dir() and (p / "metadata.yaml").is_file())
            if not inner:
                raise DatasetError(f"{path} has no metadata.yaml and holds no bag directories: a bag still being "
                                   f"recorded, or one whose recorder died before closing it")
            found.extend(inner)
    if not found:
        raise DatasetError("no bags given")
    names = [bag.name for bag in found]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DatasetError(f"bag names must be unique (they are the episodes' source_bag); repeated: "
                           f"{', '.join(repeated)}")
    return found


@dataclass
class _Stamped:
    values: NDArray[Any]
    time_ns: int
    bag: str


@dataclass
class _RobotMessages:
    observations: dict[tuple[str, int], _Stamped] = field(default_factory=dict)
    actions: dict[tuple[str, int], _Stamped] = field(default_factory=dict)
    steps: dict[tuple[str, int], _Stamped] = field(default_factory=dict)


_TABLE_OF_TOPIC = {OBSERVATION_TOPIC: "observations", APPLIED_ACTION_TOPIC: "actions", STEP_RECORD_TOPIC: "steps"}


def _split_topic(topic: str) -> tuple[str, str] | None:
    """("/robot_1", "observation") for "/robot_1/observation"; None for other topics."""
    namespace, _, name = topic.rpartition("/")
    return (namespace or "/", name) if name in RECORDED_TOPIC_TYPES else None


def _read_bags(bags: Sequence[Path], spec: TaskSpec, report: BagImportReport,
               progress: bool) -> dict[str, _RobotMessages]:
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS2_KILTED)
    widths = {OBSERVATION_TOPIC: spec.obs_dim, APPLIED_ACTION_TOPIC: spec.act_dim,
              STEP_RECORD_TOPIC: len(STEP_RECORD_FIELDS)}
    robots: dict[str, _RobotMessages] = defaultdict(_RobotMessages)
    ignored: set[str] = set()
    for bag in bags:
        try:
            reader = Reader(bag)
            reader.open()
        except Exception as err:  # rosbags raises several kinds for unreadable bags
            raise DatasetError(f"cannot open bag {bag}: {err}") from None
        try:
            wanted = []
            for conn in reader.connections:
                parts = _split_topic(conn.topic)
                if parts is None:
                    ignored.add(conn.topic)
                elif conn.msgtype != RECORDED_TOPIC_TYPES[parts[1]]:
                    ignored.add(f"{conn.topic} ({conn.msgtype}, expected {RECORDED_TOPIC_TYPES[parts[1]]})")
                else:
                    wanted.append(conn)
            total = sum(conn.msgcount for conn in wanted)
            messages = reader.messages(connections=wanted) if wanted else iter(())
            for conn, time_ns, raw in tqdm(messages, total=total, desc=f"reading {bag.name}", unit="msg",
                                           disable=not progress):
                report.messages_read += 1
                namespace, name = _split_topic(conn.topic)  # type: ignore[misc]
                try:
                    msg: Any = typestore.deserialize_cdr(raw, conn.msgtype)
                    key = parse_step_key(msg.layout.dim[0].label if msg.layout.dim else "")
                except (ValueError, IndexError, AssertionError, KeyError, TypeError):
                    report.malformed_messages += 1
                    continue
                values = np.asarray(msg.data)
                if values.shape != (widths[name],) or not np.isfinite(values).all():
                    report.malformed_messages += 1
                    continue
                table = getattr(robots[robot_id_from_namespace(namespace)], _TABLE_OF_TOPIC[name])
                if key in table:
                    report.duplicate_messages += 1
                    continue
                table[key] = _Stamped(values, int(time_ns), bag.name)
        except DatasetError:
            raise
        except Exception as err:  # a truncated or corrupt storage file
            raise DatasetError(f"cannot read bag {bag}: {type(err).__name__}: {err}") from None
        finally:
            reader.close()
    report.ignored_topics = sorted(ignored)
    return robots


# ----- alignment -----------------------------------------------------------------------------
@dataclass
class _EpisodeRows:
    episode_id: str
    robot_id: str
    steps: list[int]
    source_bag: str      # the bag of the episode's first aligned step record
    start_ns: int
    end_ns: int
    bags: frozenset[str]  # every bag that held one of its aligned messages


def _align_robot(robot_id: str, messages: _RobotMessages, report: BagImportReport,
                 rows: dict[str, list[NDArray[Any]]], episodes: list[_EpisodeRows]) -> None:
    by_episode: dict[str, list[int]] = defaultdict(list)
    for episode_id, step in messages.steps:
        by_episode[episode_id].append(step)
    used_obs: set[tuple[str, int]] = set()
    used_actions: set[tuple[str, int]] = set()
    for episode_id, steps in by_episode.items():
        steps.sort()
        report.step_records += len(steps)
        report.missing_step_records += steps[-1] + 1 - len(steps)
        kept: list[int] = []
        bags: list[str] = []
        times: list[int] = []
        for step in steps:
            key, next_key = (episode_id, step), (episode_id, step + 1)
            used_obs.update((key, next_key))
            used_actions.add(key)
            obs, next_obs, action = (messages.observations.get(key), messages.observations.get(next_key),
                                     messages.actions.get(key))
            report.missing_observation += obs is None
            report.missing_next_observation += next_obs is None
            report.missing_action += action is None
            if obs is None or next_obs is None or action is None:
                continue
            record = messages.steps[key]
            rows["observations"].append(obs.values)
            rows["next_observations"].append(next_obs.values)
            rows["actions"].append(action.values)
            rows["records"].append(record.values)
            kept.append(step)
            bags += [record.bag, obs.bag, next_obs.bag, action.bag]
            times += [obs.time_ns, next_obs.time_ns]
        if not kept:
            continue
        last = messages.steps[(episode_id, steps[-1])].values
        report.unfinished_episodes += not (last[STEP_TERMINATED] or last[STEP_TRUNCATED])
        report.episodes_with_gaps += kept != list(range(len(kept)))
        report.episodes_spanning_bags += len(set(bags)) > 1
        episodes.append(_EpisodeRows(episode_id, robot_id, kept, bags[0], min(times), max(times), frozenset(bags)))
    report.unused_observations += len(messages.observations.keys() - used_obs)
    report.unused_actions += len(messages.actions.keys() - used_actions)


@dataclass
class BagEpisodes:
    """What `read_bag_episodes` found: the dataset, its import report, and per episode (in dataset
    order) the bags its messages came from."""

    dataset: OfflineDataset
    report: BagImportReport
    episode_bags: list[frozenset[str]]


def dataset_from_bags(paths: Sequence[Path | str], task: str, progress: bool = False
                      ) -> tuple[OfflineDataset, BagImportReport]:
    """Read the robot topics of every bag in `paths` (see `find_bags`) and align them into a dataset.

    MCAP bags left open by a crash (no metadata.yaml, not locked by a recorder still writing them)
    are first recovered in place (see `bag_recovery`), so that what was written before the crash is
    read too. Episodes are ordered by start time; each row block is in step order. Raises
    DatasetError when no step can be aligned.
    """
    found = read_bag_episodes(paths, task, progress)
    return found.dataset, found.report


def read_bag_episodes(paths: Sequence[Path | str], task: str, progress: bool = False) -> BagEpisodes:
    """`dataset_from_bags`, also telling which bags each episode came from."""
    from saferule_core.data.bag_recovery import recover_open_bags
    from saferule_core.tasks.spec import get_task  # importing saferule_core.tasks loads gymnasium

    spec = get_task(task)
    recovered = recover_open_bags(paths)
    bags = find_bags(paths)
    report = BagImportReport(bags=[bag.name for bag in bags], recovered_bags=[r.bag.name for r in recovered],
                             recovered_messages=sum(r.messages for r in recovered),
                             recovery_dropped_bytes=sum(r.dropped_bytes for r in recovered))
    robots = _read_bags(bags, spec, report, progress)
    report.robots = sorted(robots)
    rows: dict[str, list[NDArray[Any]]] = defaultdict(list)
    episodes: list[_EpisodeRows] = []
    for robot_id in report.robots:
        _align_robot(robot_id, robots[robot_id], report, rows, episodes)
    ids = [ep.episode_id for ep in episodes]
    if len(set(ids)) != len(ids):
        repeated = sorted({eid for eid in ids if ids.count(eid) > 1})
        raise DatasetError(f"episode ids recorded under more than one namespace: {', '.join(repeated[:5])}; "
                           f"give every robot its own robot_id")
    if not episodes:
        raise DatasetError(f"no step could be aligned in {len(bags)} bags for task {spec.name} (observation width "
                           f"{spec.obs_dim}, action width {spec.act_dim}):\n{report.summary()}")
    report.transitions = sum(len(ep.steps) for ep in episodes)
    report.episodes = len(episodes)

    # Rows were appended episode by episode; reorder whole episodes by start time.
    lengths = np.array([len(ep.steps) for ep in episodes], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    order = np.argsort([ep.start_ns for ep in episodes], kind="stable")
    row_order = np.concatenate([np.arange(starts[i], starts[i] + lengths[i]) for i in order])
    records = np.stack(rows["records"])[row_order]
    episode_list = [episodes[i] for i in order]
    dataset = OfflineDataset(
        observations=np.stack(rows["observations"])[row_order],
        next_observations=np.stack(rows["next_observations"])[row_order],
        actions=np.stack(rows["actions"])[row_order],
        rewards=records[:, STEP_REWARD],
        costs=records[:, STEP_COST],
        terminals=(records[:, STEP_TERMINATED] != 0),
        timeouts=(records[:, STEP_TRUNCATED] != 0),
        episodes=[EpisodeInfo(ep.episode_id, ep.robot_id, ep.source_bag, ep.start_ns / 1e9, ep.end_ns / 1e9)
                  for ep in episode_list],
        episode_lengths=lengths[order],
        task=spec.name,
        attrs={"source": "rosbag2", "source_bags": json.dumps(report.bags)},
    )
    report.start_time = min(ep.start_ns for ep in episodes) / 1e9
    report.end_time = max(ep.end_ns for ep in episodes) / 1e9
    dataset.attrs["from_bags_report"] = json.dumps(report.to_json(), sort_keys=True)
    return BagEpisodes(dataset, report, [ep.bags for ep in episode_list])


def import_bags(paths: Sequence[Path | str], task: str, out: Path | str, *, overwrite: bool = False,
                progress: bool = False) -> BagImportReport:
    """`dataset_from_bags`, then write the dataset to `out` with `DatasetStore.create`."""
    from saferule_core.data.store import DatasetStore

    dataset, report = dataset_from_bags(paths, task, progress=progress)
    DatasetStore.create(out, dataset, overwrite=overwrite, progress=progress)
    return report
