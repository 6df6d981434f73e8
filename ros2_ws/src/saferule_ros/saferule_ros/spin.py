"""Run one node as a process without the launch system: `python -m saferule_ros.<node> --ros-args ...`."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NoReturn

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from saferule_core.errors import SafeRuleError
from saferule_ros.params import ConfigError


# After the node's own close() (which may flush data and must not be cut short), tearing down the
# executor, the node and the DDS participant gets this long before the process exits regardless:
# a node asked to stop must stop, even if middleware teardown hangs.
TEARDOWN_GRACE_S = 5.0
# A stop signal that finds the node still spinning this long after the first one breaks out of the
# callback that keeps it from stopping (launch sends SIGTERM 5 s after its SIGINT).
STUCK_CALLBACK_S = 2.0
SPIN_WAIT_S = 0.1   # without rclpy's signal handlers a stop request is only seen between waits
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """SIGINT/SIGTERM handling of a node process.

    The first signal asks the node to stop: the spin loop ends at its next wake-up. Further signals
    are only counted. They come in bursts (`ros2 launch` forwards SIGINT to every node while a
    terminal's Ctrl-C reaches the whole process group; then launch escalates to SIGTERM), and a
    KeyboardInterrupt raised by one of them inside close() or the teardown is what cut bags short
    and left tracebacks. Only when the node is still spinning STUCK_CALLBACK_S after the first
    signal does a further one raise KeyboardInterrupt, to break out of a callback that does not return.
    """

    def __init__(self) -> None:
        self.first: int | None = None     # signal number of the stop request
        self.first_at = 0.0
        self.later = 0
        self.spinning = True

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    @property
    def requested(self) -> bool:
        return self.first is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.first).name if self.first is not None else ""

    def ignore_from_now_on(self) -> None:
        """For the rest of the process: Python puts its own handlers back to the default action
        (terminate) when the interpreter finalizes, so a late signal would still end the process
        with -2 or -15; an ignored signal stays ignored."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # No logging or printing here: the handler runs between two bytecodes of the main thread,
        # which may be inside the same (non-reentrant) stream or logger.
        if self.first is None:
            self.first, self.first_at = signum, time.monotonic()
            return
        self.later += 1
        if self.spinning and time.monotonic() - self.first_at >= STUCK_CALLBACK_S:
            self.spinning = False
            raise KeyboardInterrupt


def _exit_if_teardown_hangs(status: int, grace_s: float) -> threading.Timer:
    def force_exit() -> None:
        print(f"ROS teardown did not finish within {grace_s:g} s; exiting anyway", file=sys.stderr, flush=True)
        os._exit(status)

    timer = threading.Timer(grace_s, force_exit)
    timer.daemon = True
    timer.start()
    return timer


def _teardown(executor: Executor, node: Node | None, status: int) -> None:
    watchdog = _exit_if_teardown_hangs(status, TEARDOWN_GRACE_S)
    executor.shutdown(timeout_sec=TEARDOWN_GRACE_S / 2)
    if node is not None:
        node.destroy_node()
    rclpy.try_shutdown()
    watchdog.cancel()


def _end_process(status: int) -> NoReturn:
    """Exit at once, without the interpreter's finalization: the node has closed and torn down, and
    the final garbage collection of a node's heap (torch, pybullet, ...) took seconds when a whole
    launched fleet stopped together on a busy machine, past launch's SIGTERM and SIGKILL. Exit
    handlers still run and buffered output (Python's and C's, where rcutils logs) is flushed."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)
    os._exit(status)


def run_node(make_node: Callable[[], Node], args: Sequence[str] | None = None, threads: int = 4) -> NoReturn:
    """Init rclpy with `args` (ROS arguments included), spin the node until SIGINT/SIGTERM, clean up.

    rclpy's own signal handlers are left out so that the context is still valid when the node's
    `close()` (if it has one: flush, join threads, log totals) runs after spinning stops; then the
    executor is shut down before rclpy (see StopSignals for what further signals do). A stopped node
    exits 0; a configuration error ends the process with one line on stderr and exit status 2.
    It is the process's last act: it ends the process with that status (see _end_process).
    """
    stop = StopSignals()
    stop.install()
    rclpy.init(args=list(args) if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    executor = SingleThreadedExecutor() if threads == 1 else MultiThreadedExecutor(num_threads=threads)
    node: Node | None = None
    status = 0
    try:
        node = make_node()
        executor.add_node(node)
        # (A MultiThreadedExecutor spun this way busy-loops while a callback of a busy mutually
        # exclusive group stays ready, which starved a 100 Hz control loop: the control-path nodes,
        # sim_robot and policy_runner, therefore run single-threaded.)
        while rclpy.ok() and not stop.requested:
            executor.spin_once(timeout_sec=SPIN_WAIT_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ConfigError, SafeRuleError) as err:
        print(f"{getattr(make_node, '__name__', 'node')}: error: {err}", file=sys.stderr)
        status = 2
    finally:
        stop.spinning = False
        try:
            if node is not None:
                if stop.requested:
                    node.get_logger().info(f"{stop.name}: stopping")
                close = getattr(node, "close", None)
                if callable(close):
                    close()
        finally:
            _teardown(executor, node, status)
            stop.ignore_from_now_on()
    _end_process(status)
