"""DDS graph churn for tests and benchmarks: participants joining and leaving, a server killed and restarted.

Each joiner is its own process, so its own DDS participant, with one node that has publishers,
subscriptions to a robot's `observation` and `action` (the robot's writers match and unmatch
its readers), service clients and, for the server, a service. Joiners live `life_s` and are then
stopped, alternately with SIGTERM (a goodbye) and SIGKILL (none: their readers stay matched until
their lease runs out, which is what a crash looks like to everyone else). The server is killed
with SIGKILL and restarted every `server_every` joiners. Joiners run at a lower CPU priority
(nice 10), so that what is measured is the DDS graph changing, not a 2-core machine busy starting
Python processes. Nothing here touches the robot: it is the world around a control loop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

JOINER_NICE = 10

# The joiner process: argv = name, robot namespace, "server" or "client".
JOINER_CODE = """
import sys
import rclpy
from rclpy.node import Node
from std_msgs.msg import Float32MultiArray, String
from std_srvs.srv import Trigger

name, robot, role = sys.argv[1:4]
rclpy.init()
node = Node(name)
publishers = [node.create_publisher(String, f"/graph_churn/{name}/out_{i}", 10) for i in range(3)]
for topic in (f"{robot}/observation", f"{robot}/action", f"/graph_churn/{name}/in"):
    node.create_subscription(Float32MultiArray, topic, lambda msg: None, 10)
clients = [node.create_client(Trigger, service) for service in ("/graph_churn/server", f"{robot}/no_such_service")]
if role == "server":
    node.create_service(Trigger, "/graph_churn/server", lambda request, response: response)
while rclpy.ok():
    rclpy.spin_once(node, timeout_sec=0.1)
    clients[0].service_is_ready()
"""


@dataclass
class ChurnSettings:
    robot: str                      # namespace whose observation/action topics the joiners subscribe to
    interval_s: float = 1.0         # a new joiner this often
    life_s: float = 3.0             # each joiner lives this long
    server_every: int = 3           # kill -9 and restart the server every this many joiners


class GraphChurn:
    """Runs the churn on a background thread; `events` are (wall time ns, what) for the report."""

    def __init__(self, settings: ChurnSettings, python: str = sys.executable) -> None:
        self.settings = settings
        self.python = python
        self.events: list[tuple[int, str]] = []
        self.joiners_started = 0
        self._joiners: list[tuple[float, subprocess.Popen[bytes]]] = []
        self._server: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="graph-churn", daemon=True)

    def _spawn(self, name: str, role: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([self.python, "-c", JOINER_CODE, name, self.settings.robot, role],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            os.setpriority(os.PRIO_PROCESS, proc.pid, JOINER_NICE)
        except OSError:
            pass
        self.events.append((time.time_ns(), f"start {name}"))
        return proc

    def _end(self, proc: subprocess.Popen[bytes], sig: int, what: str) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.events.append((time.time_ns(), f"{signal.Signals(sig).name} {what}"))

    def _step(self) -> None:
        self.joiners_started += 1
        now = time.monotonic()
        while self._joiners and now - self._joiners[0][0] >= self.settings.life_s:
            _, old = self._joiners.pop(0)
            self._end(old, signal.SIGKILL if self.joiners_started % 2 else signal.SIGTERM, "joiner")
        self._joiners.append((now, self._spawn(f"churn_joiner_{self.joiners_started}", "client")))
        if self.joiners_started % self.settings.server_every == 1:
            if self._server is not None:
                self._end(self._server, signal.SIGKILL, "server")
            self._server = self._spawn(f"churn_server_{self.joiners_started}", "server")

    def _run(self) -> None:
        while not self._stop.is_set():
            self._step()
            self._stop.wait(self.settings.interval_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop churning; every joiner and the server are ended (SIGKILL)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for _, proc in self._joiners:
            self._end(proc, signal.SIGKILL, "joiner")
        self._joiners.clear()
        if self._server is not None:
            self._end(self._server, signal.SIGKILL, "server")
            self._server = None


@contextmanager
def graph_churn(settings: ChurnSettings, python: str = sys.executable) -> Iterator[GraphChurn]:
    """Churn while the block runs; every joiner and the server are gone when it ends."""
    churn = GraphChurn(settings, python)
    churn.start()
    try:
        yield churn
    finally:
        churn.stop()
