"""Offline safe RL learners: BC-All, BC-Safe, BCQ-Lag and CPQ, one shared trainer, checkpoints.

A learner = a typed config dataclass + a class with `update(batch) -> metrics` (see `base.py`).
Modules: `registry` (names, configs; torch-free), `networks`, `lagrangian`, `batch` (sampler,
normalisation), `base`, `bc`, `bcq_lag`, `cpq`, `trainer` (`fit`, `train`), `checkpoint`
(`save_model`, `load_learner`, `load_policy`).

The names below are importable from here, but are loaded on first use: importing the package
(e.g. for the registry and CLI help) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ALGORITHMS": "registry", "ConfigError": "registry", "get_algo": "registry", "make_config": "registry",
    "Learner": "base", "LearnerConfig": "base", "ModelInfo": "base",
    "Batch": "batch", "BatchSampler": "batch", "NormalizationStats": "batch",
    "load_learner": "checkpoint", "load_policy": "checkpoint", "save_model": "checkpoint",
    "TrainConfig": "trainer", "TrainResult": "trainer", "fit": "trainer", "seed_everything": "trainer",
    "train": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
