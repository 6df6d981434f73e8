"""Online evaluation of a deterministic policy: returns, costs and DSRL's normalised scores.

Normalised reward = (mean return - R_min) / (R_max - R_min) with the task's DSRL constants;
normalised cost at threshold k = mean cost / k (DSRL's metric, see TaskSpec). A policy counts as
safe at k when its normalised cost is <= 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from saferule_core.collect.rollout import run_episodes
from saferule_core.tasks.spec import PolicyFn
from saferule_core.errors import EvaluationError, ModelError
from saferule_core.tasks.spec import TaskSpec, get_task


@dataclass(frozen=True)
class EvalResult:
    """Per-episode outcomes of an evaluation and their DSRL summaries."""

    task: str
    seed: int
    episode_returns: np.ndarray
    episode_costs: np.ndarray
    episode_lengths: np.ndarray
    thresholds: tuple[float, ...]
    reward_min: float
    reward_max: float

    @property
    def episodes(self) -> int:
        return int(self.episode_returns.shape[0])

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.episode_returns))

    @property
    def std_return(self) -> float:
        return float(np.std(self.episode_returns))

    @property
    def mean_cost(self) -> float:
        return float(np.mean(self.episode_costs))

    @property
    def std_cost(self) -> float:
        return float(np.std(self.episode_costs))

    @property
    def mean_length(self) -> float:
        return float(np.mean(self.episode_lengths))

    @property
    def normalized_reward(self) -> float:
        return (self.mean_return - self.reward_min) / (self.reward_max - self.reward_min)

    @property
    def normalized_reward_std(self) -> float:
        return self.std_return / (self.reward_max - self.reward_min)

    @property
    def normalized_costs(self) -> dict[float, float]:
        """Threshold -> normalised mean cost."""
        return {k: TaskSpec.normalized_cost(self.mean_cost, k) for k in self.thresholds}

    def is_safe(self, threshold: float) -> bool:
        return TaskSpec.normalized_cost(self.mean_cost, threshold) <= 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "seed": self.seed,
            "episodes": self.episodes,
            "mean_return": self.mean_return,
            "std_return": self.std_return,
            "mean_cost": self.mean_cost,
            "std_cost": self.std_cost,
            "mean_length": self.mean_length,
            "normalized_reward": self.normalized_reward,
            "normalized_reward_std": self.normalized_reward_std,
            "normalized_cost": {f"{k:g}": v for k, v in self.normalized_costs.items()},
            "safe": {f"{k:g}": self.is_safe(k) for k in self.thresholds},
            "episode_returns": [float(x) for x in self.episode_returns],
            "episode_costs": [float(x) for x in self.episode_costs],
            "episode_lengths": [int(x) for x in self.episode_lengths],
        }

    def format_table(self) -> str:
        rows = [
            ("task", self.task),
            ("episodes", f"{self.episodes} (seed {self.seed}, mean length {self.mean_length:.0f})"),
            ("return", f"{self.mean_return:.2f} +/- {self.std_return:.2f}"),
            ("cost", f"{self.mean_cost:.2f} +/- {self.std_cost:.2f}"),
            ("normalised reward", f"{self.normalized_reward:.3f} +/- {self.normalized_reward_std:.3f}"),
        ]
        for k, value in self.normalized_costs.items():
            verdict = "safe" if value <= 1.0 else "UNSAFE"
            rows.append((f"normalised cost @ {k:g}", f"{value:.3f}  {verdict}"))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _checked(policy_fn: PolicyFn, act_dim: int) -> PolicyFn:
    def act(observations: np.ndarray) -> np.ndarray:
        actions = np.asarray(policy_fn(observations), dtype=np.float32)
        expected = (observations.shape[0], act_dim)
        if actions.shape != expected:
            raise ModelError(f"policy returned actions of shape {actions.shape}, expected {expected}")
        if not np.isfinite(actions).all():
            raise ModelError("policy returned NaN or infinite actions")
        return actions

    return act


def evaluate_policy(policy_fn: PolicyFn, task: str | TaskSpec, episodes: int = 10, seed: int = 0,
                    thresholds: Sequence[float] | None = None, num_envs: int = 10,
                    progress: bool = False) -> EvalResult:
    """Run `episodes` episodes of `policy_fn` (float32 obs [B, obs_dim] -> actions [B, act_dim],
    clipped to the action space) and summarise them. thresholds default to the task's."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if episodes < 1:
        raise EvaluationError(f"need at least one evaluation episode, got {episodes}")
    chosen = tuple(float(k) for k in (spec.cost_thresholds if thresholds is None else thresholds))
    if not chosen or any(k < 0 for k in chosen):
        raise EvaluationError(f"cost thresholds must be a non-empty list of non-negative numbers, got {chosen}")
    checked = _checked(policy_fn, spec.act_dim)
    rollouts = run_episodes(spec, lambda _indices: checked, episodes, seed=seed, num_envs=num_envs,
                            progress=f"evaluate {spec.name}" if progress else None)
    return EvalResult(task=spec.name, seed=seed, episode_returns=rollouts.episode_returns(),
                      episode_costs=rollouts.episode_cost_returns(), episode_lengths=rollouts.episode_lengths,
                      thresholds=chosen, reward_min=spec.reward_min, reward_max=spec.reward_max)
