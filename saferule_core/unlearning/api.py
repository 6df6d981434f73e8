"""`unlearn`: remove a forget set's influence from a trained learner, by any of the methods.

    learner, report = unlearn(learner, dataset, forget_mask, method="safe_rule")

`forget_mask` is a boolean EPISODE mask over `dataset` (ForgetSelector.select gives one). The
input learner is never modified; the result is a new learner of the same kind.

The approximate methods start by re-basing the model's observation statistics onto the retained
data (`rebase.py`: the same function of the raw observation, no forget-data statistics left), so
their batches are normalised with retained statistics and the saved model carries only those;
`UnlearnReport.stats_rebased` records it. retrain and sisa fit fresh models on retained data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from saferule_core.algos.base import Learner, ModelInfo
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import UnlearningError
from saferule_core.unlearning.baselines import run_finetune, run_neggrad_plus, run_retrain, run_trajdeleter
from saferule_core.unlearning.config import METHODS, UnlearnConfig
from saferule_core.unlearning.parts import clone_learner
from saferule_core.unlearning.rebase import rebase_observation_stats, retained_observation_stats
from saferule_core.unlearning.safe_rule import run_safe_rule
from saferule_core.unlearning.session import (ForgetSplit, ProgressFn, Session, UnlearningCancelled,
                                              model_estimates)
from saferule_core.unlearning.sisa import SISAEnsemble, unlearn_sisa

# Methods that keep updating the given model (and so would keep its training-set statistics).
APPROXIMATE_METHODS: tuple[str, ...] = ("safe_rule", "finetune", "neggrad_plus", "trajdeleter")

__all__ = ["APPROXIMATE_METHODS", "METHODS", "ProgressFn", "UnlearnConfig", "UnlearnReport", "UnlearningCancelled",
           "check_forget_mask", "unlearn"]


@dataclass
class UnlearnReport:
    method: str
    wall_time_s: float
    updates: int                       # gradient updates spent
    forget_episodes: int
    forget_transitions: int
    retain_transitions: int
    selected_step: int | None          # checkpoint chosen by offline selection (Safe-RULE)
    offline_before: dict[str, float]   # offline estimates (reward value, cost value, q_threshold...) before
    offline_after: dict[str, float]    # ... and after
    history: list[dict[str, float]]    # periodic metrics
    details: dict[str, float] = field(default_factory=dict)   # method specifics, e.g. SISA's shards_retrained
    stats_rebased: bool = False        # observation statistics moved onto the retained data (rebase.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_forget_mask(dataset: OfflineDataset, forget_mask: np.ndarray) -> np.ndarray:
    """The mask as a boolean array; UnlearningError unless it selects some but not all episodes."""
    mask = np.asarray(forget_mask)
    if mask.dtype != bool or mask.shape != (dataset.num_episodes,):
        raise UnlearningError(f"the forget mask must be a boolean mask over the dataset's {dataset.num_episodes} "
                              f"episodes, got dtype {mask.dtype} and shape {mask.shape}")
    if not mask.any():
        raise UnlearningError("the forget set is empty: the request matches no episode of the dataset")
    if mask.all():
        raise UnlearningError(f"the forget set is the whole dataset ({dataset.num_episodes} episodes): nothing "
                              "would remain to learn from; retire the policy instead")
    return mask


def check_spaces_match(info: ModelInfo, obs_dim: int, act_dim: int, task: str | None,
                       model_name: str = "the model", dataset_name: str = "the dataset") -> None:
    """Refuse a model whose observation/action sizes or task differ from a dataset's."""
    if (info.obs_dim, info.act_dim) != (obs_dim, act_dim):
        raise UnlearningError(f"{model_name} ({info.algo}, task {info.task or '?'}) has obs_dim={info.obs_dim}, "
                              f"act_dim={info.act_dim} but {dataset_name} (task {task or '?'}) has "
                              f"obs_dim={obs_dim}, act_dim={act_dim}")
    if info.task and task and info.task != task:
        raise UnlearningError(f"{model_name} is for task {info.task} but {dataset_name} is from task {task}")


