"""Training batches: the whole dataset as one tensor on the device, sampled by vectorised index.

`NormalizationStats` is the one home of the observation mean/std and the action bounds: the
sampler applies them once when it loads the data, the learners save them with the model and
`DeployablePolicy` applies them at run time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import DatasetError

# Added to the per-feature std so that (nearly) constant features do not explode.
OBS_STD_EPS: float = 1e-3


@dataclass(frozen=True, eq=False)
class NormalizationStats:
    """Observation mean/std (networks see (obs - mean) / std) and the env's action bounds
    (networks act in [-1, 1]; actions are mapped linearly onto [action_low, action_high])."""

    obs_mean: NDArray[Any]
    obs_std: NDArray[Any]
    action_low: NDArray[Any]
    action_high: NDArray[Any]

    def __post_init__(self) -> None:
        for name in ("obs_mean", "obs_std", "action_low", "action_high"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float32).reshape(-1))
        if self.obs_mean.shape != self.obs_std.shape:
            raise DatasetError("observation mean and std have different sizes")
        if self.action_low.shape != self.action_high.shape or not (self.action_high > self.action_low).all():
            raise DatasetError(f"action bounds are not a box: low={self.action_low}, high={self.action_high}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NormalizationStats):
            return NotImplemented
        return all(np.array_equal(getattr(self, name), getattr(other, name))
                   for name in ("obs_mean", "obs_std", "action_low", "action_high"))

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_dataset(cls, dataset: OfflineDataset, normalize_observations: bool = True) -> NormalizationStats:
        """Mean/std of the dataset's observations (identity when `normalize_observations` is off)
        and the action bounds named in `dataset.attrs` ("action_low"/"action_high", JSON lists),
        else the unit box."""
        if normalize_observations:
            obs = dataset.observations.astype(np.float64)
            mean, std = obs.mean(axis=0), obs.std(axis=0) + OBS_STD_EPS
        else:
            mean, std = np.zeros(dataset.obs_dim), np.ones(dataset.obs_dim)
        low, high = action_bounds_from_attrs(dataset.attrs, dataset.act_dim)
        return cls(mean, std, low, high)

    @property
    def obs_dim(self) -> int:
        return int(self.obs_mean.shape[0])

    @property
    def act_dim(self) -> int:
        return int(self.action_low.shape[0])

    def normalize_observations(self, obs: NDArray[Any]) -> NDArray[Any]:
        return ((obs - self.obs_mean) / self.obs_std).astype(np.float32)

    def actions_to_unit(self, actions: NDArray[Any]) -> NDArray[Any]:
        """Env actions -> [-1, 1] (clipped: logged actions may overshoot the bounds slightly)."""
        unit = 2.0 * (actions - self.action_low) / (self.action_high - self.action_low) - 1.0
        return np.clip(unit, -1.0, 1.0).astype(np.float32)

    def as_tensors(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        return {name: torch.as_tensor(getattr(self, name), device=device)
                for name in ("obs_mean", "obs_std", "action_low", "action_high")}

    def to_dict(self) -> dict[str, list[float]]:
        return {name: getattr(self, name).tolist() for name in ("obs_mean", "obs_std", "action_low", "action_high")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormalizationStats:
        return cls(data["obs_mean"], data["obs_std"], data["action_low"], data["action_high"])


def action_bounds_from_attrs(attrs: dict[str, str], act_dim: int) -> tuple[NDArray[Any], NDArray[Any]]:
    if "action_low" not in attrs and "action_high" not in attrs:
        return -np.ones(act_dim, dtype=np.float32), np.ones(act_dim, dtype=np.float32)
    try:
        low = np.asarray(json.loads(attrs["action_low"]), dtype=np.float32).reshape(-1)
        high = np.asarray(json.loads(attrs["action_high"]), dtype=np.float32).reshape(-1)
    except (KeyError, ValueError, TypeError) as err:
        raise DatasetError(f"dataset attrs action_low/action_high are not two JSON number lists: {err}") from err
    if low.shape != (act_dim,) or high.shape != (act_dim,):
        raise DatasetError(f"dataset action bounds have sizes {low.shape[0]}/{high.shape[0]}, expected {act_dim}")
    return low, high


@dataclass(frozen=True)
class Batch:
    """Transitions ready for a learner: normalised observations, unit-box actions, [B] scalars."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    costs: torch.Tensor
    next_observations: torch.Tensor
    terminals: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.observations.shape[0])


class BatchSampler:
    """Uniform random batches (with replacement) from a dataset kept on `device`.

    All columns live in ONE [N, 2*obs_dim + act_dim + 3] tensor, so a batch is one `randint` plus
    one `index_select`; the columns of a batch are views into that block.
    """

    def __init__(self, dataset: OfflineDataset, stats: NormalizationStats, batch_size: int,
                 device: torch.device | str = "cpu", seed: int = 0) -> None:
        if dataset.num_transitions == 0:
            raise DatasetError("the dataset has no transitions to train on")
        if batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        if (stats.obs_dim, stats.act_dim) != (dataset.obs_dim, dataset.act_dim):
            raise DatasetError(f"normalisation stats are for obs/act dims {stats.obs_dim}/{stats.act_dim}, "
                               f"the dataset has {dataset.obs_dim}/{dataset.act_dim}")
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.obs_dim, self.act_dim = dataset.obs_dim, dataset.act_dim
        columns = np.concatenate([
            stats.normalize_observations(dataset.observations),
            stats.actions_to_unit(dataset.actions),
            dataset.rewards[:, None], dataset.costs[:, None],
            stats.normalize_observations(dataset.next_observations),
            dataset.terminals[:, None],
        ], axis=1).astype(np.float32)
        self.data = torch.from_numpy(columns).to(self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    @property
    def num_transitions(self) -> int:
        return int(self.data.shape[0])

    def _split(self, rows: torch.Tensor) -> Batch:
        o, a = self.obs_dim, self.act_dim
        return Batch(
            observations=rows[:, :o],
            actions=rows[:, o:o + a],
            rewards=rows[:, o + a],
            costs=rows[:, o + a + 1],
            next_observations=rows[:, o + a + 2:2 * o + a + 2],
            terminals=rows[:, 2 * o + a + 2],
        )

    def sample(self) -> Batch:
        idx = torch.randint(self.num_transitions, (self.batch_size,), generator=self.generator, device=self.device)
        return self._split(self.data.index_select(0, idx))

    def rows(self, indices: torch.Tensor) -> Batch:
        """The transitions at `indices` (e.g. all of them, for evaluation)."""
        return self._split(self.data.index_select(0, indices.to(self.device)))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
