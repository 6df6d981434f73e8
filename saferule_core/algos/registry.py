"""The learners by name, and typed configs built from plain dicts (CLI flags, YAML, checkpoints).

Torch-free: learner classes are imported only when asked for, so listing algorithms is cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from saferule_core.errors import ConfigError
from saferule_core.settings import settings_from_mapping

if TYPE_CHECKING:
    from saferule_core.algos.base import Learner
    from saferule_core.algos.configs import LearnerConfig


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


def config_from_dict(config_class: type[LearnerConfig], values: Mapping[str, Any]) -> LearnerConfig:
    """A validated config of `config_class` with `values` over its defaults; unknown keys refused."""
    return settings_from_mapping(config_class, values, config_class.__name__)


def make_config(algo: str, overrides: Mapping[str, Any] | None = None) -> LearnerConfig:
    """The config of `algo`: its defaults, then `overrides` (the algorithm's fixed settings win)."""
    spec = get_algo(algo)
    overrides = dict(overrides or {})
    for key, value in spec.fixed.items():
        if key in overrides and overrides[key] != value:
            raise ConfigError(f"{algo} requires {key}={value}; choose the other algorithm instead")
        overrides[key] = value
    return config_from_dict(spec.config_class, overrides)