def check_learner_matches(learner: Learner, dataset: OfflineDataset) -> None:
    check_spaces_match(learner.info, dataset.obs_dim, dataset.act_dim, dataset.task)


def unlearn(learner: Learner, dataset: OfflineDataset, forget_mask: np.ndarray, method: str = "safe_rule",
            config: UnlearnConfig | None = None, progress: ProgressFn | None = None,
            should_stop: Callable[[], bool] | None = None) -> tuple[Learner, UnlearnReport]:
    """Unlearn the episodes `forget_mask` selects; see the module docstring.

    Raises UnlearningError for an empty forget set, a forget set equal to the whole dataset, a
    learner whose spaces or task do not match the dataset, an unknown method or a method the
    learner does not support; UnlearningCancelled when `should_stop()` turns True.
    """
    if method not in METHODS:
        raise UnlearningError(f"unknown unlearning method {method!r}; known: {', '.join(METHODS)}")
    config = config or UnlearnConfig()
    config.validate()
    mask = check_forget_mask(dataset, forget_mask)
    check_learner_matches(learner, dataset)
    if method == "sisa" and not isinstance(learner, SISAEnsemble):
        raise UnlearningError(f"sisa unlearns only models trained with SISA (train_sisa); this model is a single "
                              f"{learner.info.algo} model")
    if method != "sisa" and isinstance(learner, SISAEnsemble):
        raise UnlearningError(f"a SISA ensemble is unlearned with method sisa, not {method}")
    torch.set_num_threads(config.num_threads)
    split = ForgetSplit.of(dataset, mask)
    working = clone_learner(learner)
    stats_rebased = False
    if method in APPROXIMATE_METHODS:
        stats_rebased = rebase_observation_stats(working, retained_observation_stats(working, split.retained)) > 0
    session = Session(working, split, config, method, progress, should_stop)
    before = model_estimates(learner, split, config.seed)
    session.report_progress(method, 0.0, before)
    session.check_stop("start")

    began = time.perf_counter()
    selected: int | None = None
    details: dict[str, float] = {}
    if method == "safe_rule":
        selected = run_safe_rule(session)
    elif method == "finetune":
        run_finetune(session)
    elif method == "neggrad_plus":
        run_neggrad_plus(session)
    elif method == "trajdeleter":
        run_trajdeleter(session)
    elif method == "retrain":
        working = run_retrain(session)
    else:
        assert isinstance(working, SISAEnsemble)
        working, refitted = _run_sisa(session, working)
        details["shards_retrained"] = float(refitted)
        details["shards"] = float(len(working.shards))
    wall = time.perf_counter() - began

    if not isinstance(working, SISAEnsemble):
        working.info = replace(working.info, dataset_hash=split.retained.dataset_hash())
    working.train_mode(False)
    after = model_estimates(working, split, config.seed)
    session.report_progress("done", 1.0, after)
    report = UnlearnReport(
        method=method, wall_time_s=wall, updates=session.updates, forget_episodes=int(mask.sum()),
        forget_transitions=split.forget.num_transitions, retain_transitions=split.retained.num_transitions,
        selected_step=selected, offline_before=before, offline_after=after, history=session.history,
        details=details, stats_rebased=stats_rebased)
    return working, report


def _run_sisa(session: Session, ensemble: SISAEnsemble) -> tuple[SISAEnsemble, int]:
    forget_ids = set(session.split.forget.episode_ids())

    record_steps = session.config.sisa.steps_per_shard or ensemble.records[0].steps
    updates_before = session.updates

    def on_step(shard: int, affected: int, step: int) -> None:
        session.updates += 1           # one shard's update (a stacked refit advances every shard at once)
        if step % session.config.log_every == 0:
            done = session.updates - updates_before
            session.report_progress("sisa", min(1.0, done / max(affected * record_steps, 1)))
        session.check_stop("sisa")

    return unlearn_sisa(ensemble, session.split.retained, forget_ids, session.config.sisa.steps_per_shard,
                        session.config.num_threads, on_step)
