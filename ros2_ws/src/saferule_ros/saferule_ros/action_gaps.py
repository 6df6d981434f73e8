"""A robot's action stream seen from outside: the gaps between consecutive actions.

A policy runner times its own control callback, so a tick that never runs (the executor stalled,
a publish() blocked inside the middleware) is never timed and never counted as a miss. A third
node sees it as a gap in the action stream. The watcher here records, for every action, when the
runner sent it (the DDS source timestamp, taken inside the runner's publish(): the watcher's own
scheduling cannot move it), when it arrived (the DDS reception timestamp, taken by the watcher's
middleware receive thread) and its publication sequence number (a hole means actions were sent
but never seen). `gap_summary` turns a series into the longest gap and the misses counted from
outside: gaps longer than two control periods.

The watcher runs as its own process with the control path's transport (UDP on loopback, see
`saferule_ros.control_path`), so that its arrival times are not stalled by a shared-memory peer:

    python -m saferule_ros.action_gaps --ros-args -p topic:=/robot_1/action -p out:=/tmp/stamps.json

It writes `<out>.ready` at its first action and the stamps (JSON) when stopped (SIGINT/SIGTERM);
`watching_actions(...)` does all that from a script or a test.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import MessageInfo
from std_msgs.msg import Float32MultiArray

from saferule_ros.control_path import use_udp_loopback
from saferule_ros.params import declare_config
from saferule_ros.spin import run_node

MISS_PERIODS = 2.0   # a gap longer than this many control periods is a deadline miss seen from outside
# Every action, even if the watcher falls behind for a while: a sample it lost would read as a gap.
WATCH_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=500, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.VOLATILE)


@dataclass(frozen=True)
class GapSummary:
    actions: int
    period_ms: float
    longest_gap_ms: float
    longest_gap_periods: float
    p99_gap_ms: float
    misses: int                  # gaps over MISS_PERIODS periods
    missed_ticks: int            # control periods those gaps lost (a 5-period gap: 4)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def gap_summary(stamps_ns: np.ndarray, period_s: float, miss_periods: float = MISS_PERIODS) -> GapSummary:
    """Gaps between consecutive timestamps (ns, any order) against the control period."""
    stamps = np.sort(np.asarray(stamps_ns, dtype=np.int64))
    gaps_s = np.diff(stamps) / 1e9
    if gaps_s.size == 0:
        return GapSummary(int(stamps.size), period_s * 1e3, float("nan"), float("nan"), float("nan"), 0, 0)
    missed = gaps_s[gaps_s > miss_periods * period_s]
    return GapSummary(actions=int(stamps.size), period_ms=period_s * 1e3, longest_gap_ms=float(gaps_s.max() * 1e3),
                      longest_gap_periods=float(gaps_s.max() / period_s),
                      p99_gap_ms=float(np.percentile(gaps_s, 99) * 1e3), misses=int(missed.size),
                      missed_ticks=int(np.round(missed / period_s).sum() - missed.size))


@dataclass
class ActionStamps:
    """Per action seen: send time, arrival time (system clock, ns) and publication sequence number."""

    sent: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    arrived: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    seq: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @staticmethod
    def load(path: Path) -> ActionStamps:
        data = json.loads(path.read_text())
        return ActionStamps(*(np.asarray(data[key], dtype=np.int64) for key in ("sent", "arrived", "seq")))

    def window(self, since_ns: int = 0, until_ns: int | None = None) -> ActionStamps:
        """The actions sent in [since_ns, until_ns)."""
        until = np.iinfo(np.int64).max if until_ns is None else until_ns
        keep = (self.sent >= since_ns) & (self.sent < until)
        return ActionStamps(self.sent[keep], self.arrived[keep], self.seq[keep])

    def unseen(self) -> int:
        """Actions the runner sent between the first and last seen that never reached the watcher."""
        if self.seq.size < 2:
            return 0
        return int(self.seq.max() - self.seq.min() + 1 - np.unique(self.seq).size)

    def summary(self, period_s: float) -> dict[str, Any]:
        """Gaps by send time ("sent") and by arrival at the watcher ("arrived"), and unseen actions."""
        return {"sent": gap_summary(self.sent, period_s).as_dict(),
                "arrived": gap_summary(self.arrived, period_s).as_dict(), "unseen": self.unseen()}


@dataclass
class GapWatchConfig:
    topic: str = "action"
    out: str = ""


class GapWatch(Node):
    """Records every action's stamps; writes `<out>.ready` at the first and the stamps at close()."""

    def __init__(self, node_name: str = "action_gap_watch", **kwargs: object) -> None:
        super().__init__(node_name, **kwargs)  # type: ignore[arg-type]
        self.config = declare_config(self, GapWatchConfig)
        self.out = Path(self.config.out)
        self.rows: list[tuple[int, int, int]] = []
        self.create_subscription(Float32MultiArray, self.config.topic, self._on_action, WATCH_QOS)

    def _on_action(self, _msg: Float32MultiArray, info: MessageInfo) -> None:
        self.rows.append((info["source_timestamp"], info["received_timestamp"],
                          info["publication_sequence_number"] or 0))
        if len(self.rows) == 1:
            ready_path(self.out).touch()

    def close(self) -> None:
        sent, arrived, seq = (list(column) for column in zip(*self.rows)) if self.rows else ([], [], [])
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"sent": sent, "arrived": arrived, "seq": seq}))
        tmp.replace(self.out)


def ready_path(out: Path) -> Path:
    return out.with_name(out.name + ".ready")


@dataclass
class WatchedActions:
    """The watcher process of `watching_actions`; `stamps` is filled when the block ends."""

    proc: subprocess.Popen[bytes]
    out: Path
    stamps: ActionStamps = field(default_factory=ActionStamps)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until the watcher has seen its first action (it started, matched, and actions flow)."""
        deadline = time.monotonic() + timeout_s
        while not ready_path(self.out).exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the action watcher exited with status {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the action watcher saw no action within {timeout_s:g} s")
            time.sleep(0.05)


@contextmanager
def watching_actions(topic: str, out: Path, python: str = sys.executable) -> Iterator[WatchedActions]:
    """Watch `topic` from a separate process while the block runs; its stamps are read at the end."""
    out.unlink(missing_ok=True)
    ready_path(out).unlink(missing_ok=True)
    proc = subprocess.Popen([python, "-m", "saferule_ros.action_gaps", "--ros-args", "-p", f"topic:={topic}",
                             "-p", f"out:={out}"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    watched = WatchedActions(proc, out)
    try:
        yield watched
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if out.exists():
        watched.stamps = ActionStamps.load(out)


def main(args: Sequence[str] | None = None) -> int:
    use_udp_loopback()
    return run_node(GapWatch, args, threads=1)


if __name__ == "__main__":
    raise SystemExit(main())
