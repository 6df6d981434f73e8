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
from numpy.typing import NDArray

from saferule_core.collect.rollout import PolicyFactory, run_episodes
from saferule_core.errors import EvaluationError, ModelError
from saferule_core.tasks.spec import PolicyFn, TaskSpec, get_task


@dataclass(frozen=True)
class EvalResult:
    """Per-episode outcomes of an evaluation and their DSRL summaries."""

    task: str
    seed: int
    episode_returns: NDArray[Any]
    episode_costs: NDArray[Any]
    episode_lengths: NDArray[Any]
    thresholds: tuple[float, ...]
    reward_min: float
    reward_max: float
    random_start_steps: int = 0          # the start-state perturbation (see with_random_start)

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
            "random_start_steps": self.random_start_steps,
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
            ("episodes", f"{self.episodes} (seed {self.seed}, mean length {self.mean_length:.0f}, first "
                         f"{self.random_start_steps} steps random)"),
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
    def act(observations: NDArray[Any]) -> NDArray[Any]:
        actions = np.asarray(policy_fn(observations), dtype=np.float32)
        expected = (observations.shape[0], act_dim)
        if actions.shape != expected:
            raise ModelError(f"policy returned actions of shape {actions.shape}, expected {expected}")
        if not np.isfinite(actions).all():
            raise ModelError("policy returned NaN or infinite actions")
        return actions

    return act


def with_random_start(policy_fn: PolicyFn, steps: int, act_dim: int, seed: int) -> PolicyFactory:
    """A policy factory for `run_episodes` whose episodes take seeded uniform random unit-box
    actions for their first `steps` steps, then `policy_fn`'s (episode i's draws depend only on
    (seed, i): the same perturbation for every policy evaluated with the same seed)."""
    def factory(indices: NDArray[Any]) -> PolicyFn:
        rngs = [np.random.default_rng([seed, int(i), 0xA11]) for i in indices]
        step = 0

        def act(observations: NDArray[Any]) -> NDArray[Any]:
            nonlocal step
            step += 1
            if step <= steps:
                return np.stack([rng.uniform(-1.0, 1.0, act_dim) for rng in rngs]).astype(np.float32)
            return policy_fn(observations)

        return act

    return factory


def evaluate_policy(policy_fn: PolicyFn, task: str | TaskSpec, episodes: int = 10, seed: int = 0,
                    thresholds: Sequence[float] | None = None, num_envs: int = 10,
                    progress: bool = False, random_start_steps: int | None = None) -> EvalResult:
    """Run `episodes` episodes of `policy_fn` (float32 obs [B, obs_dim] -> actions [B, act_dim],
    clipped to the action space) and summarise them. thresholds default to the task's;
    random_start_steps (default: the task's `eval_random_start_steps`) is the start-state
    perturbation of `with_random_start`."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if episodes < 1:
        raise EvaluationError(f"need at least one evaluation episode, got {episodes}")
    chosen = tuple(float(k) for k in (spec.cost_thresholds if thresholds is None else thresholds))
    if not chosen or any(k < 0 for k in chosen):
        raise EvaluationError(f"cost thresholds must be a non-empty list of non-negative numbers, got {chosen}")
    checked = _checked(policy_fn, spec.act_dim)
    start_steps = spec.eval_random_start_steps if random_start_steps is None else random_start_steps
    if start_steps < 0:
        raise EvaluationError(f"random_start_steps must be >= 0, got {start_steps}")
    factory = with_random_start(checked, start_steps, spec.act_dim, seed) if start_steps else (lambda _i: checked)
    rollouts = run_episodes(spec, factory, episodes, seed=seed, num_envs=num_envs,
                            progress=f"evaluate {spec.name}" if progress else None)
    return EvalResult(task=spec.name, seed=seed, episode_returns=rollouts.episode_returns(),
                      episode_costs=rollouts.episode_cost_returns(), episode_lengths=rollouts.episode_lengths,
                      thresholds=chosen, reward_min=spec.reward_min, reward_max=spec.reward_max,
                      random_start_steps=start_steps)
