"""recorder: writes the robots' topics to rosbag2 bags (MCAP, via rosbags), split by size and time.

Subscriptions are reliable and take the serialized CDR bytes (no decode, no re-encode). With the
default `qos_history: keep_all` a recorder that falls behind makes DDS hold the samples and throttle
the publishers instead of overwriting them. Each executor wake-up of a subscription takes every
message DDS holds for it (up to TAKE_BATCH) and enqueues them as one batch: the per-message cost of
the executor (a wait set per message, and a busy wait in MultiThreadedExecutor) is what lost
messages at a few thousand per second. One writer thread drains the queue into the current bag
and starts a new bag (a directory `<prefix>_<start>_<NNN>` with its .mcap and metadata.yaml) when
the current one reaches `split_max_bytes` or `split_max_duration_s`. A bag is complete once its
metadata.yaml exists (rosbags writes it last, atomically), so a reader never mistakes a bag being
written for a finished one. When `queue_size` messages wait for the writer, the subscriptions wait
too (back pressure into DDS).

A recorder killed outright (kill -9) leaves its current bag without metadata.yaml. The writer thread
bounds what that loses: every `flush_period_s` it closes rosbags' open chunk (up to 1 MiB otherwise
kept in memory) and flushes the file to the OS (no fsync: a power loss may lose more), and it holds
a lock on the bag directory while writing. At its next start the recorder recovers every unlocked
bag left open in out_dir (`saferule_core.data.bag_recovery`; `saferule from-bags` does the same):
what was flushed is kept, the rest is lost.

Loss upstream of the recorder (a KEEP_LAST history overwritten in DDS, a publisher's own queue)
never reaches its received/written counters, so the writer thread also checks the step keys
("<episode_id>@<step>" in layout.dim[0].label): steps skipped within an episode count as
missing_steps per topic. DDS's own message_lost event (e.g. a publisher that overwrote samples not
yet acknowledged) counts as lost_in_dds. Counts are logged every `stats_period_s`, at shutdown and
kept in each bag's custom_data (totals, and missing steps per topic that has any).

    python -m saferule_ros.recorder --ros-args --params-file config/recorder.yaml
"""

from __future__ import annotations

import queue
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rclpy.event_handler import QoSMessageLostInfo, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile
from rclpy.subscription import MessageInfo, Subscription
from rosbags.interfaces import Connection
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from saferule_core.data.bag_recovery import BagLock, recover_open_bags
from saferule_ros.params import ConfigError, declare_config
from saferule_ros.spin import run_node
from saferule_ros.topics import RECORDABLE_TOPICS, parse_step_key, recorder_qos, ros_type_name

BAG_VERSION = 9
TAKE_BATCH = 2048          # messages taken per wake-up at most, so that timers and other topics get a turn
QUEUE_FULL_POLL_S = 0.001
QOS_HISTORIES = {"keep_all": HistoryPolicy.KEEP_ALL, "keep_last": HistoryPolicy.KEEP_LAST}
CUSTOM_DATA_PREFIX = "saferule.recorder."

# (receive time in ns, serialized message)
Batch = list[tuple[int, bytes]]


@dataclass
class RecorderConfig:
    robots: list[str] = field(default_factory=lambda: ["robot_1"])   # namespaces, e.g. robot_1 or fleet/robot_1
    topics: list[str] = field(default_factory=lambda: ["observation", "applied_action", "step_record"])
    out_dir: str = "bags"
    bag_prefix: str = "saferule"
    split_max_bytes: int = 256 * 1024 * 1024
    split_max_duration_s: float = 600.0
    queue_size: int = 100_000
    qos_history: str = "keep_all"
    qos_depth: int = 1000
    stats_period_s: float = 10.0
    flush_period_s: float = 1.0     # at most this much recording is lost when the recorder is killed


def recorder_subscription_qos(history: str, depth: int) -> QoSProfile:
    if history not in QOS_HISTORIES:
        raise ConfigError(f"qos_history {history!r}: expected one of {', '.join(QOS_HISTORIES)}")
    qos = recorder_qos(depth)
    qos.history = QOS_HISTORIES[history]
    return qos


# ----- step keys in serialized messages ----------------------------------------------------------
_UINT32_PAIR = {True: struct.Struct("<II"), False: struct.Struct(">II")}


def step_key_of_cdr(data: bytes) -> str | None:
    """layout.dim[0].label of a serialized Float32MultiArray / Float64MultiArray, read without
    deserializing; None when the message has no dimension (or is too short to hold one).

    CDR: a 4-byte encapsulation header (bit 0 of byte 1 set = little endian), then layout.dim's
    element count (uint32) and the first dimension's label as uint32 length (with the NUL) + bytes.
    """
    if len(data) < 12:
        return None
    dims, size = _UINT32_PAIR[bool(data[1] & 1)].unpack_from(data, 4)
    if dims == 0 or size == 0 or 12 + size > len(data):
        return None
    return data[12:11 + size].decode("utf-8", "replace")


