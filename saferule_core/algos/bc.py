"""Behaviour cloning: BC-All (every episode) and BC-Safe (only episodes within the cost limit).

The actor tanh(MLP(s)) regresses the logged actions (unit box) with an MSE loss. BC-Safe differs
only in its training data: episodes whose cost return exceeds `cost_limit` are dropped at dataset
level, before normalisation statistics are computed (OSRL's bc_mode="safe").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from saferule_core.algos.base import Learner, Metrics, ModelInfo, make_adam
from saferule_core.algos.batch import Batch
from saferule_core.algos.configs import LearnerConfig
from saferule_core.algos.functional import ModelState, Params, bind
from saferule_core.algos.networks import SquashedDeterministicActor
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import DatasetError


@dataclass
class BCConfig(LearnerConfig):
    safe_only: bool = False
    hidden: tuple[int, ...] = (256, 256)
    lr: float = 1e-3


def safe_episodes(dataset: OfflineDataset, cost_limit: float) -> OfflineDataset:
    """The episodes whose (undiscounted) cost return is <= cost_limit."""
    keep = dataset.episode_cost_returns() <= cost_limit
    if not keep.any():
        lowest = float(dataset.episode_cost_returns().min()) if dataset.num_episodes else float("nan")
        raise DatasetError(f"no episode has a cost return <= the cost limit {cost_limit:g} "
                           f"(the lowest is {lowest:g}); BC-Safe has nothing to learn from")
    return dataset.subset_episodes(np.asarray(keep))


class BC(Learner):
    config_class = BCConfig
    config: BCConfig
    stackable = True

    def __init__(self, config: BCConfig, info: ModelInfo) -> None:
        super().__init__(config, info)
        self.actor = SquashedDeterministicActor(info.obs_dim, info.act_dim, config.hidden).to(self.device)
        self.actor_optim = make_adam(self.actor.parameters(), config.lr, config.optimizer)
        self._loss = self.maybe_compile(self._actor_loss)

    @classmethod
    def algo_name(cls, config: LearnerConfig) -> str:
        assert isinstance(config, BCConfig)
        return "bc_safe" if config.safe_only else "bc_all"

    @classmethod
    def training_data(cls, dataset: OfflineDataset, config: LearnerConfig) -> OfflineDataset:
        assert isinstance(config, BCConfig)
        return safe_episodes(dataset, config.cost_limit) if config.safe_only else dataset

    def _actor_loss(self, actor: Params, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            predicted = bind(self.actor, actor)(observations)
        return (predicted.float() - actions).pow(2).mean()

    def update_step(self, state: ModelState, batch: Batch, noise: dict[str, torch.Tensor]) -> Metrics:
        loss = state.run(self._loss, state.params["actor"], batch.observations, batch.actions)
        state.step("actor", loss)
        return {"actor_loss": loss.detach()}

    def policy_core(self) -> nn.Module:
        return self.actor

    def networks(self) -> dict[str, nn.Module]:
        return {"actor": self.actor}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optim}
