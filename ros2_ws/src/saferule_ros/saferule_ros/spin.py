"""Run one node as a process without the launch system: `python -m saferule_ros.<node> --ros-args ...`."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from saferule_core.errors import SafeRuleError
from saferule_ros.params import ConfigError


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


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
        while rclpy.ok():
            # Short waits: without rclpy's signal handlers a signal is only seen between waits.
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
        executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return status
