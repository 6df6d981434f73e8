"""The state every unlearning method runs with: the retained/forget split, batch samplers,
progress reporting, cancellation, periodic history, and the offline value estimates that the
reports and Safe-RULE's checkpoint choice use."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from saferule_core.algos.base import Learner, Metrics
from saferule_core.algos.batch import BatchSampler
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import UnlearningError
from saferule_core.unlearning.config import UnlearnConfig
from saferule_core.unlearning.parts import ModelParts, model_parts

ProgressFn = Callable[[str, float, dict[str, float]], None]
"""(stage, progress in [0, 1] over the whole method, latest metrics)."""

MAX_SCORED_STATES = 4096   # offline estimates use at most this many states


class UnlearningCancelled(UnlearningError):
    """`should_stop()` asked the method to stop; nothing was returned or saved."""


@dataclass
class ForgetSplit:
    """`dataset` split by an episode mask into what is kept and what is forgotten."""

    dataset: OfflineDataset
    forget_mask: NDArray[Any]
    retained: OfflineDataset
    forget: OfflineDataset

    @classmethod
    def of(cls, dataset: OfflineDataset, forget_mask: NDArray[Any]) -> ForgetSplit:
        mask = np.asarray(forget_mask, dtype=bool)
        return cls(dataset, mask, dataset.subset_episodes(~mask), dataset.subset_episodes(mask))


@dataclass
class Session:
    """One method run: samplers, progress, cancellation and history."""

    learner: Learner
    split: ForgetSplit
    config: UnlearnConfig
    method: str
    progress: ProgressFn | None = None
    should_stop: Callable[[], bool] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    updates: int = 0
    _window: list[Metrics] = field(default_factory=list)
    _samplers: dict[str, BatchSampler] = field(default_factory=dict)
    _began: float = field(default_factory=time.perf_counter)

    # ----- data ---------------------------------------------------------------------------------
    def retained_sampler(self) -> BatchSampler:
        """Batches of the retained data the learner trains on (BC-Safe: its safe episodes only)."""
        if "retained" not in self._samplers:
            data = self.learner.training_data(self.split.retained, self.learner.config)
            self._samplers["retained"] = BatchSampler(data, self.learner.info.stats, self.config.batch_size,
                                                      self.learner.device, self.config.seed)
        return self._samplers["retained"]

    def forget_sampler(self) -> BatchSampler:
        if "forget" not in self._samplers:
            self._samplers["forget"] = BatchSampler(self.split.forget, self.learner.info.stats,
                                                    self.config.forget_batch_size, self.learner.device,
                                                    self.config.seed + 1)
        return self._samplers["forget"]

    # ----- progress, cancellation, history ----------------------------------------------------------
    def check_stop(self, stage: str) -> None:
        if self.should_stop is not None and self.should_stop():
            raise UnlearningCancelled(f"{self.method} was cancelled during {stage} after {self.updates} updates")

    def report_progress(self, stage: str, fraction: float, metrics: dict[str, float] | None = None) -> None:
        if self.progress is not None:
            self.progress(stage, float(min(max(fraction, 0.0), 1.0)), dict(metrics or {}))

    def step_done(self, stage: str, fraction: float, metrics: Metrics) -> None:
        """Book one update: count it, average metrics every log_every updates, report, maybe stop."""
        self.updates += 1
        self._window.append(metrics)
        if self.updates % self.config.log_every == 0:
            self.flush(stage, fraction)
        self.check_stop(stage)

    def flush(self, stage: str, fraction: float) -> None:
        if not self._window:
            return
        keys = sorted(set().union(*(m.keys() for m in self._window)))
        averaged = {k: float(torch.stack([m[k].float() for m in self._window if k in m]).mean()) for k in keys}
        self._window.clear()
        entry = {"update": float(self.updates), "seconds": round(time.perf_counter() - self._began, 3), **averaged}
        self.history.append(entry)
        self.report_progress(stage, fraction, averaged)


def _sample_rows(rows: int, seed: int) -> NDArray[Any]:
    if rows <= MAX_SCORED_STATES:
        return np.arange(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, MAX_SCORED_STATES, replace=False))


@dataclass(frozen=True)
class ScoringStates:
    """What offline scores are computed on, in a learner's own normalisation: initial states of
    retained episodes, and forget transitions' states and unit-box actions (each at most
    MAX_SCORED_STATES, a fixed sample)."""

    retained_starts: torch.Tensor
    forget_observations: torch.Tensor
    forget_actions: torch.Tensor

    @classmethod
    def of(cls, learner: Learner, split: ForgetSplit, seed: int = 0) -> ScoringStates:
        stats, device = learner.info.stats, learner.device
        starts = split.retained.observations[split.retained.episode_starts]
        starts = starts[_sample_rows(starts.shape[0], seed)]
        rows = _sample_rows(split.forget.num_transitions, seed)

        def tensor(array: NDArray[Any]) -> torch.Tensor:
            return torch.from_numpy(array).to(device)

        return cls(tensor(stats.normalize_observations(starts)),
                   tensor(stats.normalize_observations(split.forget.observations[rows])),
                   tensor(stats.actions_to_unit(split.forget.actions[rows])))


@torch.no_grad()
def offline_estimates(parts: ModelParts, states: ScoringStates, policy: ModelParts | None = None) -> dict[str, float]:
    """Offline scores of a model from logged states alone (no simulator).

    reward_value / cost_value: mean min-over-twins Q_r / Q_c of the policy's action at retained
    episodes' initial states; forget_action_distance: mean L2 distance between the policy's action
    and the logged action on forget states. `policy` scores another model's policy with these critics.
    """
    actor = policy or parts
    out: dict[str, float] = {}
    if parts.has_critics and parts.reward_members is not None and parts.cost_members is not None:
        starts = states.retained_starts
        q = parts.q_values(starts, actor.policy_actions(starts))
        out["reward_value"] = float(q[parts.reward_members].min(dim=0).values.mean())
        out["cost_value"] = float(q[parts.cost_members].min(dim=0).values.mean())
        out["q_threshold"] = float(parts.q_threshold or 0.0)
    distance = (actor.policy_actions(states.forget_observations) - states.forget_actions).norm(dim=-1)
    out["forget_action_distance"] = float(distance.mean())
    return out


def model_estimates(learner: Learner, split: ForgetSplit, seed: int = 0) -> dict[str, float]:
    """`offline_estimates` of any learner on a split; models without critics (BC, SISA ensembles)
    get the forget-action distance only."""
    states = ScoringStates.of(learner, split, seed)
    try:
        parts = model_parts(learner)
    except UnlearningError:
        with torch.no_grad():
            actions = learner.policy_core()(states.forget_observations).float()
        return {"forget_action_distance": float((actions - states.forget_actions).norm(dim=-1).mean())}
    return offline_estimates(parts, states)
