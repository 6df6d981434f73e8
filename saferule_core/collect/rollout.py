"""Run whole episodes of a batched policy on a task, a wave of `num_envs` episodes at a time.

Both data collection (scripted behaviour families) and evaluation (a trained policy) use this
one loop. Each episode i is reset with a seed derived from (seed, i), so its start state does not
depend on how episodes are batched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from saferule_core.tasks.spec import PolicyFn, TaskSpec

if TYPE_CHECKING:
    from saferule_core.tasks.envs import SafeVectorEnv

# episode indices of a wave -> the policy that drives that wave (row j drives episode indices[j])
PolicyFactory = Callable[[NDArray[Any]], PolicyFn]


@dataclass
class Rollouts:
    """Transitions of finished episodes, DSRL layout, episodes contiguous and in index order."""

    observations: NDArray[Any]
    next_observations: NDArray[Any]
    actions: NDArray[Any]
    rewards: NDArray[Any]
    costs: NDArray[Any]
    terminals: NDArray[Any]
    timeouts: NDArray[Any]
    episode_lengths: NDArray[Any]
    dt: float                    # simulated seconds per step
    action_low: NDArray[Any]       # the action space the actions were clipped to
    action_high: NDArray[Any]

    @property
    def episode_starts(self) -> NDArray[Any]:
        return np.concatenate([[0], np.cumsum(self.episode_lengths)[:-1]]).astype(np.int64)

    def episode_returns(self) -> NDArray[Any]:
        return np.add.reduceat(self.rewards.astype(np.float64), self.episode_starts)

    def episode_cost_returns(self) -> NDArray[Any]:
        return np.add.reduceat(self.costs.astype(np.float64), self.episode_starts)


def episode_seeds(seed: int, num_episodes: int) -> NDArray[Any]:
    return np.random.SeedSequence([seed, 0x5AFE]).generate_state(num_episodes).astype(np.int64)


def run_episodes(task: TaskSpec, policy_factory: PolicyFactory, num_episodes: int, seed: int,
                 num_envs: int = 8, progress: str | None = None) -> Rollouts:
    """Roll out `num_episodes` episodes; `progress` is a tqdm description (None: no bar)."""
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    num_envs = max(1, min(num_envs, num_episodes))
    # gymnasium and the simulators load here, not at import: every CLI command imports this module
    from saferule_core.tasks.envs import SafeVectorEnv

    seeds = episode_seeds(seed, num_episodes)
    horizon = task.episode_len
    envs = SafeVectorEnv(task, num_envs, seed=seed)
    dt = envs.dt
    action_space = envs.envs[0].action_space
    parts: list[dict[str, NDArray[Any]]] = []
    lengths: list[NDArray[Any]] = []
    bar = tqdm(total=num_episodes, desc=progress, unit="ep", disable=progress is None, leave=False)
    try:
        for wave_start in range(0, num_episodes, num_envs):
            indices = np.arange(wave_start, min(wave_start + num_envs, num_episodes))
            wave, wave_lengths = _run_wave(envs, policy_factory(indices), seeds[indices], horizon)
            parts.append(wave)
            lengths.append(wave_lengths)
            bar.update(len(indices))
    finally:
        bar.close()
        envs.close()
    return Rollouts(**{key: np.concatenate([p[key] for p in parts]) for key in parts[0]},
                    episode_lengths=np.concatenate(lengths), dt=dt,
                    action_low=action_space.low.copy(), action_high=action_space.high.copy())


def _run_wave(envs: SafeVectorEnv, policy: PolicyFn, seeds: NDArray[Any], horizon: int
              ) -> tuple[dict[str, NDArray[Any]], NDArray[Any]]:
    """One lockstep wave of len(seeds) episodes on the first len(seeds) envs."""
    b = len(seeds)
    n = envs.num_envs
    obs_dim, act_dim = envs.task.obs_dim, envs.task.act_dim
    action_space = envs.envs[0].action_space
    all_seeds = np.concatenate([seeds, np.zeros(n - b, dtype=np.int64)])
    obs = envs.reset(all_seeds)[:b]
    observations = np.zeros((b, horizon + 1, obs_dim), dtype=np.float32)
    actions = np.zeros((b, horizon, act_dim), dtype=np.float32)
    rewards = np.zeros((b, horizon), dtype=np.float32)
    costs = np.zeros((b, horizon), dtype=np.float32)
    terminals = np.zeros((b, horizon), dtype=np.float32)
    timeouts = np.zeros((b, horizon), dtype=np.float32)
    lengths = np.full(b, horizon, dtype=np.int64)
    active = np.ones(b, dtype=bool)
    observations[:, 0] = obs
    for t in range(horizon):
        act = np.asarray(policy(obs), dtype=np.float32).reshape(b, act_dim)
        act = np.clip(act, action_space.low, action_space.high)
        padded = np.zeros((n, act_dim), dtype=np.float32)
        padded[:b] = act
        step_active = np.concatenate([active, np.zeros(n - b, dtype=bool)])
        next_obs, rew, cost, term, trunc = envs.step(padded, step_active)
        next_obs, rew, cost, term, trunc = next_obs[:b], rew[:b], cost[:b], term[:b], trunc[:b]
        actions[active, t] = act[active]
        rewards[active, t] = rew[active]
        costs[active, t] = cost[active]
        observations[active, t + 1] = next_obs[active]
        terminals[active, t] = term[active]
        ended = active & (term | trunc)
        # an episode that reaches the task's horizon is a time-out even if the simulator has none
        timeouts[active, t] = (trunc[active] & ~term[active]) | (t == horizon - 1)
        timeouts[active & term, t] = 0.0
        lengths[ended] = t + 1
        active &= ~ended
        obs = next_obs
        if not active.any():
            break
    rows = np.arange(horizon)[None, :] < lengths[:, None]
    wave = {
        "observations": observations[:, :-1][rows],
        "next_observations": observations[:, 1:][rows],
        "actions": actions[rows],
        "rewards": rewards[rows],
        "costs": costs[rows],
        "terminals": terminals[rows],
        "timeouts": timeouts[rows],
    }
    return wave, lengths
