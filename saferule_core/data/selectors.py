"""Forget selectors: which logged episodes a forget request names.

A selector constrains episode ids, robot ids, bag names and a window on episode start time
(POSIX seconds, inclusive). Set fields combine with AND; an unset field places no constraint; a
selector with no field set is refused. A boolean episode mask (e.g. a poison mask) becomes a
selector by naming its episodes (`mask_selector`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from saferule_core.data.dataset import EpisodeInfo
from saferule_core.errors import SelectorError
from saferule_core.limits import MAX_SELECTOR_ENTRIES, MAX_SELECTOR_ID_CHARS, check_chars

_LIST_FIELDS: tuple[str, ...] = ("episode_ids", "robot_ids", "bag_names")
_TIME_FIELDS: tuple[str, ...] = ("window_start", "window_end")


class HasEpisodes(Protocol):
    episodes: list[EpisodeInfo]


EpisodeSource = HasEpisodes | Sequence[EpisodeInfo]


class EpisodeTable(Protocol):
    """An OfflineDataset or a DatasetStore: episodes and their lengths in transitions."""

    episodes: list[EpisodeInfo]
    episode_lengths: NDArray[Any]


@dataclass(frozen=True)
class SelectorMatch:
    """What a selector matches in a dataset: the episode mask, the episodes' ids (in dataset order)
    and their number of transitions."""

    mask: NDArray[Any]
    episode_ids: list[str]
    transitions: int


def episodes_of(source: EpisodeSource) -> Sequence[EpisodeInfo]:
    """The episode list of an OfflineDataset, a DatasetStore, or a plain list of EpisodeInfo."""
    episodes = getattr(source, "episodes", source)
    if isinstance(episodes, (str, bytes)) or not isinstance(episodes, Sequence):
        raise SelectorError(f"cannot select from {type(source).__name__}: expected a dataset or a list of episodes")
    return episodes


def _shorten(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


@dataclass(frozen=True)
class ForgetSelector:
    episode_ids: tuple[str, ...] = ()
    robot_ids: tuple[str, ...] = ()
    bag_names: tuple[str, ...] = ()
    window_start: float | None = None
    window_end: float | None = None

    def __post_init__(self) -> None:
        for name in _LIST_FIELDS:
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise SelectorError(f"{name} must be a list of strings, got {type(value).__name__}")
            if len(value) > MAX_SELECTOR_ENTRIES:
                raise SelectorError(f"{name} has {len(value)} entries; at most {MAX_SELECTOR_ENTRIES} are accepted")
            bad = [v for v in value if not isinstance(v, str) or not v]
            if bad:
                shown = _shorten([repr(b)[:40] for b in bad], 3)
                raise SelectorError(f"{name} must hold non-empty strings; got {shown}")
            for index, item in enumerate(value):
                check_chars(f"{name}[{index}]", item, MAX_SELECTOR_ID_CHARS, SelectorError)
            object.__setattr__(self, name, tuple(dict.fromkeys(value)))
        for name in _TIME_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SelectorError(f"{name} must be a finite number of POSIX seconds or unset, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.is_empty():
            raise SelectorError("the selector sets no field; give episode ids, robot ids, bag names or a time window")
        if self.window_start is not None and self.window_end is not None and self.window_end < self.window_start:
            raise SelectorError(f"window_end ({self.window_end}) is before window_start ({self.window_start})")

    def is_empty(self) -> bool:
        return not (self.episode_ids or self.robot_ids or self.bag_names
                    or self.window_start is not None or self.window_end is not None)

    def select(self, source: EpisodeSource, require_match: bool = True) -> NDArray[Any]:
        """Boolean mask over the source's episodes (in order) of those the selector matches.

        Raises SelectorError when an episode id is not in the source, or, with require_match,
        when nothing matches.
        """
        episodes = episodes_of(source)
        mask = np.ones(len(episodes), dtype=bool)
        if self.episode_ids:
            ids = np.array([ep.episode_id for ep in episodes], dtype=object)
            wanted = np.array(self.episode_ids, dtype=object)
            unknown = wanted[~np.isin(wanted, ids)]
            if unknown.size:
                raise SelectorError(f"{unknown.size} of {wanted.size} episode ids are not in the dataset: "
                                    f"{_shorten(unknown.tolist())}")
            mask &= np.isin(ids, wanted)
        if self.robot_ids:
            robots = np.array([ep.robot_id for ep in episodes], dtype=object)
            mask &= np.isin(robots, np.array(self.robot_ids, dtype=object))
        if self.bag_names:
            bags = np.array([ep.source_bag for ep in episodes], dtype=object)
            mask &= np.isin(bags, np.array(self.bag_names, dtype=object))
        if self.window_start is not None or self.window_end is not None:
            starts = np.array([ep.start_time for ep in episodes], dtype=np.float64)
            if self.window_start is not None:
                mask &= starts >= self.window_start
            if self.window_end is not None:
                mask &= starts <= self.window_end
        if require_match and not mask.any():
            raise SelectorError(f"the selector ({self.describe()}) matches none of the {len(episodes)} episodes")
        return mask

    def match(self, source: EpisodeTable) -> SelectorMatch:
        """`select` (a match is required) with the matched ids and transition count: the one place
        a forget request's preview, its ledger record and its admission check count what it names."""
        mask = self.select(source)
        ids = [ep.episode_id for ep, hit in zip(source.episodes, mask) if hit]
        return SelectorMatch(mask, ids, int(np.asarray(source.episode_lengths)[mask].sum()))

    def describe(self) -> str:
        parts = [f"{name}=[{_shorten(list(getattr(self, name)), 3)}]" for name in _LIST_FIELDS if getattr(self, name)]
        parts += [f"{name}={getattr(self, name)}" for name in _TIME_FIELDS if getattr(self, name) is not None]
        return " AND ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"episode_ids": list(self.episode_ids), "robot_ids": list(self.robot_ids),
                "bag_names": list(self.bag_names), "window_start": self.window_start, "window_end": self.window_end}

    @staticmethod
    def from_dict(obj: Any) -> ForgetSelector:
        if not isinstance(obj, dict):
            raise SelectorError(f"a selector must be a JSON object, got {type(obj).__name__}")
        known = {f.name for f in fields(ForgetSelector)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise SelectorError(f"unknown selector keys: {', '.join(map(str, unknown))} "
                                f"(known: {', '.join(sorted(known))})")
        for name in _LIST_FIELDS:
            if name in obj and not isinstance(obj[name], list):
                raise SelectorError(f"{name} must be a list of strings, got {type(obj[name]).__name__}")
        values: dict[str, Any] = {name: tuple(obj[name]) if name in _LIST_FIELDS else obj[name] for name in obj}
        return ForgetSelector(**values)


def mask_selector(source: EpisodeSource, episode_mask: NDArray[Any] | Sequence[bool]) -> ForgetSelector:
    """A selector naming exactly the episodes where `episode_mask` is True."""
    episodes = episodes_of(source)
    mask = np.asarray(episode_mask)
    if mask.dtype != bool:
        raise SelectorError(f"an episode mask must be boolean, got dtype {mask.dtype}")
    if mask.shape != (len(episodes),):
        raise SelectorError(f"episode mask has shape {mask.shape} but there are {len(episodes)} episodes")
    if not mask.any():
        raise SelectorError("the episode mask selects no episode")
    return ForgetSelector(episode_ids=tuple(ep.episode_id for ep, m in zip(episodes, mask) if m))
