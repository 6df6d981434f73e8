"""Typed node configuration: a dataclass declares the node's ROS parameters and their defaults.

`declare_config(node, SimRobotConfig)` declares one parameter per field (defaults from the
dataclass, overridden by --params-file / -p) and returns a filled instance. Supported field
types: str, bool, int, float, list[str], list[float], list[int]. A float parameter also accepts an
integer (YAML `rate_hz: 50`).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.node import Node

from saferule_core.errors import ConfigError  # a parameter value a node cannot use; the message names it
from saferule_core.settings import coerce_setting

ConfigT = TypeVar("ConfigT")

__all__ = ["ConfigError", "config_defaults", "declare_config"]

_PARAMETER_TYPES: dict[Any, int] = {
    str: ParameterType.PARAMETER_STRING,
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    list[str]: ParameterType.PARAMETER_STRING_ARRAY,
    list[float]: ParameterType.PARAMETER_DOUBLE_ARRAY,
    list[int]: ParameterType.PARAMETER_INTEGER_ARRAY,
}




def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"config field {field.name} needs a default")


def config_defaults(cls: type[ConfigT]) -> dict[str, Any]:
    """Field name -> default value (what the YAML files in config/ should state)."""
    return {f.name: _default(f) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def declare_config(node: Node, cls: type[ConfigT]) -> ConfigT:
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = hints[field.name]
        if kind not in _PARAMETER_TYPES:
            raise TypeError(f"config field {field.name}: unsupported type {kind}")
        default = _default(field)
        # Dynamic typing where rclpy's inference would refuse good values: an integer in YAML for
        # a double, and any list whose default is empty (rclpy types [] as a byte array).
        dynamic = kind in (float, list[float]) or default == []
        descriptor = ParameterDescriptor(type=_PARAMETER_TYPES[kind], dynamic_typing=dynamic)
        value = node.declare_parameter(field.name, default, descriptor).value
        values[field.name] = _coerce(field.name, kind, value)
    return cls(**values)


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """The declared parameter's value checked against its field's type (saferule_core.settings);
    rclpy hands arrays over as array.array, so they become lists first."""
    if typing.get_origin(kind) is list and value is not None and not isinstance(value, (str, bytes)):
        try:
            value = list(value)
        except TypeError:
            pass
    return coerce_setting(f"parameter {name}", kind, value, ConfigError)
