"""The learners by name, and typed configs built from plain dicts (CLI flags, YAML, checkpoints).

Torch-free: learner classes are imported only when asked for, so listing algorithms is cheap.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from saferule_core.errors import ConfigError

if TYPE_CHECKING:
    from saferule_core.algos.base import Learner, LearnerConfig


@dataclass(frozen=True)
class AlgoSpec:
    name: str
    module: str                                          # where the learner class lives
    class_name: str
    summary: str
    fixed: dict[str, Any] = field(default_factory=dict)   # settings that define the algorithm

    @property
    def learner_class(self) -> type[Learner]:
        cls: type[Learner] = getattr(importlib.import_module(self.module), self.class_name)
        return cls

    @property
    def config_class(self) -> type[LearnerConfig]:
        return self.learner_class.config_class


ALGORITHMS: dict[str, AlgoSpec] = {spec.name: spec for spec in (
    AlgoSpec("bc_all", "saferule_core.algos.bc", "BC", "behaviour cloning on every episode", {"safe_only": False}),
    AlgoSpec("bc_safe", "saferule_core.algos.bc", "BC", "behaviour cloning on episodes within the cost limit",
             {"safe_only": True}),
    AlgoSpec("bcq_lag", "saferule_core.algos.bcq_lag", "BCQLag",
             "batch-constrained Q-learning with a PID-Lagrangian cost penalty"),
    AlgoSpec("cpq", "saferule_core.algos.cpq", "CPQ", "constraints penalized Q-learning"),
)}


def get_algo(name: str) -> AlgoSpec:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ConfigError(f"unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}") from None


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Check one setting against its annotation; lists become tuples, ints become floats."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key} must be a list of integers, got {value!r}")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def config_from_dict(config_class: type[LearnerConfig], values: Mapping[str, Any]) -> LearnerConfig:
    """A validated config of `config_class` with `values` over its defaults; unknown keys refused."""
    hints = typing.get_type_hints(config_class)
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {config_class.__name__} settings: {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    config = config_class(**{key: _coerce(key, hints[key], value) for key, value in values.items()})
    config.validate()
    return config


def make_config(algo: str, overrides: Mapping[str, Any] | None = None) -> LearnerConfig:
    """The config of `algo`: its defaults, then `overrides` (the algorithm's fixed settings win)."""
    spec = get_algo(algo)
    overrides = dict(overrides or {})
    for key, value in spec.fixed.items():
        if key in overrides and overrides[key] != value:
            raise ConfigError(f"{algo} requires {key}={value}; choose the other algorithm instead")
        overrides[key] = value
    return config_from_dict(spec.config_class, overrides)
