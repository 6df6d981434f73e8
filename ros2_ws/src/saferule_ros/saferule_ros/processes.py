"""Nodes as supervised child processes: the launch-free half of `saferule_ros.bringup`.

Each `NodeSpec` runs as `python -m saferule_ros.<executable> --ros-args ...` in its own session (a
Ctrl-C at the terminal reaches only the supervisor, which then stops the nodes in order). One
reader thread per node prefixes its output lines with the node's label and hands them to `echo`
(default: print), keeps the last lines for error messages, and optionally writes a log file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from saferule_ros.bringup import NodeSpec

TAIL_LINES = 200
# Children inherit the environment; these make their output arrive line by line and readable.
CHILD_ENVIRONMENT = {"PYTHONUNBUFFERED": "1", "RCUTILS_COLORIZED_OUTPUT": "0",
                     "RCUTILS_LOGGING_BUFFERED_STREAM": "0"}

Echo = Callable[[str, str], None]   # (node label, line without newline)


def print_echo(label: str, line: str) -> None:
    print(f"[{label}] {line}", flush=True)


@dataclass
class NodeProcess:
    spec: NodeSpec
    proc: subprocess.Popen[bytes]
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    reader: threading.Thread | None = None

    @property
    def label(self) -> str:
        return self.spec.label

    def tail_text(self, lines: int = 40) -> str:
        return "\n".join(list(self.tail)[-lines:])


class FleetProcesses:
    """Start, watch and stop one process per node spec (a context manager: exit stops them all)."""

    def __init__(self, specs: Sequence[NodeSpec], *, python: str = sys.executable, cwd: Path | None = None,
                 env: dict[str, str] | None = None, echo: Echo | None = print_echo,
                 log_dir: Path | None = None) -> None:
        labels = [spec.label for spec in specs]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"node names must be unique; repeated: {', '.join(repeated)}")
        self.specs = list(specs)
        self.python = python
        self.cwd = cwd
        self.env = {**(os.environ if env is None else env), **CHILD_ENVIRONMENT}
        # DDS discovery stays on this host unless the caller decided otherwise.
        self.env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        self.echo = echo
        self.log_dir = log_dir
        self.nodes: dict[str, NodeProcess] = {}
        self._echo_lock = threading.Lock()

    # ----- starting ----------------------------------------------------------------------------
    def start(self, labels: Sequence[str] | None = None) -> None:
        """Start the nodes named by `labels` (default: all) that are not started yet."""
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        known = {spec.label for spec in self.specs}
        unknown = sorted(set(labels or ()) - known)
        if unknown:
            raise ValueError(f"no node {', '.join(unknown)} in this fleet ({', '.join(sorted(known))})")
        try:
            for spec in self.specs:
                if spec.label in self.nodes or (labels is not None and spec.label not in labels):
                    continue
                proc = subprocess.Popen(spec.command(self.python), cwd=self.cwd, env={**self.env, **dict(spec.environment)},
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                node = NodeProcess(spec, proc)
                log = None if self.log_dir is None else self.log_dir / f"{spec.label.replace('/', '.')}.log"
                node.reader = threading.Thread(target=self._read, args=(node, log), name=f"out-{spec.label}",
                                               daemon=True)
                node.reader.start()
                self.nodes[spec.label] = node
        except BaseException:
            self.stop()
            raise

    def _read(self, node: NodeProcess, log: Path | None) -> None:
        assert node.proc.stdout is not None
        sink: IO[str] | None = open(log, "w", encoding="utf-8") if log is not None else None  # noqa: SIM115
        try:
            for raw in node.proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                node.tail.append(line)
                if sink is not None:
                    sink.write(line + "\n")
                    sink.flush()
                if self.echo is not None:
                    with self._echo_lock:
                        self.echo(node.label, line)
        finally:
            if sink is not None:
                sink.close()

    # ----- watching ----------------------------------------------------------------------------
    def exited(self) -> list[tuple[str, int]]:
        """(label, exit status) of every node that is no longer running."""
        return [(label, node.proc.returncode) for label, node in self.nodes.items() if node.proc.poll() is not None]

    def check_alive(self) -> None:
        """Raise RuntimeError naming the first node that died, with the end of its output."""
        for label, status in self.exited():
            node = self.nodes[label]
            if node.reader is not None:
                node.reader.join(timeout=2.0)
            raise RuntimeError(f"node {label} exited with status {status}; its last output:\n{node.tail_text()}")

    def pid(self, label: str) -> int:
        return self.nodes[label].proc.pid

    def kill(self, label: str, timeout: float = 10.0) -> int:
        """SIGKILL one node (a crash, for tests of what survives one) and forget it, so that `start`
        can start it again. Returns its exit status."""
        node = self.nodes.pop(label)
        node.proc.kill()
        status = node.proc.wait(timeout)
        if node.reader is not None:
            node.reader.join(timeout=2.0)
        return status

    # ----- stopping ----------------------------------------------------------------------------
    def stop(self, sigint_timeout: float = 10.0, sigterm_timeout: float = 5.0) -> dict[str, int]:
        """SIGINT every running node, then SIGTERM those still running after `sigint_timeout`, then
        SIGKILL after `sigterm_timeout`. Returns each node's exit status (negative: killed by signal)."""
        for sig, timeout in ((signal.SIGINT, sigint_timeout), (signal.SIGTERM, sigterm_timeout),
                             (signal.SIGKILL, 5.0)):
            running = [node for node in self.nodes.values() if node.proc.poll() is None]
            if not running:
                break
            for node in running:
                try:
                    node.proc.send_signal(sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout
            for node in running:
                try:
                    node.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    if sig != signal.SIGKILL and self.echo is not None:
                        with self._echo_lock:
                            self.echo(node.label, f"did not stop within {timeout:g} s of {sig.name}")
        for node in self.nodes.values():
            if node.reader is not None:
                node.reader.join(timeout=5.0)
            if node.proc.stdout is not None:
                node.proc.stdout.close()
        return {label: node.proc.returncode for label, node in self.nodes.items()}

    def __enter__(self) -> FleetProcesses:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
