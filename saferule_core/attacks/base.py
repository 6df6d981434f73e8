"""What every poisoning attack shares: the result type, the poison rate, episode picking, poison.json.

An attack returns the poisoned dataset together with exactly what it touched: a mask over the
poisoned dataset's episodes and one over its transitions. Content hashes of the poisoned dataset
are recomputed, so its provenance describes the rows it really holds.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from saferule_core.data.dataset import TRANSITION_KEYS, OfflineDataset
from saferule_core.errors import AttackError

POISON_RECORD_FILE = "poison.json"
DEFAULT_POISON_RATE = 0.10

RngLike = np.random.Generator | int | None


@dataclass(frozen=True)
class AttackConfig:
    rate: float = DEFAULT_POISON_RATE   # fraction of the dataset's episodes to poison (or to inject)

    def __post_init__(self) -> None:
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not 0.0 < self.rate <= 1.0:
            raise AttackError(f"poison rate must be in (0, 1], got {self.rate!r}")

    def episode_count(self, num_episodes: int) -> int:
        """How many episodes the rate asks for: rate * num_episodes, rounded, at least one."""
        return max(1, int(math.floor(self.rate * num_episodes + 0.5)))


@dataclass(frozen=True)
class PoisonResult:
    dataset: OfflineDataset
    transition_mask: NDArray[Any]     # over dataset's rows: True where the attack changed or added the row
    episode_mask: NDArray[Any]        # over dataset's episodes: True where the attack touched the episode
    attack_name: str
    config: AttackConfig

    def poisoned_episode_ids(self) -> list[str]:
        return [ep.episode_id for ep, m in zip(self.dataset.episodes, self.episode_mask) if m]

    def record(self, source_dataset_hash: str, seed: int | None = None) -> dict[str, Any]:
        """The JSON content of poison.json: which episodes are poisoned and how."""
        return {
            "attack": self.attack_name,
            "config": asdict(self.config),
            "seed": seed,
            "source_dataset_hash": source_dataset_hash,
            "poisoned_dataset_hash": self.dataset.dataset_hash(),
            "num_episodes": self.dataset.num_episodes,
            "num_transitions": self.dataset.num_transitions,
            "poisoned_episode_ids": self.poisoned_episode_ids(),
            "num_poisoned_episodes": int(self.episode_mask.sum()),
            "num_poisoned_transitions": int(self.transition_mask.sum()),
        }


def poison_record_bytes(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")


def poisoned_episode_mask(dataset: OfflineDataset, record: dict[str, Any]) -> NDArray[Any]:
    """Mask over `dataset`'s episodes of those a poison record names (purged ones simply absent)."""
    ids = record.get("poisoned_episode_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise AttackError("poison record has no list of poisoned_episode_ids")
    return np.isin(np.array(dataset.episode_ids(), dtype=object), np.array(ids, dtype=object))


def make_rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _costly_pool(dataset: OfflineDataset, count: int, cost_threshold: float,
                 pool_factor: float) -> tuple[NDArray[Any], NDArray[Any]]:
    """The episodes with a cost return above `cost_threshold` (at least `count` of them, else
    AttackError), and the ceil(pool_factor * count) costliest of those, costliest first."""
    if pool_factor < 1.0:
        raise AttackError(f"pool_factor must be at least 1, got {pool_factor}")
    cost_returns = dataset.episode_cost_returns()
    candidates = np.flatnonzero(cost_returns > cost_threshold)
    if candidates.size < count:
        raise AttackError(f"the attack needs {count} episodes with cost return above {cost_threshold:g}, but the "
                          f"dataset has {candidates.size} of {dataset.num_episodes}; lower the rate or the threshold")
    costliest_first = candidates[np.argsort(-cost_returns[candidates], kind="stable")]
    return candidates, costliest_first[:max(count, math.ceil(pool_factor * count))]


def pick_most_unsafe(dataset: OfflineDataset, count: int, cost_threshold: float, pool_factor: float,
                     rng: np.random.Generator) -> NDArray[Any]:
    """Episode mask: `count` episodes drawn at random from the most unsafe ones.

    Candidates have a cost return above `cost_threshold`; the draw is from the
    ceil(pool_factor * count) costliest of them.
    """
    _, pool = _costly_pool(dataset, count, cost_threshold, pool_factor)
    mask = np.zeros(dataset.num_episodes, dtype=bool)
    mask[rng.choice(pool, size=count, replace=False)] = True
    return mask


def pick_concentrated_unsafe(dataset: OfflineDataset, count: int, cost_threshold: float, pool_factor: float,
                             rng: np.random.Generator) -> NDArray[Any]:
    """Episode mask: an anchor drawn from the ceil(pool_factor * count) costliest episodes, and the
    `count` - 1 unsafe episodes nearest to it in behaviour.

    Behaviour is an episode's mean observation and mean action, standardised over the unsafe
    episodes. Poison spread over all unsafe behaviour is diluted by the unpoisoned episodes that
    show the same behaviour with its true costs; poison concentrated in one region of state-action
    space leaves few true labels there for a critic to average with.
    """
    candidates, pool = _costly_pool(dataset, count, cost_threshold, pool_factor)
    starts, lengths = dataset.episode_starts, dataset.episode_lengths[:, None]
    behaviour = np.concatenate([np.add.reduceat(dataset.observations.astype(np.float64), starts) / lengths,
                                np.add.reduceat(dataset.actions.astype(np.float64), starts) / lengths], axis=1)
    unsafe = behaviour[candidates]
    standardised = (unsafe - unsafe.mean(axis=0)) / np.maximum(unsafe.std(axis=0), 1e-8)
    anchor = int(np.searchsorted(candidates, rng.choice(pool)))   # its row among the candidates
    distances = np.linalg.norm(standardised - standardised[anchor], axis=1)
    distances[anchor] = -1.0  # the anchor itself, even where another episode behaves identically
    mask = np.zeros(dataset.num_episodes, dtype=bool)
    mask[candidates[np.argsort(distances, kind="stable")[:count]]] = True
    return mask


def pick_any(dataset: OfflineDataset, count: int, rng: np.random.Generator) -> NDArray[Any]:
    mask = np.zeros(dataset.num_episodes, dtype=bool)
    mask[rng.choice(dataset.num_episodes, size=count, replace=False)] = True
    return mask


def with_rows(dataset: OfflineDataset, **arrays: NDArray[Any]) -> OfflineDataset:
    """A copy of `dataset` with some transition arrays replaced and content hashes recomputed."""
    fields = {key: arrays.get(key, getattr(dataset, key)) for key in TRANSITION_KEYS}
    return OfflineDataset(**fields, episodes=list(dataset.episodes), episode_lengths=dataset.episode_lengths.copy(),
                          task=dataset.task, attrs=dict(dataset.attrs)).with_content_hashes()
