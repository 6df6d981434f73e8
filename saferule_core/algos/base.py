"""What every learner shares: config fields, model metadata, save/load and the deployable policy.

A learner is `XConfig` (a dataclass) + `X(Learner)` with `update(batch) -> metrics`. The learner
names its networks and optimizers once (`networks()`, `optimizers()`); saving, loading and the
deployable policy are built from those here, in one place.
"""

from __future__ import annotations

import contextlib
import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from saferule_core.algos.batch import Batch, NormalizationStats
from saferule_core.algos.configs import LearnerConfig
from saferule_core.algos.functional import ModelState, live_params
from saferule_core.algos.networks import DeployablePolicy
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import TaskError
from saferule_core.tasks.spec import get_task

Metrics = dict[str, torch.Tensor]
"""0-dim detached tensors; the trainer converts them to floats only when it logs."""


@dataclass(frozen=True)
class ModelInfo:
    """What a trained model is for: algorithm, task, spaces, normalisation and training data."""

    algo: str
    task: str
    obs_dim: int
    act_dim: int
    dataset_hash: str
    stats: NormalizationStats

    def to_dict(self) -> dict[str, Any]:
        return {"algo": self.algo, "task": self.task, "obs_dim": self.obs_dim, "act_dim": self.act_dim,
                "dataset_hash": self.dataset_hash, "normalization": self.stats.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        return cls(algo=str(data["algo"]), task=str(data["task"]), obs_dim=int(data["obs_dim"]),
                   act_dim=int(data["act_dim"]), dataset_hash=str(data["dataset_hash"]),
                   stats=NormalizationStats.from_dict(data["normalization"]))


def resolve_episode_len(config_episode_len: int, dataset: OfflineDataset) -> int:
    if config_episode_len > 0:
        return config_episode_len
    try:
        return get_task(dataset.task).episode_len
    except TaskError:
        return int(dataset.episode_lengths.max()) if dataset.num_episodes else 1


def per_step_cost_threshold(cost_limit: float, gamma: float, episode_len: int) -> float:
    """The discounted per-step Q_c budget matching an episode cost budget spread evenly over T steps:
    cost_limit * (1 - gamma^T) / (1 - gamma) / T (OSRL's qc_thres)."""
    return cost_limit * (1.0 - gamma ** episode_len) / (1.0 - gamma) / episode_len


def make_adam(params: Iterable[nn.Parameter], lr: float, impl: str) -> torch.optim.Adam:
    params = list(params)
    if impl == "fused":
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr, foreach=impl == "foreach")


def frozen_copy(module: M) -> M:
    """A target network: a copy without gradients."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


M = TypeVar("M", bound=nn.Module)
L = TypeVar("L", bound="Learner")
F = TypeVar("F", bound=Callable[..., Any])


class Learner(ABC):
    """Base of all learners. Subclasses build their networks in `__init__(config, info)`."""

    config_class: ClassVar[type[LearnerConfig]]
    # Whether K models of this learner can train as one stack (`algos.stacked`): the learner then
    # implements `update_step` and `draw_noise`, and `update` is `update_step` on its own state.
    stackable: ClassVar[bool] = False

    def __init__(self, config: LearnerConfig, info: ModelInfo) -> None:
        config.validate()
        self.config = config
        self.info = info
        self.device = torch.device(config.device)
        self.num_updates = 0
        self._own_state: ModelState | None = None

    # ----- construction ---------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def algo_name(cls, config: LearnerConfig) -> str:
        """The registry name this config trains as (e.g. "bc_safe")."""

    @classmethod
    def training_data(cls, dataset: OfflineDataset, config: LearnerConfig) -> OfflineDataset:
        """The part of `dataset` this learner trains on (all of it unless overridden)."""
        return dataset

    @classmethod
    def from_dataset(cls: type[L], dataset: OfflineDataset, config: LearnerConfig) -> L:
        """Build an untrained learner sized and normalised for `dataset`."""
        config.validate()
        config = replace(config, episode_len=resolve_episode_len(config.episode_len, dataset))
        data = cls.training_data(dataset, config)
        info = ModelInfo(algo=cls.algo_name(config), task=dataset.task, obs_dim=dataset.obs_dim,
                         act_dim=dataset.act_dim, dataset_hash=dataset.dataset_hash(),
                         stats=NormalizationStats.from_dataset(data, config.normalize_observations))
        return cls(config, info)

    # ----- what subclasses provide ------------------------------------------------------------
    def update(self, batch: Batch) -> Metrics:
        """One gradient step on `batch`; returns detached 0-dim metric tensors."""
        metrics = self.update_step(self.own_state(), batch, self.draw_noise(batch.size))
        self.num_updates += 1
        return metrics

    def update_step(self, state: ModelState, batch: Batch, noise: dict[str, torch.Tensor]) -> Metrics:
        """The update of a stackable learner, written once for one model and for K stacked ones
        (see `algos.functional`); learners that are not stackable override `update` instead."""
        raise NotImplementedError(f"{type(self).__name__} overrides update() and cannot train in a stack")

    def draw_noise(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Every random number one update needs, drawn from `generator` (the global RNG if None)."""
        return {}

    def own_state(self) -> ModelState:
        """This learner's live parameters, optimizers and controllers, as `update_step` reads them."""
        if self._own_state is None:
            networks = self.networks()
            self._own_state = ModelState(
                params={name: live_params(m) for name, m in networks.items() if any(True for _ in m.parameters())},
                optimizers=self.optimizers(),
                controllers={name: m for name, m in networks.items() if not any(True for _ in m.parameters())})
        return self._own_state

    @abstractmethod
    def policy_core(self) -> nn.Module:
        """The live network mapping normalised obs [B, obs_dim] -> unit-box actions [B, act_dim]."""

    @abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """Every module whose state is saved (targets and controllers included)."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimizer whose state is saved."""

    # ----- shared machinery -------------------------------------------------------------------
    def deployable_policy(self) -> DeployablePolicy:
        """A frozen copy of the policy: raw obs -> env-bounded actions, deterministic."""
        stats = self.info.stats.as_tensors()
        return DeployablePolicy(copy.deepcopy(self.policy_core()).cpu(), stats["obs_mean"], stats["obs_std"],
                                stats["action_low"], stats["action_high"])

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bfloat16 autocast for the matmuls when precision is "bf16", else a no-op."""
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def maybe_compile(self, fn: F) -> F:
        if not self.config.compile:
            return fn
        compiled: F = torch.compile(fn, dynamic=False)  # type: ignore[assignment]
        return compiled

    def state_dict(self) -> dict[str, Any]:
        return {
            "networks": {name: module.state_dict() for name, module in self.networks().items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers().items()},
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        networks, optimizers = self.networks(), self.optimizers()
        missing = (set(networks) - set(state["networks"])) | (set(optimizers) - set(state["optimizers"]))
        if missing:
            raise KeyError(f"state lacks {sorted(missing)}")
        for name, module in networks.items():
            module.load_state_dict(state["networks"][name])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.num_updates = int(state["num_updates"])

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    def train_mode(self, training: bool = True) -> None:
        for module in self.networks().values():
            module.train(training)

    def parameters(self) -> Iterator[nn.Parameter]:
        for module in self.networks().values():
            yield from module.parameters()
