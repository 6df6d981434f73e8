"""The one way a mapping of settings (a YAML file, a ROS parameter file, CLI overrides) becomes a
typed config dataclass: learner, unlearning and demo settings all go through `settings_from_mapping`.

    config = settings_from_mapping(UnlearnConfig, values, "unlearning", UnlearningError)

- keys the dataclass does not have are refused, naming the known ones;
- each value is checked against its field's annotation: bool, int, float (an integer is accepted),
  str, tuple[int, ...] and list[X] (from a list), a nested dataclass (from a mapping: a section,
  parsed the same way, its errors named `section.key`); other annotations pass values through;
- the dataclass's own `validate()` runs last (ranges and relations between fields);
- every problem is one error of the caller's type (ConfigError unless named), one line.

`coerce_setting` is the per-value check, also used where values arrive one by one (ROS parameters).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from saferule_core.errors import ConfigError, SafeRuleError

_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

ConfigT = TypeVar("ConfigT")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(hint: Any) -> str:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} settings"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        element = _describe(args[0]) if args else "values"
        return f"a list of {element.removeprefix('an ').removeprefix('a ')}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def coerce_setting(name: str, hint: Any, value: Any, error: type[SafeRuleError] = ConfigError) -> Any:
    """`value` checked against annotation `hint` (see the module docstring): ints become floats
    where a float is declared, lists become tuples where a tuple is; `error` names `name` otherwise."""
    def refuse() -> SafeRuleError:
        return error(f"{name} must be {_describe(hint)}, got {value!r}"[:500])

    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise refuse()
        return settings_from_mapping(hint, value, name, error, prefix=f"{name}.")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise refuse()
        items = [coerce_setting(f"{name}[{index}]", args[0], item, error) if args else item
                 for index, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return coerce_setting(name, option, value, error)
            except SafeRuleError:
                continue
        raise refuse()
    if hint is bool:
        if not isinstance(value, bool):
            raise refuse()
        return value
    if hint is int:
        if not _is_int(value):
            raise refuse()
        return value
    if hint is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads exponent notation without a dot ("1e-4") as a string; a user means the number.
            if not _EXPONENT_NUMBER.fullmatch(value.strip()):
                raise refuse()
            return float(value)
        if not (_is_int(value) or isinstance(value, float)):
            raise refuse()
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise refuse()
        return value
    return value


def settings_from_mapping(cls: type[ConfigT], values: Mapping[str, Any], what: str,
                          error: type[SafeRuleError] = ConfigError, prefix: str = "") -> ConfigT:
    """A `cls` with `values` over its defaults, checked (see the module docstring). `what` names
    the settings in errors ("unknown <what> settings: ..."); `prefix` goes before each key's name."""
    if not isinstance(values, Mapping):
        raise error(f"{what} settings must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(key) for key in set(values) - set(fields))
    if unknown:
        raise error(f"unknown {what} settings: {', '.join(unknown)} (known: {', '.join(sorted(fields))})"[:1000])
    hints = typing.get_type_hints(cls)
    config = cls(**{key: coerce_setting(f"{prefix}{key}", hints[key], value, error)
                    for key, value in values.items()})
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


COMPUTE_SECTION = "compute"


def lift_section(values: Mapping[str, Any], section: str, allowed: Sequence[str], what: str,
                 error: type[SafeRuleError] = ConfigError) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`values` without `section`, the settings of the mapping under `section`), where `section`
    groups settings that live elsewhere (`compute:` holds precision, threads, compile...): only
    `allowed` keys may appear in it, and a key set both in it and at the top level is refused."""
    rest = dict(values)
    grouped = rest.pop(section, None)
    if grouped is None:
        return rest, {}
    if not isinstance(grouped, Mapping):
        raise error(f"{what}: `{section}` must be a mapping of {', '.join(allowed)}, got {type(grouped).__name__}")
    unknown = sorted(str(key) for key in set(grouped) - set(allowed))
    if unknown:
        raise error(f"{what}: unknown {section} settings {', '.join(unknown)} (known: {', '.join(allowed)})")
    twice = sorted(str(key) for key in set(grouped) & set(rest))
    if twice:
        raise error(f"{what}: {', '.join(twice)} set both in `{section}` and at the top level; set it in one place")
    return rest, dict(grouped)
