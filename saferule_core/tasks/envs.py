"""One Gymnasium interface over bullet-safety-gym and safety-gymnasium.

`make_env(task)` returns a `SafeEnv`: reset -> (obs, info), step -> (obs, reward, terminated,
truncated, info) with float32 observations, actions clipped to the action space and the step cost
as a float in info["cost"]. safety-gymnasium's 6-tuple step is folded into that shape.

bullet-safety-gym ignores reset(seed=...) and draws its start states from numpy's global RNG, so
SafeEnv seeds that RNG around each bullet reset (and restores it afterwards) with a per-episode
seed drawn from its own generator: a seeded env replays the same episodes. safety-gymnasium is
imported only when one of its tasks is made (the import takes seconds).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray


def _silence_adroit_notice() -> None:
    """gymnasium-robotics (pulled in by safety-gymnasium and loaded by gymnasium's plugin hook)
    prints a notice about its Adroit hand tasks on every import; we never use those tasks."""
    with contextlib.suppress(ImportError):
        from farama_notifications import notifications

        notifications.pop("gymnasium_robotics", None)


_silence_adroit_notice()

import gymnasium  # noqa: E402  (after the notice is silenced)

from saferule_core.errors import TaskError  # noqa: E402
from saferule_core.tasks.spec import TaskSpec, get_task  # noqa: E402

_SEED_BOUND = 2**31 - 1


@contextlib.contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    """Seed numpy's legacy global RNG for the block, then put its previous state back."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


@contextlib.contextmanager
def _process_std_streams() -> Iterator[None]:
    """Point sys.stdout/sys.stderr at the process's own streams for the block.

    bullet-safety-gym silences pybullet's banner by redirecting the file descriptor behind
    sys.stdout/sys.stderr and flushing the C stream named after it; with those replaced (pytest's
    capture, notebooks) that fails. The process streams keep the same descriptors 1 and 2.
    """
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.__stdout__ or saved[0]
    sys.stderr = sys.__stderr__ or saved[1]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def _make_inner(spec: TaskSpec) -> gymnasium.Env[Any, Any]:
    if spec.backend == "bullet":
        with _process_std_streams():
            importlib.import_module("bullet_safety_gym.envs.builder")
            importlib.import_module("bullet_safety_gym")  # registers the Safety*-v0 ids
            return gymnasium.make(spec.env_id, max_episode_steps=spec.episode_len, disable_env_checker=True)
    if spec.backend == "mujoco":
        with warnings.catch_warnings():  # its import and world building warn about numpy deprecations
            warnings.simplefilter("ignore", DeprecationWarning)
            safety_gymnasium = importlib.import_module("safety_gymnasium")
            return safety_gymnasium.make(spec.env_id, max_episode_steps=spec.episode_len,
                                         disable_env_checker=True)
    raise TaskError(f"task {spec.name!r} has unknown backend {spec.backend!r}; expected 'bullet' or 'mujoco'")


class SafeEnv(gymnasium.Env[NDArray[np.float32], NDArray[np.float32]]):
    """A safe-RL task with cost in info["cost"]; see the module docstring."""

    observation_space: gymnasium.spaces.Box
    action_space: gymnasium.spaces.Box

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, spec: TaskSpec, seed: int | None = None) -> None:
        self._task = spec
        try:
            self._inner = _make_inner(spec)
        except TaskError:
            raise
        except Exception as err:  # the simulators raise many kinds; name the task in one line
            raise TaskError(f"cannot make environment {spec.env_id} for task {spec.name}: {err}") from err
        inner_obs = self._inner.observation_space
        inner_act = self._inner.action_space
        if not (isinstance(inner_obs, gymnasium.spaces.Box) and isinstance(inner_act, gymnasium.spaces.Box)):
            raise TaskError(f"{spec.env_id} does not have box observation and action spaces")
        self.observation_space = gymnasium.spaces.Box(
            inner_obs.low.astype(np.float32), inner_obs.high.astype(np.float32), dtype=np.float32)
        self.action_space = gymnasium.spaces.Box(
            inner_act.low.astype(np.float32), inner_act.high.astype(np.float32), dtype=np.float32)
        if self.observation_space.shape != (spec.obs_dim,) or self.action_space.shape != (spec.act_dim,):
            raise TaskError(f"{spec.env_id} has observation shape {self.observation_space.shape} and action "
                            f"shape {self.action_space.shape}; task {spec.name} expects ({spec.obs_dim},) and "
                            f"({spec.act_dim},)")
        self._episode_seeds = np.random.default_rng(seed)

    @property
    def task(self) -> TaskSpec:
        return self._task

    @property
    def dt(self) -> float:
        """Simulated seconds per step."""
        inner = self._inner.unwrapped
        if self._task.backend == "bullet":
            return float(inner.dt)  # type: ignore[attr-defined]
        world_task = inner.task  # type: ignore[attr-defined]
        if world_task.world is None:  # safety-gymnasium builds its world on the first reset
            self._inner.reset(seed=0)
        return float(world_task.model.opt.timestep * world_task.sim_conf.frameskip_binom_n)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[NDArray[Any], dict[str, Any]]:
        episode_seed = int(seed) if seed is not None else int(self._episode_seeds.integers(_SEED_BOUND))
        if self._task.backend == "bullet":
            with _global_numpy_seed(episode_seed):
                obs, info = self._inner.reset(seed=episode_seed, options=options)
        else:
            obs, info = self._inner.reset(seed=episode_seed, options=options)
        return np.asarray(obs, dtype=np.float32), dict(info)

    def reset_randomised(self, random_steps: int, rng: np.random.Generator) -> NDArray[Any]:
        """Reset, then take `random_steps` uniform random actions drawn from `rng` that are not part
        of the episode (a randomised start state); returns the observation the episode starts from.
        A start whose random steps already end the episode is replaced by a plain reset."""
        if random_steps < 0:
            raise ValueError(f"random_steps must be >= 0, got {random_steps}")
        observation, _ = self.reset()
        low, high = self.action_space.low, self.action_space.high
        for _ in range(random_steps):
            observation, _, terminated, truncated, _ = self.step(rng.uniform(low, high).astype(np.float32))
            if terminated or truncated:
                observation, _ = self.reset()
                break
        return observation

    def step(self, action: NDArray[Any]) -> tuple[NDArray[Any], float, bool, bool, dict[str, Any]]:
        clipped = np.clip(np.asarray(action, dtype=np.float32).reshape(self.action_space.shape),
                          self.action_space.low, self.action_space.high)
        out = self._inner.step(clipped)
        if len(out) == 6:  # safety-gymnasium: (obs, reward, cost, terminated, truncated, info)
            obs, reward, cost, terminated, truncated, info = out
        else:
            obs, reward, terminated, truncated, info = out
            cost = info.get("cost", 0.0)
        info = dict(info)
        info["cost"] = float(cost)
        return np.asarray(obs, dtype=np.float32), float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        self._inner.close()


