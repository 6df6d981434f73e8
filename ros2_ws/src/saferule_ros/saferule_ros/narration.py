"""The demo's narration: its own lines and the nodes' (filtered), timestamped from the start, and the
stage clock that the report's timings come from."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ROS_LOG_LINE = re.compile(r"^\[(?P<level>[A-Z]+)\] \[[0-9.]+\] \[[^\]]*\]: (?P<text>.*)$")
# Lines kept in the node logs but not echoed: the recorder's periodic counts, the monitor's copy
# of every Unlearn feedback message with all its metrics (the watch prints a short form), and the
# robots' safe-stop warnings when a command is late on the busy cores (each robot's closing line
# counts its safe-stop steps).
QUIET_NODE_LINES = re.compile(r"received \d+, written \d+|^forget-[0-9a-f]+: [a-z_]+ +\d+% |no command for [0-9.]+ s")


class Narrator:
    """Timestamped lines on stdout (the demo's own and the nodes'), and the stage clock."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.stages: list[dict[str, Any]] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {text}", flush=True)

    def node_line(self, label: str, line: str) -> None:
        match = ROS_LOG_LINE.match(line)
        if match is not None:
            line = f"{match['level']}: {match['text']}" if match["level"] != "INFO" else match["text"]
        if QUIET_NODE_LINES.search(line):
            return
        print(f"[{self.elapsed():6.1f}s] [{label}] {line}", flush=True)

    @contextmanager
    def stage(self, key: str, title: str) -> Iterator[None]:
        print(f"\n[{self.elapsed():6.1f}s] ===== ({key}) {title} =====", flush=True)
        began = self.elapsed()
        try:
            yield
        finally:
            seconds = self.elapsed() - began
            self.stages.append({"key": key, "title": title, "started_s": began, "seconds": seconds})
            print(f"[{self.elapsed():6.1f}s] ----- ({key}) done in {seconds:.1f} s", flush=True)
