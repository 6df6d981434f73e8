"""The offline dataset: DSRL transition arrays plus per-episode provenance.

Transitions are stored column-wise (one float32 array per DSRL key, one row per transition) and
episodes are contiguous row ranges. Every episode knows where it came from (robot, bag, time) and
carries a content hash of its rows, so that a forget ledger can name exactly what was removed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from saferule_core.errors import DatasetError

TRANSITION_KEYS: tuple[str, ...] = (
    "observations", "next_observations", "actions", "rewards", "costs", "terminals", "timeouts",
)
VECTOR_KEYS: tuple[str, ...] = ("observations", "next_observations", "actions")
SCALAR_KEYS: tuple[str, ...] = ("rewards", "costs", "terminals", "timeouts")


def dataset_hash_from_episodes(task: str, episode_ids: Sequence[str], content_hashes: Sequence[str]) -> str:
    """A dataset's hash from its task and its episodes' ids and content hashes, in order.

    Computable from provenance alone, so a store can hash itself without loading rows.
    """
    h = hashlib.sha256(task.encode())
    for episode_id, content_hash in zip(episode_ids, content_hashes, strict=True):
        h.update(episode_id.encode())
        h.update(content_hash.encode())
    return h.hexdigest()


@dataclass(frozen=True)
class EpisodeInfo:
    """Provenance of one episode. Times are POSIX seconds (float)."""

    episode_id: str
    robot_id: str
    source_bag: str
    start_time: float
    end_time: float
    content_hash: str = ""


@dataclass
class OfflineDataset:
    """Transitions (DSRL layout, float32) and the episodes they form.

    `episode_starts[i]`/`episode_lengths[i]` give the row range of `episodes[i]`; rows of one
    episode are contiguous and episodes are in row order.
    """

    observations: NDArray[Any]
    next_observations: NDArray[Any]
    actions: NDArray[Any]
    rewards: NDArray[Any]
    costs: NDArray[Any]
    terminals: NDArray[Any]
    timeouts: NDArray[Any]
    episodes: list[EpisodeInfo]
    episode_lengths: NDArray[Any]
    task: str = ""
    attrs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in TRANSITION_KEYS:
            setattr(self, key, np.ascontiguousarray(getattr(self, key), dtype=np.float32))
        self.episode_lengths = np.asarray(self.episode_lengths, dtype=np.int64)
        self.validate()

    # ----- shape and content checks -------------------------------------------------------
    def validate(self) -> None:
        n = self.observations.shape[0] if self.observations.ndim else -1
        if self.observations.ndim != 2:
            raise DatasetError(f"observations must be 2-D (rows, obs_dim), got shape {self.observations.shape}")
        if self.actions.ndim != 2:
            raise DatasetError(f"actions must be 2-D (rows, act_dim), got shape {self.actions.shape}")
        if self.next_observations.shape != self.observations.shape:
            raise DatasetError(f"next_observations shape {self.next_observations.shape} differs from "
                               f"observations shape {self.observations.shape}")
        for key in ("actions", *SCALAR_KEYS):
            rows = getattr(self, key).shape[0]
            if rows != n:
                raise DatasetError(f"{key} has {rows} rows but observations has {n}")
        for key in SCALAR_KEYS:
            if getattr(self, key).ndim != 1:
                raise DatasetError(f"{key} must be 1-D, got shape {getattr(self, key).shape}")
        for key in TRANSITION_KEYS:
            arr = getattr(self, key)
            if not np.isfinite(arr).all():
                bad = int((~np.isfinite(arr)).reshape(arr.shape[0], -1).any(axis=1).sum())
                raise DatasetError(f"{key} contains NaN or infinite values in {bad} rows")
        if len(self.episodes) != len(self.episode_lengths):
            raise DatasetError(f"{len(self.episodes)} episodes but {len(self.episode_lengths)} episode lengths")
        if (self.episode_lengths <= 0).any():
            raise DatasetError("every episode must have at least one transition")
        if int(self.episode_lengths.sum()) != n:
            raise DatasetError(f"episode lengths sum to {int(self.episode_lengths.sum())} but there are {n} rows")
        ids = [ep.episode_id for ep in self.episodes]
        if len(set(ids)) != len(ids):
            raise DatasetError("episode ids are not unique")

    # ----- sizes --------------------------------------------------------------------------
    @property
    def num_transitions(self) -> int:
        return int(self.observations.shape[0])

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def episode_starts(self) -> NDArray[Any]:
        return np.concatenate([[0], np.cumsum(self.episode_lengths)[:-1]]).astype(np.int64)

    def finished_episodes(self) -> NDArray[Any]:
        """Per episode: whether its last recorded step ended it (terminal or time limit). An episode
        still running when its bag closed is not finished; it goes on in the next bag."""
        ends = self.episode_starts + self.episode_lengths - 1
        return np.asarray((self.terminals[ends] > 0) | (self.timeouts[ends] > 0), dtype=bool)

    def transition_episode_index(self) -> NDArray[Any]:
        """Per row: the index (into `episodes`) of the episode the row belongs to."""
        return np.repeat(np.arange(self.num_episodes), self.episode_lengths)

    def episode_ids(self) -> list[str]:
        return [ep.episode_id for ep in self.episodes]

    # ----- per-episode summaries ----------------------------------------------------------
    def episode_returns(self) -> NDArray[Any]:
        return np.add.reduceat(self.rewards.astype(np.float64), self.episode_starts) if self.num_episodes else np.zeros(0)

    def episode_cost_returns(self) -> NDArray[Any]:
        return np.add.reduceat(self.costs.astype(np.float64), self.episode_starts) if self.num_episodes else np.zeros(0)

    def discounted_costs_to_go(self, gamma: float) -> NDArray[Any]:
        """Per row t: sum over k >= 0 of gamma^k * cost[t + k] up to the end of t's episode (the
        logged behaviour's discounted cost-to-go; an episode cut off by the log ends there)."""
        return self._discounted_to_go(self.costs, gamma)

    def discounted_rewards_to_go(self, gamma: float) -> NDArray[Any]:
        """As `discounted_costs_to_go`, for the rewards."""
        return self._discounted_to_go(self.rewards, gamma)

    def _discounted_to_go(self, values: NDArray[Any], gamma: float) -> NDArray[Any]:
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if not self.num_transitions:
            return np.zeros(0)
        episode = self.transition_episode_index()
        position = np.arange(self.num_transitions) - self.episode_starts[episode]
        weights = np.power(gamma, position, dtype=np.float64)   # >= gamma^(longest episode): no underflow at 0.99
        weighted = values.astype(np.float64) * weights
        to_end = np.cumsum(weighted[::-1])[::-1]                 # sums to the end of the whole array
        after_episode = np.append(to_end, 0.0)[self.episode_starts[episode] + self.episode_lengths[episode]]
        return (to_end - after_episode) / weights

    # ----- hashing ------------------------------------------------------------------------
    def episode_content_hash(self, index: int) -> str:
        start = int(self.episode_starts[index])
        stop = start + int(self.episode_lengths[index])
        h = hashlib.sha256()
        for key in TRANSITION_KEYS:
            h.update(getattr(self, key)[start:stop].tobytes())
        return h.hexdigest()

    def with_content_hashes(self) -> OfflineDataset:
        """A copy whose episodes carry the hash of their current rows."""
        episodes = [replace(ep, content_hash=self.episode_content_hash(i)) for i, ep in enumerate(self.episodes)]
        return replace(self, episodes=episodes)

    def dataset_hash(self) -> str:
        """Hash of the whole dataset: its episodes' ids and content hashes, in order."""
        return dataset_hash_from_episodes(
            self.task, self.episode_ids(),
            [ep.content_hash or self.episode_content_hash(i) for i, ep in enumerate(self.episodes)])

    # ----- row selection ------------------------------------------------------------------
    def subset_episodes(self, keep: NDArray[Any]) -> OfflineDataset:
        """A new dataset with only the episodes where the boolean mask `keep` is True."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (self.num_episodes,):
            raise ValueError(f"episode mask has shape {keep.shape}, expected ({self.num_episodes},)")
        rows = np.repeat(keep, self.episode_lengths)
        arrays = {key: getattr(self, key)[rows] for key in TRANSITION_KEYS}
        return OfflineDataset(
            **arrays,
            episodes=[ep for ep, k in zip(self.episodes, keep) if k],
            episode_lengths=self.episode_lengths[keep],
            task=self.task,
            attrs=dict(self.attrs),
        )

    def transition_mask_for_episodes(self, episode_mask: NDArray[Any]) -> NDArray[Any]:
        return np.repeat(np.asarray(episode_mask, dtype=bool), self.episode_lengths)

    @staticmethod
    def concatenate(parts: list[OfflineDataset]) -> OfflineDataset:
        if not parts:
            raise DatasetError("nothing to concatenate")
        return OfflineDataset(
            **{key: np.concatenate([getattr(p, key) for p in parts]) for key in TRANSITION_KEYS},
            episodes=[ep for p in parts for ep in p.episodes],
            episode_lengths=np.concatenate([p.episode_lengths for p in parts]),
            task=parts[0].task,
            attrs=dict(parts[0].attrs),
        )