class StepGaps:
    """Steps missing from each topic's stream of step keys (writer thread only; the counters are
    read by other threads, so their keys are fixed up front).

    Within an episode each step should follow the last one seen: a jump from k to k + n counts n - 1
    missing. An episode that first shows up at step k > 0 counts k missing, except the first episode
    of a topic (the recording may start mid-episode). A step at or before the last one seen counts
    as out_of_order; a message without a step key as unkeyed. Messages lost after the last one of an
    episode that arrives are not visible here.
    """

    RECENT_EPISODES = 8   # per topic; robots interleave few episodes, the rest are forgotten

    def __init__(self, topics: Iterable[str]) -> None:
        topics = list(topics)
        self.missing: Counter[str] = Counter(dict.fromkeys(topics, 0))
        self.out_of_order: Counter[str] = Counter(dict.fromkeys(topics, 0))
        self.unkeyed: Counter[str] = Counter(dict.fromkeys(topics, 0))
        self._last_step: dict[str, dict[str, int]] = {}

    def see(self, topic: str, data: bytes) -> None:
        label = step_key_of_cdr(data)
        try:
            episode, step = parse_step_key(label or "")
        except ValueError:
            self.unkeyed[topic] += 1
            return
        episodes = self._last_step.get(topic)
        if episodes is None:
            self._last_step[topic] = {episode: step}
            return
        last = episodes.get(episode)
        if last is None:
            self.missing[topic] += step
            episodes[episode] = step
            if len(episodes) > self.RECENT_EPISODES:
                del episodes[next(iter(episodes))]
        elif step > last:
            self.missing[topic] += step - last - 1
            episodes[episode] = step
        else:
            self.out_of_order[topic] += 1


