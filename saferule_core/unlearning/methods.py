"""The unlearning methods: the one list of them, each with its settings section and its runner.

Everything that names methods derives from `METHODS` here: `unlearn`'s dispatch, the CLI's
`--method` choices and help, the unlearning server's method check and the benchmarks. This module
imports no torch: a method's runner is named by its import path and loaded when it runs, so the CLI
can list the methods without loading the learners.

A runner takes the unlearning `Session` and returns a `MethodOutcome`: a new model (retrain, sisa)
or None when it updated the session's model in place, plus what it chose and method specifics.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from saferule_core.errors import UnlearningError

if TYPE_CHECKING:
    from saferule_core.algos.base import Learner
    from saferule_core.unlearning.session import Session

ModelKind = Literal["single", "sisa"]


@dataclass
class MethodOutcome:
    learner: Learner | None = None        # a new model; None: the session's model, updated in place
    selected_step: int | None = None      # the checkpoint offline selection chose (Safe-RULE)
    details: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class UnlearningMethod:
    name: str
    summary: str                  # one line for help texts
    approximate: bool             # keeps updating the given model (its observation statistics are re-based first)
    model_kind: ModelKind         # the kind of model it unlearns: a single learner or a SISA ensemble
    runner: str                   # "module:function", a Callable[[Session], MethodOutcome]
    settings_section: str | None = None   # the UnlearnConfig section holding its own settings

    def run(self, session: Session) -> MethodOutcome:
        module, _, function = self.runner.partition(":")
        runner: Callable[[Session], MethodOutcome] = getattr(importlib.import_module(module), function)
        return runner(session)


METHODS: dict[str, UnlearningMethod] = {m.name: m for m in (
    UnlearningMethod("safe_rule", "steer the policy off the forget actions, repair, pick a checkpoint offline "
                     "(docs/safe_rule.md)",
                     approximate=True, model_kind="single", runner="saferule_core.unlearning.safe_rule:run_safe_rule",
                     settings_section="safe_rule"),
    UnlearningMethod("retrain", "exact: refit from scratch on the retained data (slow, the gold standard)",
                     approximate=False, model_kind="single", runner="saferule_core.unlearning.baselines:run_retrain"),
    UnlearningMethod("finetune", "the learner's own updates on retained data",
                     approximate=True, model_kind="single", runner="saferule_core.unlearning.baselines:run_finetune"),
    UnlearningMethod("neggrad_plus", "descent on retained data + gradient ascent on forget data",
                     approximate=True, model_kind="single", runner="saferule_core.unlearning.baselines:run_neggrad_plus",
                     settings_section="neggrad_plus"),
    UnlearningMethod("trajdeleter", "TrajDeleter-style two phases, not cost aware",
                     approximate=True, model_kind="single", runner="saferule_core.unlearning.baselines:run_trajdeleter",
                     settings_section="trajdeleter"),
    UnlearningMethod("sisa", "exact, for SISA ensembles (train --sisa-shards): refits the shards that held "
                     "forget episodes", approximate=False, model_kind="sisa",
                     runner="saferule_core.unlearning.sisa:run_sisa",
                     settings_section="sisa"),
)}

METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
APPROXIMATE_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.approximate)


def get_method(name: str) -> UnlearningMethod:
    """The method called `name`; UnlearningError naming the known ones otherwise."""
    method = METHODS.get(name) if isinstance(name, str) else None
    if method is None:
        raise UnlearningError(f"unknown unlearning method {name!r}; known: {', '.join(METHOD_NAMES)}")
    return method


def methods_help(indent: str = "  ") -> str:
    """One line per method, name and summary, for help texts."""
    width = max(map(len, METHOD_NAMES))
    return "\n".join(f"{indent}{m.name:<{width}}  {m.summary}" for m in METHODS.values())
