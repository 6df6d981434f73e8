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
from numpy.typing import NDArray

from saferule_core.algos.base import Learner, ModelInfo
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import UnlearningError
from saferule_core.unlearning.config import UnlearnConfig
from saferule_core.unlearning.methods import APPROXIMATE_METHODS, METHOD_NAMES, METHODS, get_method
from saferule_core.unlearning.parts import clone_learner
from saferule_core.unlearning.rebase import rebase_observation_stats, retained_observation_stats
from saferule_core.unlearning.session import ForgetSplit, ProgressFn, Session, UnlearningCancelled, model_estimates
from saferule_core.unlearning.sisa import SISAEnsemble

__all__ = ["APPROXIMATE_METHODS", "METHOD_NAMES", "ProgressFn", "UnlearnConfig", "UnlearnReport", "UnlearningCancelled",
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


def check_forget_mask(dataset: OfflineDataset, forget_mask: NDArray[Any]) -> NDArray[Any]:
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


def check_model_kind(learner: Learner, method: str) -> None:
    """Refuse a method that cannot unlearn this kind of model (sisa and SISA ensembles go together)."""
    kind = get_method(method).model_kind
    if kind == "sisa" and not isinstance(learner, SISAEnsemble):
        raise UnlearningError(f"{method} unlearns only SISA ensembles (saferule train --sisa-shards); this model is "
                              f"a single {learner.info.algo} model")
    if kind != "sisa" and isinstance(learner, SISAEnsemble):
        sisa_methods = [m.name for m in METHODS.values() if m.model_kind == "sisa"]
        raise UnlearningError(f"a SISA ensemble is unlearned with method {' or '.join(sisa_methods)}, not {method}")


def unlearn(learner: Learner, dataset: OfflineDataset, forget_mask: NDArray[Any], method: str = "safe_rule",
            config: UnlearnConfig | None = None, progress: ProgressFn | None = None,
            should_stop: Callable[[], bool] | None = None) -> tuple[Learner, UnlearnReport]:
    """Unlearn the episodes `forget_mask` selects; see the module docstring.

    Raises UnlearningError for an empty forget set, a forget set equal to the whole dataset, a
    learner whose spaces or task do not match the dataset, an unknown method or a method the
    learner does not support; UnlearningCancelled when `should_stop()` turns True.
    """
    chosen = get_method(method)
    config = config or UnlearnConfig()
    config.validate()
    mask = check_forget_mask(dataset, forget_mask)
    check_learner_matches(learner, dataset)
    check_model_kind(learner, method)
    torch.set_num_threads(config.num_threads)
    split = ForgetSplit.of(dataset, mask)
    working = clone_learner(learner)
    stats_rebased = False
    if chosen.approximate:
        stats_rebased = rebase_observation_stats(working, retained_observation_stats(working, split.retained)) > 0
    session = Session(working, split, config, method, progress, should_stop)
    before = model_estimates(learner, split, config.seed)
    session.report_progress(method, 0.0, before)
    session.check_stop("start")

    began = time.perf_counter()
    outcome = chosen.run(session)
    wall = time.perf_counter() - began
    if outcome.learner is not None:
        working = outcome.learner

    if not isinstance(working, SISAEnsemble):
        working.info = replace(working.info, dataset_hash=split.retained.dataset_hash())
    working.train_mode(False)
    after = model_estimates(working, split, config.seed)
    session.report_progress("done", 1.0, after)
    report = UnlearnReport(
        method=method, wall_time_s=wall, updates=session.updates, forget_episodes=int(mask.sum()),
        forget_transitions=split.forget.num_transitions, retain_transitions=split.retained.num_transitions,
        selected_step=outcome.selected_step, offline_before=before, offline_after=after, history=session.history,
        details=outcome.details, stats_rebased=stats_rebased)
    return working, report

