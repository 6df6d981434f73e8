"""ForgetSelector, Metric and time conversions between saferule_interfaces messages and saferule_core.

A ROS selector's window times are builtin_interfaces/Time; the zero time means "open on that side"
(saferule_core: None). Every refusal is a `SelectorError` whose message names the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from builtin_interfaces.msg import Time

from saferule_core.data.selectors import ForgetSelector
from saferule_core.errors import SelectorError
from saferule_interfaces.msg import ForgetSelector as ForgetSelectorMsg
from saferule_interfaces.msg import Metric

NANOSECONDS = 1_000_000_000
LIST_FIELDS: tuple[str, ...] = ("episode_ids", "robot_ids", "bag_names")


def seconds_of(stamp: Time, name: str) -> float | None:
    """POSIX seconds of a window bound; None for the zero time (open bound)."""
    if stamp.nanosec >= NANOSECONDS:
        raise SelectorError(f"{name}.nanosec is {stamp.nanosec}; it must be below {NANOSECONDS}")
    if stamp.sec < 0:
        raise SelectorError(f"{name}.sec is {stamp.sec}; a window bound must not be before 1970")
    if stamp.sec == 0 and stamp.nanosec == 0:
        return None
    return stamp.sec + stamp.nanosec / NANOSECONDS


def time_of(seconds: float | None) -> Time:
    """builtin_interfaces/Time for POSIX seconds; the zero time for None."""
    if seconds is None:
        return Time()
    if not math.isfinite(seconds) or seconds < 0 or seconds >= 2**31:
        raise SelectorError(f"time {seconds!r} cannot be sent as builtin_interfaces/Time (0 <= t < 2^31 s)")
    whole = math.floor(seconds)
    nanosec = min(round((seconds - whole) * NANOSECONDS), NANOSECONDS - 1)
    return Time(sec=int(whole), nanosec=int(nanosec))


def selector_entry_count(msg: ForgetSelectorMsg) -> int:
    return sum(len(getattr(msg, name)) for name in LIST_FIELDS)


def selector_is_set(msg: ForgetSelectorMsg) -> bool:
    """Does the message constrain anything (a list entry or a window bound)?"""
    return selector_entry_count(msg) > 0 or any(
        stamp.sec != 0 or stamp.nanosec != 0 for stamp in (msg.window_start, msg.window_end))


def selector_from_msg(msg: ForgetSelectorMsg, max_entries: int) -> ForgetSelector:
    """The saferule_core selector of a message; SelectorError names what is wrong with it.

    The list sizes are checked before anything is copied, so a huge selector costs nothing more
    than its deserialisation.
    """
    count = selector_entry_count(msg)
    if count > max_entries:
        sizes = ", ".join(f"{name} {len(getattr(msg, name))}" for name in LIST_FIELDS)
        raise SelectorError(f"the selector lists {count} entries ({sizes}); this server accepts at most "
                            f"{max_entries}: select by robot, bag or time window instead")
    return ForgetSelector(
        episode_ids=tuple(msg.episode_ids), robot_ids=tuple(msg.robot_ids), bag_names=tuple(msg.bag_names),
        window_start=seconds_of(msg.window_start, "window_start"),
        window_end=seconds_of(msg.window_end, "window_end"),
    )


def selector_to_msg(selector: ForgetSelector) -> ForgetSelectorMsg:
    return ForgetSelectorMsg(episode_ids=list(selector.episode_ids), robot_ids=list(selector.robot_ids),
                             bag_names=list(selector.bag_names), window_start=time_of(selector.window_start),
                             window_end=time_of(selector.window_end))


def metrics_to_msgs(metrics: Mapping[str, float]) -> list[Metric]:
    """Metric messages in name order; non-numeric values are left out."""
    out = []
    for name in sorted(metrics):
        value = metrics[name]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(Metric(name=str(name), value=float(value)))
    return out


def metrics_from_msgs(metrics: Sequence[Metric]) -> dict[str, float]:
    return {m.name: float(m.value) for m in metrics}