# ----- bags --------------------------------------------------------------------------------------
class _BagSeries:
    """The current bag of a recording and the rule for starting the next one (writer thread only)."""

    def __init__(self, out_dir: Path, prefix: str, max_bytes: int, max_duration_ns: int,
                 custom_data: Callable[[], dict[str, str]]) -> None:
        self.out_dir = out_dir
        self.custom_data = custom_data   # written into each bag's metadata when it is closed
        self.stem = f"{prefix}_{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
        self.max_bytes = max_bytes
        self.max_duration_ns = max_duration_ns
        self.typestore = get_typestore(Stores.ROS2_KILTED)
        self.index = 0
        self.writer: Writer | None = None
        self.lock: BagLock | None = None
        self.connections: dict[str, Connection] = {}
        self.bytes = 0
        self.first_ns = 0
        self.unflushed = 0   # messages written since the last flush: what a crash now would lose
        self.closed: list[Path] = []

    def _open(self, first_ns: int) -> Writer:
        path = self.out_dir / f"{self.stem}_{self.index:03d}"
        while path.exists():  # a restart within the same second
            self.index += 1
            path = self.out_dir / f"{self.stem}_{self.index:03d}"
        self.index += 1
        writer = Writer(path, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
        writer.open()
        self.lock = BagLock(path)
        self.lock.acquire()   # a new directory: nobody else holds it
        self.writer, self.connections, self.bytes, self.first_ns = writer, {}, 0, first_ns
        return writer

    def write(self, topic: str, msgtype: str, time_ns: int, data: bytes) -> None:
        writer = self.writer
        if writer is not None and (self.bytes >= self.max_bytes or time_ns - self.first_ns >= self.max_duration_ns):
            self.close()
            writer = None
        if writer is None:
            writer = self._open(time_ns)
        connection = self.connections.get(topic)
        if connection is None:
            connection = writer.add_connection(topic, msgtype, typestore=self.typestore)
            self.connections[topic] = connection
        writer.write(connection, time_ns, data)
        self.bytes += len(data)
        self.unflushed += 1

    def flush(self) -> None:
        """Put every message written so far into the file, where a crash cannot take it: rosbags
        keeps its open chunk in memory (up to 1 MiB) and has no flush of its own."""
        storage = self.writer.storage if self.writer is not None else None
        if storage is None or not self.unflushed:
            return
        close_chunk, bio = getattr(storage, "close_chunk", None), getattr(storage, "bio", None)
        if close_chunk is None or bio is None:  # not rosbags' MCAP writer: nothing to do
            return
        close_chunk()
        bio.flush()
        self.unflushed = 0

    def close(self) -> None:
        if self.writer is None:
            return
        for key, value in self.custom_data().items():
            self.writer.set_custom_data(key, value)
        self.writer.close()
        self.closed.append(self.writer.path)
        self.writer = None
        self.unflushed = 0
        if self.lock is not None:
            self.lock.release()
            self.lock = None


# ----- node --------------------------------------------------------------------------------------
class _TopicTap:
    """One subscription's callback: the message the executor took plus all that DDS holds besides."""

    def __init__(self, recorder: Recorder, topic: str) -> None:
        self.recorder = recorder
        self.topic = topic
        self.subscription: Subscription | None = None

    def on_message(self, data: bytes, info: MessageInfo) -> None:
        batch: Batch = [(info["received_timestamp"] or time.time_ns(), data)]
        subscription = self.subscription
        if subscription is not None:
            handle, msg_type = subscription.handle, subscription.msg_type
            with handle:
                while len(batch) < TAKE_BATCH:
                    taken = handle.take_message(msg_type, True)
                    if taken is None:
                        break
                    batch.append((taken[1]["received_timestamp"] or time.time_ns(), taken[0]))
        self.recorder.enqueue(self.topic, batch)

    def on_lost(self, info: QoSMessageLostInfo) -> None:
        self.recorder.lost_in_dds[self.topic] += info.total_count_change


class Recorder(Node):
    def __init__(self, node_name: str = "recorder", **kwargs: object) -> None:
        super().__init__(node_name, **kwargs)  # type: ignore[arg-type]
        cfg = self.config = declare_config(self, RecorderConfig)
        unknown = [t for t in cfg.topics if t not in RECORDABLE_TOPICS]
        if unknown or not cfg.topics or not cfg.robots:
            raise ConfigError(f"topics {cfg.topics} / robots {cfg.robots}: name at least one robot and topics among "
                              f"{', '.join(RECORDABLE_TOPICS)}")
        if min(cfg.split_max_bytes, cfg.split_max_duration_s, cfg.queue_size, cfg.qos_depth, cfg.flush_period_s) <= 0:
            raise ConfigError("split_max_bytes, split_max_duration_s, queue_size, qos_depth and flush_period_s "
                              "must be > 0")
        qos = recorder_subscription_qos(cfg.qos_history, cfg.qos_depth)
        self.types: dict[str, str] = {f"/{robot.strip('/')}/{name}": ros_type_name(RECORDABLE_TOPICS[name])
                                      for robot in cfg.robots for name in cfg.topics}
        # Each counter has one writing thread (received/dropped: the executor's, the rest: the
        # writer's) and all its keys from the start, so that reading it from another thread is safe.
        self.received: Counter[str] = Counter(dict.fromkeys(self.types, 0))
        self.written: Counter[str] = Counter(dict.fromkeys(self.types, 0))
        self.dropped: Counter[str] = Counter(dict.fromkeys(self.types, 0))       # writer thread gone
        self.lost_in_dds: Counter[str] = Counter(dict.fromkeys(self.types, 0))   # DDS's message_lost event
        self.write_failed: Counter[str] = Counter(dict.fromkeys(self.types, 0))  # storage errors
        self.steps = StepGaps(self.types)
        self._enqueued = 0   # messages, executor side
        self._dequeued = 0   # messages, writer side
        self._queue: queue.SimpleQueue[tuple[str, Batch] | None] = queue.SimpleQueue()
        self.bags = _BagSeries(Path(cfg.out_dir).expanduser(), cfg.bag_prefix, cfg.split_max_bytes,
                               int(cfg.split_max_duration_s * 1e9), self._custom_data)
        self.bags.out_dir.mkdir(parents=True, exist_ok=True)

        for robot in cfg.robots:
            for name in cfg.topics:
                topic = f"/{robot.strip('/')}/{name}"
                tap = _TopicTap(self, topic)
                events = SubscriptionEventCallbacks(message_lost=tap.on_lost)
                tap.subscription = self.create_subscription(RECORDABLE_TOPICS[name], topic, tap.on_message, qos,
                                                            raw=True, event_callbacks=events)
        self._writer_thread = threading.Thread(target=self._drain, name="bag-writer", daemon=True)
        self._writer_thread.start()
        self.create_timer(cfg.stats_period_s, self._log_stats)
        self.get_logger().info(f"recording {len(self.types)} topics to {self.bags.out_dir}/{self.bags.stem}_NNN "
                               f"(MCAP, split at {cfg.split_max_bytes} bytes or {cfg.split_max_duration_s:g} s; "
                               f"{cfg.qos_history} reliable subscriptions)")

    def enqueue(self, topic: str, batch: Batch) -> None:
        """Hand a batch to the writer thread; while the queue is full, wait (DDS holds the rest)."""
        self.received[topic] += len(batch)
        while self._enqueued - self._dequeued >= self.config.queue_size:
            if not self._writer_thread.is_alive():
                self.dropped[topic] += len(batch)
                return
            time.sleep(QUEUE_FULL_POLL_S)
        self._enqueued += len(batch)
        self._queue.put((topic, batch))

    def _recover_left_open(self) -> None:
        """Bags a crashed recorder left open in out_dir become complete bags (before this recorder
        opens its first bag; meanwhile the queue holds what arrives)."""
        def failed(bag: Path, err: Exception) -> None:
            self.get_logger().error(f"cannot recover {bag}, left open by a crash: {err}")

        try:
            recovered = recover_open_bags([self.bags.out_dir], on_error=failed)
        except Exception as err:  # whatever it is, it must not stop this recording
            failed(self.bags.out_dir, err)
            return
        for recovery in recovered:
            self.get_logger().warning(f"recovered a bag left open by a crash: {recovery.summary()}")

    def _drain(self) -> None:
        self._recover_left_open()
        period_s = self.config.flush_period_s
        next_flush = time.monotonic() + period_s
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, next_flush - time.monotonic()))
            except queue.Empty:
                item = ("", [])   # nothing arrived: only the flush is due
            if item is None:
                break
            self._write(*item)
            if time.monotonic() >= next_flush:
                self._flush()
                next_flush = time.monotonic() + period_s
        self.bags.close()

    def _write(self, topic: str, batch: Batch) -> None:
        if not batch:
            return
        bags, steps, msgtype = self.bags, self.steps, self.types[topic]
        failed = 0
        for time_ns, data in batch:
            try:
                bags.write(topic, msgtype, time_ns, data)
            except Exception as err:  # disk full, permissions: count, say so, keep draining
                failed += 1
                self.get_logger().error(f"cannot write to bag: {err}", throttle_duration_sec=5.0)
            steps.see(topic, data)
        self.written[topic] += len(batch) - failed
        self.write_failed[topic] += failed
        self._dequeued += len(batch)

    def _flush(self) -> None:
        try:
            self.bags.flush()
        except Exception as err:  # disk full: what is unflushed stays in memory until the bag closes
            self.get_logger().error(f"cannot flush the bag: {err}", throttle_duration_sec=5.0)

    def _custom_data(self) -> dict[str, str]:
        """Recording totals so far (since the recorder started), kept in each bag's metadata; topics
        with missing steps also get one entry each."""
        data = {f"{CUSTOM_DATA_PREFIX}{name}": str(value) for name, value in self.counts().items()}
        data.update({f"{CUSTOM_DATA_PREFIX}missing_steps:{topic}": str(count)
                     for topic, count in self.missing_steps_by_topic().items()})
        return data

    def counts(self) -> dict[str, int]:
        return {"received": sum(self.received.values()), "written": sum(self.written.values()),
                "dropped": sum(self.dropped.values()),
                "lost_in_dds": sum(self.lost_in_dds.values()), "write_failed": sum(self.write_failed.values()),
                "missing_steps": sum(self.steps.missing.values()),
                "out_of_order": sum(self.steps.out_of_order.values()), "unkeyed": sum(self.steps.unkeyed.values()),
                "queued": self._enqueued - self._dequeued, "bags_closed": len(self.bags.closed)}

    def missing_steps_by_topic(self) -> dict[str, int]:
        return {topic: count for topic, count in self.steps.missing.items() if count}

    def _log_stats(self) -> None:
        line = ", ".join(f"{name} {value}" for name, value in self.counts().items())
        missing = self.missing_steps_by_topic()
        if missing:
            line += "; missing steps: " + ", ".join(f"{topic} {count}" for topic, count in missing.items())
        self.get_logger().info(line)

    def close(self) -> list[Path]:
        """Stop recording: write what is queued, close the current bag; returns the closed bags."""
        if self._writer_thread.is_alive():
            self._queue.put(None)
            self._writer_thread.join()
        missing = self.missing_steps_by_topic()
        self.get_logger().info(f"stopped: {self.counts()}; missing steps by topic: {missing}; "
                               f"bags: {', '.join(p.name for p in self.bags.closed)}")
        return list(self.bags.closed)


def main(args: Sequence[str] | None = None) -> int:
    # One thread, so run_node's SingleThreadedExecutor: every callback is in the node's one mutually
    # exclusive group anyway, and it takes 1.5-2x more messages/s unpaced than a one-thread
    # MultiThreadedExecutor, which busy-waits while a callback runs.
    return run_node(Recorder, args, threads=1)


if __name__ == "__main__":
    raise SystemExit(main())
