"""Run one node as a process without the launch system: `python -m saferule_ros.<node> --ros-args ...`."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import faulthandler
import os
import signal
import sys
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
TEARDOWN_GRACE_S = 3.0
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


class _SigevThread(ctypes.Structure):
    _fields_ = [("function", ctypes.c_void_p), ("attributes", ctypes.c_void_p)]


class _SigevDetails(ctypes.Union):
    _fields_ = [("padding", ctypes.c_int * 12), ("thread", _SigevThread)]


class _Sigevent(ctypes.Structure):
    _fields_ = [("value", ctypes.c_void_p), ("signo", ctypes.c_int), ("notify", ctypes.c_int),
                ("details", _SigevDetails)]


class _Timespec(ctypes.Structure):
    _fields_ = [("seconds", ctypes.c_long), ("nanoseconds", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("interval", _Timespec), ("value", _Timespec)]


_CLOCK_MONOTONIC = 1
_SIGEV_THREAD = 2


class HardDeadline:
    """Ends the process with `status` `grace_s` from now, whatever its threads are doing.

    A Python watchdog thread is not enough: a teardown that hangs inside the middleware while
    holding the GIL (DDS participant deletion waiting on one of its own threads) never lets it run,
    and by then the stop signals are ignored, so only launch's SIGKILL ended the node. Here the
    C library's own timer thread (timer_create with SIGEV_THREAD) calls _exit(status) directly:
    no Python, no GIL. Half a second before it, faulthandler (also a C thread) writes every Python
    thread's stack to stderr, so a hang says where it was. Where libc's timers are unavailable,
    faulthandler's own exit (status 1) is the fallback.
    """

    def __init__(self, status: int, grace_s: float) -> None:
        self._timer: ctypes.c_void_p | None = None
        self._libc = ctypes.CDLL(None, use_errno=True)
        with contextlib.suppress(AttributeError, OSError):
            self._timer = self._arm(status, grace_s)
        armed = self._timer is not None
        with contextlib.suppress(ValueError, OSError, RuntimeError):   # e.g. a stderr without a descriptor
            faulthandler.dump_traceback_later(max(grace_s - 0.5, grace_s / 2) if armed else grace_s,
                                              exit=not armed, file=sys.stderr)

    def _arm(self, status: int, grace_s: float) -> ctypes.c_void_p:
        event = _Sigevent(value=status, notify=_SIGEV_THREAD)
        event.details.thread.function = ctypes.cast(self._libc._exit, ctypes.c_void_p).value
        timer = ctypes.c_void_p()
        if self._libc.timer_create(_CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(timer)) != 0:
            raise OSError(ctypes.get_errno(), "timer_create failed")
        whole = int(grace_s)
        expiry = _Itimerspec(value=_Timespec(whole, int((grace_s - whole) * 1e9)))
        if self._libc.timer_settime(timer, 0, ctypes.byref(expiry), None) != 0:
            raise OSError(ctypes.get_errno(), "timer_settime failed")
        return timer

    def cancel(self) -> None:
        faulthandler.cancel_dump_traceback_later()
        if self._timer is not None:
            self._libc.timer_delete(self._timer)
            self._timer = None


def _teardown(executor: Executor, node: Node | None) -> None:
    executor.shutdown(timeout_sec=TEARDOWN_GRACE_S / 2)
    if node is not None:
        node.destroy_node()
    rclpy.try_shutdown()


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
            HardDeadline(status, TEARDOWN_GRACE_S)    # covers the teardown and the exit handlers
            _teardown(executor, node)
            stop.ignore_from_now_on()
    _end_process(status)
