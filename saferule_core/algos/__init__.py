"""Offline safe RL learners: BC-All, BC-Safe, BCQ-Lag and CPQ, one shared trainer, checkpoints.

A learner = a typed config dataclass + a class with `update(batch) -> metrics`; see `base.py`.
"""

from saferule_core.algos.base import ConfigError, Learner, LearnerConfig, ModelInfo
from saferule_core.algos.batch import Batch, BatchSampler, NormalizationStats
from saferule_core.algos.checkpoint import load_learner, load_policy, save_model
from saferule_core.algos.registry import ALGORITHMS, get_algo, make_config
from saferule_core.algos.trainer import TrainConfig, TrainResult, fit, seed_everything, train

__all__ = [
    "ALGORITHMS", "Batch", "BatchSampler", "ConfigError", "Learner", "LearnerConfig", "ModelInfo",
    "NormalizationStats", "TrainConfig", "TrainResult", "fit", "get_algo", "load_learner", "load_policy",
    "make_config", "save_model", "seed_everything", "train",
]
