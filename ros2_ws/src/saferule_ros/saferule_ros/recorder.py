"""recorder: writes the robots' topics to rosbag2 bags (MCAP, via rosbags), split by size and time.

Subscriptions are reliable with a deep queue and take the serialized CDR bytes (no decode, no
re-encode); each callback only stamps and enqueues. One writer thread drains the queue into the
current bag and starts a new bag (a directory `<prefix>_<start>_<NNN>` with its .mcap and
metadata.yaml) when the current one reaches `split_max_bytes` or `split_max_duration_s`. A bag is
complete once its metadata.yaml exists (rosbags writes it last, atomically), so a reader never
mistakes a bag being written for a finished one. Counts of received, written and dropped
(queue full) messages are logged every `stats_period_s`, at shutdown and kept in each bag's
custom_data.

    python -m saferule_ros.recorder --ros-args --params-file config/recorder.yaml
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rclpy.node import Node
from rclpy.subscription import MessageInfo
from rosbags.interfaces import Connection
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from saferule_ros.params import ConfigError, declare_config
from saferule_ros.spin import run_node
from saferule_ros.topics import RECORDABLE_TOPICS, recorder_qos, ros_type_name

BAG_VERSION = 9


@dataclass
class RecorderConfig:
    robots: list[str] = field(default_factory=lambda: ["robot_1"])   # namespaces, e.g. robot_1 or fleet/robot_1
    topics: list[str] = field(default_factory=lambda: ["observation", "applied_action", "step_record"])
    out_dir: str = "bags"
    bag_prefix: str = "saferule"
    split_max_bytes: int = 256 * 1024 * 1024
    split_max_duration_s: float = 600.0
    queue_size: int = 100_000
    qos_depth: int = 1000
    stats_period_s: float = 10.0


@dataclass(frozen=True)
class _Received:
    topic: str
    time_ns: int
    data: bytes


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
        self.connections: dict[str, Connection] = {}
        self.bytes = 0
        self.first_ns = 0
        self.closed: list[Path] = []

    def _open(self, first_ns: int) -> Writer:
        path = self.out_dir / f"{self.stem}_{self.index:03d}"
        while path.exists():  # a restart within the same second
            self.index += 1
            path = self.out_dir / f"{self.stem}_{self.index:03d}"
        self.index += 1
        writer = Writer(path, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
        writer.open()
        self.writer, self.connections, self.bytes, self.first_ns = writer, {}, 0, first_ns
        return writer

    def write(self, item: _Received, types: dict[str, str]) -> None:
        writer = self.writer
        if writer is not None and (self.bytes >= self.max_bytes or item.time_ns - self.first_ns >= self.max_duration_ns):
            self.close()
            writer = None
        if writer is None:
            writer = self._open(item.time_ns)
        connection = self.connections.get(item.topic)
        if connection is None:
            connection = writer.add_connection(item.topic, types[item.topic], typestore=self.typestore)
            self.connections[item.topic] = connection
        writer.write(connection, item.time_ns, item.data)
        self.bytes += len(item.data)

    def close(self) -> None:
        if self.writer is None:
            return
        for key, value in self.custom_data().items():
            self.writer.set_custom_data(key, value)
        self.writer.close()
        self.closed.append(self.writer.path)
        self.writer = None


class Recorder(Node):
    def __init__(self, node_name: str = "recorder", **kwargs: object) -> None:
        super().__init__(node_name, **kwargs)  # type: ignore[arg-type]
        cfg = self.config = declare_config(self, RecorderConfig)
        unknown = [t for t in cfg.topics if t not in RECORDABLE_TOPICS]
        if unknown or not cfg.topics or not cfg.robots:
            raise ConfigError(f"topics {cfg.topics} / robots {cfg.robots}: name at least one robot and topics among "
                              f"{', '.join(RECORDABLE_TOPICS)}")
        if cfg.split_max_bytes <= 0 or cfg.split_max_duration_s <= 0 or cfg.queue_size <= 0 or cfg.qos_depth <= 0:
            raise ConfigError("split_max_bytes, split_max_duration_s, queue_size and qos_depth must be > 0")
        self.types: dict[str, str] = {}
        self.received: Counter[str] = Counter()
        self.written: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()       # queue full (callback side)
        self.write_failed: Counter[str] = Counter()  # storage errors (writer side)
        self._queue: queue.Queue[_Received | None] = queue.Queue(maxsize=cfg.queue_size)
        self.bags = _BagSeries(Path(cfg.out_dir).expanduser(), cfg.bag_prefix, cfg.split_max_bytes,
                               int(cfg.split_max_duration_s * 1e9), self._custom_data)
        self.bags.out_dir.mkdir(parents=True, exist_ok=True)

        # Callbacks only count and enqueue; the node's default (mutually exclusive) group keeps the
        # counters single-writer.
        qos = recorder_qos(cfg.qos_depth)
        for robot in cfg.robots:
            for name in cfg.topics:
                topic = f"/{robot.strip('/')}/{name}"
                msg_type = RECORDABLE_TOPICS[name]
                self.types[topic] = ros_type_name(msg_type)
                self.create_subscription(msg_type, topic, self._make_callback(topic), qos, raw=True)
        self._writer_thread = threading.Thread(target=self._drain, name="bag-writer", daemon=True)
        self._writer_thread.start()
        self.create_timer(cfg.stats_period_s, self._log_stats)
        self.get_logger().info(f"recording {len(self.types)} topics to {self.bags.out_dir}/{self.bags.stem}_NNN "
                               f"(MCAP, split at {cfg.split_max_bytes} bytes or {cfg.split_max_duration_s:g} s)")

    def _make_callback(self, topic: str) -> Callable[[bytes, MessageInfo], None]:
        def on_message(data: bytes, info: MessageInfo) -> None:
            self.received[topic] += 1
            try:
                self._queue.put_nowait(_Received(topic, int(info["received_timestamp"]) or time.time_ns(), data))
            except queue.Full:
                self.dropped[topic] += 1
        return on_message

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            try:
                self.bags.write(item, self.types)
                self.written[item.topic] += 1
            except Exception as err:  # disk full, permissions: count, say so, keep draining
                self.write_failed[item.topic] += 1
                self.get_logger().error(f"cannot write to bag: {err}", throttle_duration_sec=5.0)
        self.bags.close()

    def _custom_data(self) -> dict[str, str]:
        """Recording totals so far (since the recorder started), kept in each bag's metadata."""
        return {f"saferule.recorder.{name}": str(value) for name, value in self.counts().items()}

    def counts(self) -> dict[str, int]:
        return {"received": sum(self.received.values()), "written": sum(self.written.values()),
                "dropped": sum(self.dropped.values()), "write_failed": sum(self.write_failed.values()),
                "queued": self._queue.qsize(), "bags_closed": len(self.bags.closed)}

    def _log_stats(self) -> None:
        counts = self.counts()
        self.get_logger().info(", ".join(f"{name} {value}" for name, value in counts.items()))

    def close(self) -> list[Path]:
        """Stop recording: write what is queued, close the current bag; returns the closed bags."""
        if self._writer_thread.is_alive():
            self._queue.put(None)
            self._writer_thread.join()
        self.get_logger().info(f"stopped: {self.counts()}; bags: {', '.join(p.name for p in self.bags.closed)}")
        return list(self.bags.closed)


def main(args: Sequence[str] | None = None) -> int:
    return run_node(Recorder, args, threads=4)


if __name__ == "__main__":
    raise SystemExit(main())
