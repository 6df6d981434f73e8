"""Process set-up of the control-path nodes (sim_robot, policy_runner): DDS transport and Python GC.

Transport. Measured (issue 12; native stacks taken during the stalls): with Fast DDS's
shared-memory transport, after a peer subscribed to a robot's topics was killed (kill -9, a crash),
publish() blocked for up to 1 s at a time inside `SharedMemManager::Port::try_push`, waiting on
the dead process's port lock (a timed interprocess mutex), or on the DataWriter's mutex held by a
Fast DDS thread that was itself sending to that port. rclpy holds the GIL inside publish(), so the
whole process stopped: 0.35-1.5 s without actions or observations while the runner counted no
deadline miss. UDP has no cross-process lock, and a dead peer's port just drops datagrams. With
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST rmw_fastrtps installs its own shared-memory + UDP
transports (ignoring XML profiles and FASTDDS_BUILTIN_TRANSPORTS), so a control-path process asks
for the same thing in another way: the range SYSTEM_DEFAULT, which leaves the transports to the
default Fast DDS profile, and `config/fastdds_udp_loopback.xml` as that profile (UDP on 127.0.0.1
only, unicast discovery of 127.0.0.1 peers, no multicast: what LOCALHOST means, without shared
memory). Other discovery ranges, another RMW, a profile file or static peers already set, or
SAFERULE_CONTROL_SHM=1: the environment is left as it is.

Priority. With SAFERULE_CONTROL_RT_PRIORITY=<1-99> in its environment a control-path process runs
under SCHED_FIFO at that priority, set before rclpy starts its threads (which inherit it): other
processes starting on a busy machine (a graph change) then wait for the control loop instead of
the other way round. It needs CAP_SYS_NICE or an rtprio limit (ulimit -r); without them the
process says so on stderr once and runs at normal priority.

GC. The first full (generation 2) collection of a node's start-up objects took 77-187 ms in the
first seconds of the loop; `gc.freeze()` after the node is built moves them out of the collector's
sight, so later collections scan only what the loop itself allocates.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping
from functools import wraps
from pathlib import Path
from typing import TypeVar

PROFILE_FILE = "fastdds_udp_loopback.xml"
OPT_OUT = "SAFERULE_CONTROL_SHM"   # "1": keep rmw_fastrtps's own transports (shared memory included)
FAST_DDS = "rmw_fastrtps_cpp"
RT_PRIORITY = "SAFERULE_CONTROL_RT_PRIORITY"   # 1-99: SCHED_FIFO at this priority; unset or 0: normal

N = TypeVar("N")


def profile_path() -> Path | None:
    """The installed (or source tree's) profile file; None if there is none."""
    from saferule_core.errors import SafeRuleError
    from saferule_ros.bringup import share_dir

    try:
        path = share_dir() / "config" / PROFILE_FILE
    except SafeRuleError:
        return None
    return path if path.is_file() else None


def wants_udp_loopback(environ: Mapping[str, str]) -> bool:
    """LOCALHOST discovery with rmw_fastrtps, and nothing in the environment configures Fast DDS otherwise."""
    return (environ.get(OPT_OUT) != "1" and environ.get("RMW_IMPLEMENTATION", FAST_DDS) == FAST_DDS
            and environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST"
            and not environ.get("FASTDDS_DEFAULT_PROFILES_FILE") and not environ.get("ROS_STATIC_PEERS"))


def use_udp_loopback(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Before rclpy.init: point this process at the UDP-on-loopback profile where
    `wants_udp_loopback`; returns the variables set ({} when it changed nothing)."""
    profile = profile_path() if wants_udp_loopback(environ) else None
    if profile is None:
        return {}
    changes = {"FASTDDS_DEFAULT_PROFILES_FILE": str(profile), "ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT"}
    environ.update(changes)
    return changes


def use_realtime_priority(environ: Mapping[str, str] = os.environ) -> int:
    """Before rclpy.init: SCHED_FIFO at the priority RT_PRIORITY names; returns the priority in
    force (0: normal scheduling, also when the value is bad or the system refuses)."""
    text = environ.get(RT_PRIORITY, "").strip()
    if not text or text == "0":
        return 0
    try:
        priority = int(text)
        if not 1 <= priority <= 99:
            raise ValueError
    except ValueError:
        print(f"{RT_PRIORITY}={text!r}: expected an integer from 1 to 99; running at normal priority", file=sys.stderr)
        return 0
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError) as err:
        print(f"{RT_PRIORITY}={priority}: SCHED_FIFO refused ({err.strerror or err}); needs CAP_SYS_NICE or an "
              f"rtprio limit; running at normal priority", file=sys.stderr)
        return 0
    return priority


def frozen_after_build(make_node: Callable[[], N]) -> Callable[[], N]:
    """`make_node`, followed by gc.freeze() of everything built so far."""
    @wraps(make_node, updated=())
    def build() -> N:
        node = make_node()
        gc.freeze()
        return node
    return build