def make_env(name_or_spec: str | TaskSpec, seed: int | None = None) -> SafeEnv:
    """Make a task's environment by short name ("BallRun"), env id or TaskSpec."""
    spec = name_or_spec if isinstance(name_or_spec, TaskSpec) else get_task(name_or_spec)
    return SafeEnv(spec, seed=seed)


class SafeVectorEnv:
    """`num_envs` SafeEnvs of one task stepped in lockstep (no auto-reset).

    Batches are [num_envs, ...]; `step` takes an `active` mask and leaves the other envs alone
    (their rows repeat the last observation with zero reward and cost).
    """

    def __init__(self, name_or_spec: str | TaskSpec, num_envs: int, seed: int | None = None) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        spec = name_or_spec if isinstance(name_or_spec, TaskSpec) else get_task(name_or_spec)
        seeds = np.random.SeedSequence(seed).generate_state(num_envs)
        self.task = spec
        self.envs = [SafeEnv(spec, seed=int(s)) for s in seeds]
        self._last_obs = np.zeros((num_envs, spec.obs_dim), dtype=np.float32)

    @property
    def num_envs(self) -> int:
        return len(self.envs)

    @property
    def dt(self) -> float:
        return self.envs[0].dt

    def reset(self, seeds: Sequence[int] | None = None) -> NDArray[Any]:
        """Reset every env (env i with seeds[i] when given); returns observations [num_envs, obs_dim]."""
        if seeds is not None and len(seeds) != self.num_envs:
            raise ValueError(f"{len(seeds)} seeds for {self.num_envs} envs")
        for i, env in enumerate(self.envs):
            self._last_obs[i], _ = env.reset(seed=None if seeds is None else int(seeds[i]))
        return self._last_obs.copy()

    def step(self, actions: NDArray[Any], active: NDArray[Any] | None = None
             ) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]:
        """Returns (observations, rewards, costs, terminated, truncated), each batched."""
        n = self.num_envs
        active = np.ones(n, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        rewards = np.zeros(n, dtype=np.float64)
        costs = np.zeros(n, dtype=np.float64)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        for i in np.flatnonzero(active):
            obs, rewards[i], terminated[i], truncated[i], info = self.envs[i].step(actions[i])
            self._last_obs[i] = obs
            costs[i] = info["cost"]
        return self._last_obs.copy(), rewards, costs, terminated, truncated

    def close(self) -> None:
        for env in self.envs:
            env.close()
