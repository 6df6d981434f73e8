"""Run one node as a process without the launch system: `python -m saferule_ros.<node> --ros-args ...`."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from saferule_core.errors import SafeRuleError
from saferule_ros.params import ConfigError


# After the node's own close() (which may flush data and must not be cut short), tearing down the
# executor, the node and the DDS participant gets this long before the process exits regardless:
# a node asked to stop must stop, even if middleware teardown hangs.
TEARDOWN_GRACE_S = 5.0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _exit_if_teardown_hangs(status: int, grace_s: float) -> threading.Timer:
    def force_exit() -> None:
        print(f"ROS teardown did not finish within {grace_s:g} s; exiting anyway", file=sys.stderr, flush=True)
        os._exit(status)

    timer = threading.Timer(grace_s, force_exit)
    timer.daemon = True
    timer.start()
    return timer


def run_node(make_node: Callable[[], Node], args: Sequence[str] | None = None, threads: int = 4) -> int:
    """Init rclpy with `args` (ROS arguments included), spin the node until SIGINT/SIGTERM, clean up.

    rclpy's own signal handlers are left out so that the context is still valid when the node's
    `close()` (if it has one: flush, join threads, log totals) runs after spinning stops; then the
    executor is shut down before rclpy. A configuration error ends the process with one line on
    stderr and exit status 2.
    """
    rclpy.init(args=list(args) if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGTERM, _interrupt)
    executor = SingleThreadedExecutor() if threads == 1 else MultiThreadedExecutor(num_threads=threads)
    node: Node | None = None
    status = 0
    try:
        node = make_node()
        executor.add_node(node)
        # Short waits: without rclpy's signal handlers a signal is only seen between waits.
        # (A MultiThreadedExecutor spun this way busy-loops while a callback of a busy mutually
        # exclusive group stays ready, which starved a 100 Hz control loop: the control-path nodes,
        # sim_robot and policy_runner, therefore run single-threaded.)
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ConfigError, SafeRuleError) as err:
        print(f"{getattr(make_node, '__name__', 'node')}: error: {err}", file=sys.stderr)
        status = 2
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if callable(close):
                close()
        watchdog = _exit_if_teardown_hangs(status, TEARDOWN_GRACE_S)
        executor.shutdown(timeout_sec=TEARDOWN_GRACE_S / 2)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        watchdog.cancel()
    return status
