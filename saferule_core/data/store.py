"""The on-disk dataset: Parquet shards of whole episodes, an episode provenance table, a manifest.

Layout of a dataset directory:

    manifest.json       task, attrs, obs/act dims, shard list (episode ids + sha256 per shard),
                        sha256 of the episode table, dataset hash, quarantine list, format version
    episodes.parquet    one row per episode: id, robot_id, source_bag, start/end time,
                        content_hash, length, shard
    shards/*.parquet    transitions; each shard holds whole episodes in manifest order
    ledger.jsonl        forget ledger (see `ledger.py`), written by the forget workflow

The manifest is the commit point. Deleting episodes writes replacement shards under new names and
the new episode table as `episodes.parquet.pending`, swaps the manifest, then renames the table
and removes the replaced shards. A crash before the swap leaves the old dataset (the new files are
orphans); a crash after it leaves the new one with leftovers. `open()` finishes either case, so the
forgotten rows never stay on disk once the dataset is next opened.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray
from tqdm import tqdm

from saferule_core.data.dataset import (
    SCALAR_KEYS,
    TRANSITION_KEYS,
    VECTOR_KEYS,
    EpisodeInfo,
    OfflineDataset,
    dataset_hash_from_episodes,
)
from saferule_core.errors import DatasetError
from saferule_core.io_utils import atomic_directory, atomic_write_bytes, atomic_write_json, fsync_dir

FORMAT_NAME = "saferule-dataset"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
EPISODES_FILE = "episodes.parquet"
PENDING_EPISODES_FILE = "episodes.parquet.pending"
SHARDS_DIR = "shards"
LOCK_FILE = ".lock"
DEFAULT_EPISODES_PER_SHARD = 64
COMPRESSIONS: tuple[str, ...] = ("none", "snappy", "gzip", "brotli", "lz4", "zstd")
_SHARD_NAME = re.compile(r"^shard-(\d{6})\.parquet$")

EPISODE_TABLE_SCHEMA = pa.schema([
    ("episode_id", pa.string()),
    ("robot_id", pa.string()),
    ("source_bag", pa.string()),
    ("start_time", pa.float64()),
    ("end_time", pa.float64()),
    ("content_hash", pa.string()),
    ("length", pa.int64()),
    ("shard", pa.string()),
])


def shard_schema(obs_dim: int, act_dim: int) -> pa.Schema:
    widths = {"observations": obs_dim, "next_observations": obs_dim, "actions": act_dim}
    fields = [pa.field("episode_index", pa.int32()), pa.field("episode_id", pa.dictionary(pa.int32(), pa.string()))]
    fields += [pa.field(key, pa.list_(pa.float32(), widths[key])) for key in VECTOR_KEYS]
    fields += [pa.field(key, pa.float32()) for key in SCALAR_KEYS]
    return pa.schema(fields)


# ----- manifest ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardInfo:
    file: str                       # relative to the dataset directory, e.g. "shards/shard-000003.parquet"
    episode_ids: tuple[str, ...]
    num_rows: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    task: str
    attrs: dict[str, str]
    obs_dim: int
    act_dim: int
    num_episodes: int
    num_transitions: int
    dataset_hash: str
    episodes_sha256: str
    shards: tuple[ShardInfo, ...]
    quarantine: tuple[str, ...] = ()
    next_shard_number: int = 0
    sources: tuple[str, ...] = ()   # what `append` took episodes from (e.g. bag names), each taken once
    compression: str = "zstd"
    format_version: int = FORMAT_VERSION

    def episode_ids(self) -> list[str]:
        return [eid for shard in self.shards for eid in shard.episode_ids]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "task": self.task,
            "attrs": dict(self.attrs),
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "num_episodes": self.num_episodes,
            "num_transitions": self.num_transitions,
            "dataset_hash": self.dataset_hash,
            "episodes_sha256": self.episodes_sha256,
            "quarantine": list(self.quarantine),
            "next_shard_number": self.next_shard_number,
            "sources": list(self.sources),
            "compression": self.compression,
            "shards": [{"file": s.file, "episode_ids": list(s.episode_ids), "num_rows": s.num_rows,
                        "sha256": s.sha256} for s in self.shards],
        }

    @staticmethod
    def from_json(obj: Any, source: Path) -> Manifest:
        def fail(problem: str) -> DatasetError:
            return DatasetError(f"{source}: {problem}")

        if not isinstance(obj, dict):
            raise fail("manifest is not a JSON object")
        if obj.get("format") != FORMAT_NAME:
            raise fail(f"not a saferule dataset manifest (format {obj.get('format')!r})")
        if obj.get("format_version") != FORMAT_VERSION:
            raise fail(f"unsupported format version {obj.get('format_version')!r} "
                       f"(this saferule reads {FORMAT_VERSION})")

        def need(key: str, kind: type | tuple[type, ...]) -> Any:
            if key not in obj:
                raise fail(f"manifest lacks {key!r}")
            value = obj[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise fail(f"manifest field {key!r} has the wrong type ({type(value).__name__})")
            return value

        shards = []
        for i, raw in enumerate(need("shards", list)):
            if not isinstance(raw, dict) or not {"file", "episode_ids", "num_rows", "sha256"} <= raw.keys():
                raise fail(f"manifest shard entry {i} is malformed")
            ids = raw["episode_ids"]
            if not isinstance(ids, list) or not all(isinstance(e, str) for e in ids) or not ids:
                raise fail(f"manifest shard entry {i} has a malformed episode id list")
            file = raw["file"]
            if (not isinstance(file, str) or not _SHARD_NAME.match(Path(file).name)
                    or Path(file).parent != Path(SHARDS_DIR)):
                raise fail(f"manifest shard entry {i} names an unexpected file {file!r}")
            if not isinstance(raw["num_rows"], int) or raw["num_rows"] <= 0 or not isinstance(raw["sha256"], str):
                raise fail(f"manifest shard entry {i} has a malformed row count or sha256")
            shards.append(ShardInfo(file, tuple(ids), raw["num_rows"], raw["sha256"]))
        attrs = need("attrs", dict)
        quarantine = need("quarantine", list)
        sources = obj.get("sources", [])   # absent in datasets written before appends existed
        if not isinstance(sources, list) or not all(isinstance(item, str) for item in sources):
            raise fail("manifest field 'sources' must be a list of strings")
        manifest = Manifest(
            task=need("task", str), attrs={str(k): str(v) for k, v in attrs.items()},
            obs_dim=need("obs_dim", int), act_dim=need("act_dim", int),
            num_episodes=need("num_episodes", int), num_transitions=need("num_transitions", int),
            dataset_hash=need("dataset_hash", str), episodes_sha256=need("episodes_sha256", str),
            shards=tuple(shards), quarantine=tuple(str(q) for q in quarantine),
            next_shard_number=need("next_shard_number", int), compression=need("compression", str),
            sources=tuple(sources),
        )
        if manifest.compression not in COMPRESSIONS:
            raise fail(f"unknown shard compression {manifest.compression!r}")
        ids = manifest.episode_ids()
        if len(ids) != manifest.num_episodes or len(set(ids)) != len(ids):
            raise fail(f"manifest lists {len(ids)} shard episodes ({len(set(ids))} distinct) "
                       f"but num_episodes is {manifest.num_episodes}")
        if sum(s.num_rows for s in shards) != manifest.num_transitions:
            raise fail("manifest shard row counts do not add up to num_transitions")
        if manifest.obs_dim <= 0 or manifest.act_dim <= 0:
            raise fail("manifest obs_dim and act_dim must be positive")
        unknown_quarantine = set(manifest.quarantine) - set(ids)
        if unknown_quarantine:
            raise fail(f"quarantine names {len(unknown_quarantine)} episodes that are not in the dataset")
        return manifest


@dataclass(frozen=True)
class DeletionReport:
    deleted_episode_ids: tuple[str, ...]
    deleted_transitions: int
    rewritten_shards: tuple[str, ...]      # shard files that held deleted episodes (now removed)
    new_shards: tuple[str, ...]            # their replacements (fewer when a shard became empty)
    untouched_shards: int
    dataset_hash_before: str
    dataset_hash_after: str


# ----- helpers ---------------------------------------------------------------------------------

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parquet_bytes(table: pa.Table, compression: str, dictionary_columns: Sequence[str] | bool = True) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression, use_dictionary=dictionary_columns)
    return sink.getvalue().to_pybytes()


def _encode_shard(dataset: OfflineDataset, episode_positions: NDArray[Any], compression: str) -> bytes:
    """Parquet bytes of the episodes at `episode_positions` (contiguous, ascending) of `dataset`."""
    first, last = int(episode_positions[0]), int(episode_positions[-1])
    starts = dataset.episode_starts
    row_start, row_stop = int(starts[first]), int(starts[last] + dataset.episode_lengths[last])
    lengths = dataset.episode_lengths[first:last + 1]
    episode_index = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    ids = pa.array([ep.episode_id for ep in dataset.episodes[first:last + 1]], type=pa.string())
    columns: dict[str, pa.Array] = {
        "episode_index": pa.array(episode_index, type=pa.int32()),
        "episode_id": pa.DictionaryArray.from_arrays(pa.array(episode_index, type=pa.int32()), ids),
    }
    for key in VECTOR_KEYS:
        block = getattr(dataset, key)[row_start:row_stop]
        columns[key] = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1), type=pa.float32()), block.shape[1])
    for key in SCALAR_KEYS:
        columns[key] = pa.array(getattr(dataset, key)[row_start:row_stop], type=pa.float32())
    table = pa.Table.from_pydict(columns, schema=shard_schema(dataset.obs_dim, dataset.act_dim))
    # Float columns are rarely repetitive: dictionary-encoding them only slows reading down.
    return _parquet_bytes(table, compression, dictionary_columns=["episode_id"])


def _episode_table_bytes(episodes: Sequence[EpisodeInfo], lengths: Sequence[int], shard_files: Sequence[str],
                         compression: str) -> bytes:
    table = pa.Table.from_pydict({
        "episode_id": [ep.episode_id for ep in episodes],
        "robot_id": [ep.robot_id for ep in episodes],
        "source_bag": [ep.source_bag for ep in episodes],
        "start_time": [float(ep.start_time) for ep in episodes],
        "end_time": [float(ep.end_time) for ep in episodes],
        "content_hash": [ep.content_hash for ep in episodes],
        "length": [int(n) for n in lengths],
        "shard": list(shard_files),
    }, schema=EPISODE_TABLE_SCHEMA)
    return _parquet_bytes(table, compression)


def _shard_file(number: int) -> str:
    return f"{SHARDS_DIR}/shard-{number:06d}.parquet"


@dataclass(frozen=True)
class _ShardArrays:
    arrays: dict[str, NDArray[Any]]
    episode_index: NDArray[Any]


# ----- the store -------------------------------------------------------------------------------

@dataclass
class DatasetStore:
    """A dataset directory. Build one with `create`, open an existing one with `open`."""

    path: Path
    manifest: Manifest
    episodes: list[EpisodeInfo]
    episode_lengths: NDArray[Any]
    recovered: tuple[str, ...] = field(default=())   # what `open` cleaned up after an interrupted write

    # ----- construction ------------------------------------------------------------------
    @staticmethod
    def create(path: Path | str, dataset: OfflineDataset, episodes_per_shard: int = DEFAULT_EPISODES_PER_SHARD,
               *, overwrite: bool = False, compression: str = "zstd",
               extra_files: Mapping[str, bytes] | None = None, sources: Sequence[str] = (),
               progress: bool = False) -> DatasetStore:
        """Write `dataset` as a new dataset directory at `path`, all at once or not at all.

        `extra_files` (name -> bytes) are placed in the directory before it appears; `sources` names
        what the episodes were taken from (see `append`).
        """
        path = Path(path)
        if episodes_per_shard <= 0:
            raise DatasetError(f"episodes_per_shard must be positive, got {episodes_per_shard}")
        if compression not in COMPRESSIONS:
            raise DatasetError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")
        if dataset.num_episodes == 0:
            raise DatasetError("refusing to store a dataset with no episodes")
        if path.exists() and not overwrite:
            raise DatasetError(f"{path} already exists; choose another output directory")
        reserved = (MANIFEST_FILE, EPISODES_FILE, PENDING_EPISODES_FILE, SHARDS_DIR, LOCK_FILE)
        for name in extra_files or {}:
            if Path(name).name != name or name in reserved or name.startswith("."):
                raise DatasetError(f"extra file name {name!r} is not allowed")
        dataset.validate()
        dataset = dataset.with_content_hashes()
        groups = [np.arange(i, min(i + episodes_per_shard, dataset.num_episodes))
                  for i in range(0, dataset.num_episodes, episodes_per_shard)]
        shards: list[ShardInfo] = []
        shard_of_episode: list[str] = []
        try:
            with atomic_directory(path, overwrite=overwrite) as tmp:
                (tmp / SHARDS_DIR).mkdir()
                bar = tqdm(groups, desc="writing shards", unit="shard", disable=not progress)
                for number, positions in enumerate(bar):
                    data = _encode_shard(dataset, positions, compression)
                    file = _shard_file(number)
                    (tmp / file).write_bytes(data)
                    ids = tuple(dataset.episodes[int(p)].episode_id for p in positions)
                    rows = int(dataset.episode_lengths[positions].sum())
                    shards.append(ShardInfo(file, ids, rows, _sha256(data)))
                    shard_of_episode += [file] * len(ids)
                table = _episode_table_bytes(dataset.episodes, dataset.episode_lengths.tolist(), shard_of_episode,
                                             compression)
                (tmp / EPISODES_FILE).write_bytes(table)
                for name, data in (extra_files or {}).items():
                    (tmp / name).write_bytes(data)
                manifest = Manifest(
                    task=dataset.task, attrs=dict(dataset.attrs), obs_dim=dataset.obs_dim, act_dim=dataset.act_dim,
                    num_episodes=dataset.num_episodes, num_transitions=dataset.num_transitions,
                    dataset_hash=dataset.dataset_hash(), episodes_sha256=_sha256(table), shards=tuple(shards),
                    next_shard_number=len(shards), compression=compression,
                    sources=_checked_sources(sources, ()),
                )
                (tmp / MANIFEST_FILE).write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")
        except FileExistsError as err:
            raise DatasetError(f"{path} already exists; choose another output directory") from err
        return DatasetStore.open(path)

    @staticmethod
    def open(path: Path | str) -> DatasetStore:
        """Open a dataset directory: read and check the manifest and the episode table.

        Finishes an interrupted delete first (see the module docstring). Shard contents are
        checked when loaded.
        """
        path = Path(path)
        if not path.is_dir():
            raise DatasetError(f"{path}: no such dataset directory")
        if not (path / MANIFEST_FILE).is_file():
            raise DatasetError(f"{path}: {MANIFEST_FILE} is missing; not a saferule dataset (or a failed write)")
        with _DirLock(path, exclusive=True, required=False) as locked:
            manifest = _read_manifest(path)
            recovered = _finish_commit(path, manifest) if locked else ()
            episodes, lengths = _read_episode_table(path, manifest)
        return DatasetStore(path, manifest, episodes, lengths, recovered)

    # ----- facts without reading shards ---------------------------------------------------
    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def num_episodes(self) -> int:
        return self.manifest.num_episodes

    @property
    def num_transitions(self) -> int:
        return self.manifest.num_transitions

    @property
    def dataset_hash(self) -> str:
        return self.manifest.dataset_hash

    def episode_ids(self) -> list[str]:
        return [ep.episode_id for ep in self.episodes]

    def quarantined_ids(self) -> tuple[str, ...]:
        return self.manifest.quarantine

    def quarantine_mask(self) -> NDArray[Any]:
        """Per episode (in store order): is it quarantined?"""
        return np.isin(np.array(self.episode_ids(), dtype=object), np.array(self.manifest.quarantine, dtype=object))

    # ----- reading -------------------------------------------------------------------------
    def load(self, exclude_quarantined: bool = True, progress: bool = False) -> OfflineDataset:
        """All episodes as one OfflineDataset (quarantined ones left out unless asked for)."""
        with _DirLock(self.path, exclusive=False, required=False):
            self._reload()
            quarantined = set(self.manifest.quarantine) if exclude_quarantined else set()
            parts: dict[str, list[NDArray[Any]]] = {key: [] for key in TRANSITION_KEYS}
            kept_episodes: list[EpisodeInfo] = []
            kept_lengths: list[NDArray[Any]] = []
            position = 0
            for shard in tqdm(self.manifest.shards, desc="reading shards", unit="shard", disable=not progress):
                count = len(shard.episode_ids)
                shard_episodes = self.episodes[position:position + count]
                shard_lengths = self.episode_lengths[position:position + count]
                position += count
                keep = np.array([eid not in quarantined for eid in shard.episode_ids], dtype=bool)
                if not keep.any():
                    continue
                content = _read_shard(self.path, shard, self.manifest, shard_lengths)
                rows = keep[content.episode_index]
                for key in TRANSITION_KEYS:
                    parts[key].append(content.arrays[key] if keep.all() else content.arrays[key][rows])
                kept_episodes += [ep for ep, k in zip(shard_episodes, keep) if k]
                kept_lengths.append(shard_lengths[keep])
        if not kept_episodes:
            raise DatasetError(f"{self.path}: every episode is quarantined; nothing to load")
        return OfflineDataset(
            **{key: np.concatenate(parts[key]) for key in TRANSITION_KEYS},
            episodes=kept_episodes, episode_lengths=np.concatenate(kept_lengths),
            task=self.manifest.task, attrs=dict(self.manifest.attrs),
        )

    def verify(self) -> None:
        """Read every shard and check hashes, schema, shapes and values; raise DatasetError if bad."""
        self.load(exclude_quarantined=False)

    # ----- quarantine ------------------------------------------------------------------------
    def quarantine(self, episode_ids: Sequence[str]) -> tuple[str, ...]:
        """Exclude episodes from `load()` (default) without deleting them. Returns the newly added ids."""
        with _DirLock(self.path, exclusive=True):
            self._reload()
            wanted = self._known_ids(episode_ids)
            current = set(self.manifest.quarantine)
            added = tuple(eid for eid in dict.fromkeys(wanted) if eid not in current)
            if added:
                order = {eid: i for i, eid in enumerate(self.episode_ids())}
                merged = tuple(sorted(current | set(added), key=order.__getitem__))
                self._commit_manifest(replace(self.manifest, quarantine=merged))
            return added

    def unquarantine(self, episode_ids: Sequence[str]) -> tuple[str, ...]:
        """Let quarantined episodes be loaded again. Returns the ids that were released."""
        with _DirLock(self.path, exclusive=True):
            self._reload()
            released = set(self._known_ids(episode_ids)) & set(self.manifest.quarantine)
            if released:
                kept = tuple(eid for eid in self.manifest.quarantine if eid not in released)
                self._commit_manifest(replace(self.manifest, quarantine=kept))
            return tuple(eid for eid in self.episode_ids() if eid in released)

    # ----- growth ------------------------------------------------------------------------------
    def append(self, dataset: OfflineDataset | None, sources: Sequence[str] = (), progress: bool = False) -> int:
        """Add `dataset`'s episodes (new shards) and record `sources` as taken, in one commit.

        Episode ids must be new to the store and sources must not have been recorded before (a
        source is taken once, even after its episodes are deleted again). `dataset` may be None to
        record sources that held no usable episode. A crash before the manifest swap leaves the
        store as it was (the new shards are orphans that `open` removes). Returns the number of
        episodes added.
        """
        with _DirLock(self.path, exclusive=True):
            self._reload()
            old = self.manifest
            new_sources = _checked_sources(sources, old.sources)
            if dataset is None or dataset.num_episodes == 0:
                if new_sources:
                    self._commit_manifest(replace(old, sources=old.sources + new_sources))
                return 0
            dataset.validate()
            if dataset.task != old.task or (dataset.obs_dim, dataset.act_dim) != (old.obs_dim, old.act_dim):
                raise DatasetError(f"cannot append {dataset.task or 'untitled'} episodes (obs/act widths "
                                   f"{dataset.obs_dim}/{dataset.act_dim}) to {self.path}, a {old.task} dataset "
                                   f"({old.obs_dim}/{old.act_dim})")
            known = set(old.episode_ids())
            taken = [eid for eid in dataset.episode_ids() if eid in known]
            if taken:
                raise DatasetError(f"{len(taken)} episode ids are already in {self.path} (first: "
                                   f"{', '.join(taken[:5])})")
            dataset = dataset.with_content_hashes()
            per_shard = DEFAULT_EPISODES_PER_SHARD
            next_number = old.next_shard_number
            new_shards: list[ShardInfo] = []
            shard_of_new: list[str] = []
            groups = [np.arange(i, min(i + per_shard, dataset.num_episodes))
                      for i in range(0, dataset.num_episodes, per_shard)]
            for positions in tqdm(groups, desc="writing shards", unit="shard", disable=not progress):
                data = _encode_shard(dataset, positions, old.compression)
                file = _shard_file(next_number)
                next_number += 1
                atomic_write_bytes(self.path / file, data)
                ids = tuple(dataset.episodes[int(p)].episode_id for p in positions)
                new_shards.append(ShardInfo(file, ids, int(dataset.episode_lengths[positions].sum()), _sha256(data)))
                shard_of_new += [file] * len(ids)
            episodes = [*self.episodes, *dataset.episodes]
            lengths = np.concatenate([self.episode_lengths, dataset.episode_lengths]).astype(np.int64)
            shard_of = [s.file for s in old.shards for _ in s.episode_ids] + shard_of_new
            table = _episode_table_bytes(episodes, lengths.tolist(), shard_of, old.compression)
            atomic_write_bytes(self.path / PENDING_EPISODES_FILE, table)
            new_manifest = replace(
                old, shards=old.shards + tuple(new_shards), num_episodes=len(episodes),
                num_transitions=int(lengths.sum()), next_shard_number=next_number, sources=old.sources + new_sources,
                dataset_hash=dataset_hash_from_episodes(old.task, [e.episode_id for e in episodes],
                                                        [e.content_hash for e in episodes]),
                episodes_sha256=_sha256(table),
            )
            self._commit_manifest(new_manifest)
            _finish_commit(self.path, new_manifest)
            self.episodes, self.episode_lengths = episodes, lengths
            return dataset.num_episodes

    # ----- physical deletion ---------------------------------------------------------------
    def delete_episodes(self, episode_ids: Sequence[str], progress: bool = False) -> DeletionReport:
        """Remove episodes from disk: rewrite only the shards that hold them, then swap the manifest."""
        with _DirLock(self.path, exclusive=True):
            self._reload()
            doomed = set(self._known_ids(episode_ids))
            if not doomed:
                raise DatasetError("no episode ids given to delete")
            if len(doomed) == self.num_episodes:
                raise DatasetError(f"refusing to delete all {self.num_episodes} episodes of {self.path}; "
                                   "remove the directory instead")
            old = self.manifest
            next_number = old.next_shard_number
            new_shards: list[ShardInfo] = []
            rewritten: list[str] = []
            written: list[str] = []
            deleted_rows = 0
            position = 0
            kept_positions: list[NDArray[Any]] = []
            shard_of_kept: list[str] = []
            affected = [s for s in old.shards if doomed.intersection(s.episode_ids)]
            bar = tqdm(total=len(affected), desc="rewriting shards", unit="shard", disable=not progress)
            try:
                for shard in old.shards:
                    count = len(shard.episode_ids)
                    positions = np.arange(position, position + count)
                    position += count
                    keep = np.array([eid not in doomed for eid in shard.episode_ids], dtype=bool)
                    if keep.all():
                        new_shards.append(shard)
                        kept_positions.append(positions)
                        shard_of_kept += [shard.file] * count
                        continue
                    rewritten.append(shard.file)
                    deleted_rows += int(self.episode_lengths[positions][~keep].sum())
                    if keep.any():
                        content = _read_shard(self.path, shard, old, self.episode_lengths[positions])
                        remaining = _shard_dataset(content, keep, [self.episodes[int(p)] for p in positions],
                                                   self.episode_lengths[positions], old)
                        file = _shard_file(next_number)
                        next_number += 1
                        data = _encode_shard(remaining, np.arange(remaining.num_episodes), old.compression)
                        atomic_write_bytes(self.path / file, data)
                        written.append(file)
                        new_shards.append(ShardInfo(file, tuple(remaining.episode_ids()), remaining.num_transitions,
                                                    _sha256(data)))
                        kept_positions.append(positions[keep])
                        shard_of_kept += [file] * int(keep.sum())
                    bar.update(1)
            finally:
                bar.close()
            kept = np.concatenate(kept_positions)
            kept_episodes = [self.episodes[int(p)] for p in kept]
            kept_lengths = self.episode_lengths[kept]
            table = _episode_table_bytes(kept_episodes, kept_lengths.tolist(), shard_of_kept, old.compression)
            atomic_write_bytes(self.path / PENDING_EPISODES_FILE, table)
            new_manifest = replace(
                old, shards=tuple(new_shards), num_episodes=len(kept_episodes), num_transitions=int(kept_lengths.sum()),
                dataset_hash=dataset_hash_from_episodes(old.task, [e.episode_id for e in kept_episodes],
                                                        [e.content_hash for e in kept_episodes]),
                episodes_sha256=_sha256(table), next_shard_number=next_number,
                quarantine=tuple(eid for eid in old.quarantine if eid not in doomed),
            )
            self._commit_manifest(new_manifest)
            _finish_commit(self.path, new_manifest)
            self.episodes, self.episode_lengths = kept_episodes, kept_lengths
        order = [eid for eid in old.episode_ids() if eid in doomed]
        return DeletionReport(
            deleted_episode_ids=tuple(order), deleted_transitions=deleted_rows, rewritten_shards=tuple(rewritten),
            new_shards=tuple(written), untouched_shards=len(old.shards) - len(rewritten),
            dataset_hash_before=old.dataset_hash, dataset_hash_after=new_manifest.dataset_hash,
        )

    # ----- internals -------------------------------------------------------------------------
    def _known_ids(self, episode_ids: Sequence[str]) -> list[str]:
        if isinstance(episode_ids, str):
            raise DatasetError("episode ids must be a list of strings, not one string")
        wanted = [str(e) for e in episode_ids]
        known = set(self.manifest.episode_ids())
        unknown = [eid for eid in dict.fromkeys(wanted) if eid not in known]
        if unknown:
            raise DatasetError(f"{len(unknown)} episode ids are not in {self.path} (first: {', '.join(unknown[:5])})")
        return wanted

    def refresh(self) -> None:
        """Re-read the manifest and episode table if another process changed them since `open`."""
        with _DirLock(self.path, exclusive=False, required=False):
            self._reload()

    def _reload(self) -> None:
        manifest = _read_manifest(self.path)
        if manifest != self.manifest:
            self.episodes, self.episode_lengths = _read_episode_table(self.path, manifest)
            self.manifest = manifest

    def _commit_manifest(self, manifest: Manifest) -> None:
        atomic_write_json(self.path / MANIFEST_FILE, manifest.to_json())
        self.manifest = manifest


# ----- file-level reading and recovery ---------------------------------------------------------

def _checked_sources(sources: Sequence[str], recorded: Sequence[str]) -> tuple[str, ...]:
    if isinstance(sources, str):
        raise DatasetError("sources must be a list of names, not one string")
    names = tuple(dict.fromkeys(str(name) for name in sources))
    if any(not name for name in names):
        raise DatasetError("a source name must not be empty")
    again = [name for name in names if name in set(recorded)]
    if again:
        raise DatasetError(f"already taken from: {', '.join(again[:5])}")
    return names


class _DirLock:
    """An advisory lock on the dataset directory: writers exclusive, readers shared.

    With required=False a directory we cannot write to (read-only copy) is used unlocked.
    """

    def __init__(self, path: Path, exclusive: bool, required: bool = True) -> None:
        self.file = path / LOCK_FILE
        self.exclusive = exclusive
        self.required = required
        self.fd: int | None = None

    def __enter__(self) -> bool:
        try:
            self.fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            if self.required or err.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise DatasetError(f"cannot lock {self.file}: {err.strerror}") from err
            return False
        fcntl.flock(self.fd, fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH)
        return True

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _read_manifest(path: Path) -> Manifest:
    file = path / MANIFEST_FILE
    try:
        obj = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: {MANIFEST_FILE} is missing; not a saferule dataset") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{file}: not valid JSON ({err})") from err
    return Manifest.from_json(obj, file)


def _read_verified(path: Path, relative: str, expected_sha256: str) -> bytes:
    file = path / relative
    try:
        data = file.read_bytes()
    except FileNotFoundError as err:
        raise DatasetError(f"{file}: file is missing") from err
    if _sha256(data) != expected_sha256:
        raise DatasetError(f"{file}: sha256 does not match the manifest (truncated or altered file)")
    return data


def _parse_parquet(file: Path, data: bytes, **kwargs: Any) -> pa.Table:
    # ParquetFile, not read_table: read_table goes through pyarrow.dataset, whose import (pandas
    # included) made the first open in a process take over a second.
    try:
        return pq.ParquetFile(pa.BufferReader(data), **kwargs).read()
    except (pa.ArrowException, OSError, ValueError) as err:
        raise DatasetError(f"{file}: unreadable Parquet ({err})") from err


def _read_episode_table(path: Path, manifest: Manifest) -> tuple[list[EpisodeInfo], NDArray[Any]]:
    file = path / EPISODES_FILE
    table = _parse_parquet(file, _read_verified(path, EPISODES_FILE, manifest.episodes_sha256))
    if not table.schema.equals(EPISODE_TABLE_SCHEMA):
        raise DatasetError(f"{file}: unexpected columns {table.schema.names} (expected {EPISODE_TABLE_SCHEMA.names})")
    if any(table.column(name).null_count for name in table.column_names):
        raise DatasetError(f"{file}: contains null values")
    cols = {name: table.column(name).to_pylist()
            for name in ("episode_id", "robot_id", "source_bag", "content_hash", "shard")}
    starts = table.column("start_time").to_numpy()
    ends = table.column("end_time").to_numpy()
    lengths = table.column("length").to_numpy().astype(np.int64)
    if cols["episode_id"] != manifest.episode_ids():
        raise DatasetError(f"{file}: episode ids or their order differ from the manifest")
    expected_shards = [s.file for s in manifest.shards for _ in s.episode_ids]
    if cols["shard"] != expected_shards:
        raise DatasetError(f"{file}: episode-to-shard assignment differs from the manifest")
    if not (np.isfinite(starts).all() and np.isfinite(ends).all()):
        raise DatasetError(f"{file}: non-finite episode start or end times")
    if (lengths <= 0).any():
        raise DatasetError(f"{file}: episode lengths must be positive")
    bounds = np.cumsum([0] + [len(s.episode_ids) for s in manifest.shards])
    per_shard = np.add.reduceat(lengths, bounds[:-1]) if len(lengths) else np.zeros(0, dtype=np.int64)
    if not np.array_equal(per_shard, [s.num_rows for s in manifest.shards]):
        raise DatasetError(f"{file}: episode lengths do not add up to the shard row counts in the manifest")
    episodes = [EpisodeInfo(eid, rid, bag, float(t0), float(t1), ch) for eid, rid, bag, t0, t1, ch in
                zip(cols["episode_id"], cols["robot_id"], cols["source_bag"], starts, ends, cols["content_hash"])]
    return episodes, lengths


def _read_shard(path: Path, shard: ShardInfo, manifest: Manifest, lengths: NDArray[Any]) -> _ShardArrays:
    file = path / shard.file
    table = _parse_parquet(file, _read_verified(path, shard.file, shard.sha256), read_dictionary=["episode_id"])
    expected = shard_schema(manifest.obs_dim, manifest.act_dim)
    if table.schema.names != expected.names:
        raise DatasetError(f"{file}: columns {table.schema.names}, expected {expected.names}")
    for got, want in zip(table.schema, expected):
        if not got.type.equals(want.type):
            raise DatasetError(f"{file}: column {got.name} has type {got.type}, expected {want.type} "
                               f"(obs_dim {manifest.obs_dim}, act_dim {manifest.act_dim})")
    if table.num_rows != shard.num_rows:
        raise DatasetError(f"{file}: {table.num_rows} rows, manifest says {shard.num_rows}")
    episode_index = table.column("episode_index").to_numpy()
    if not np.array_equal(episode_index, np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)):
        raise DatasetError(f"{file}: rows are not grouped into the manifest's episodes in order")
    ids = table.column("episode_id").combine_chunks()
    if (ids.dictionary.to_pylist() != list(shard.episode_ids)
            or not np.array_equal(ids.indices.to_numpy(), episode_index)):
        raise DatasetError(f"{file}: per-row episode ids differ from the manifest")
    arrays: dict[str, NDArray[Any]] = {}
    for key in TRANSITION_KEYS:
        column = table.column(key).combine_chunks()
        values = column.flatten() if key in VECTOR_KEYS else column
        if column.null_count or values.null_count:
            raise DatasetError(f"{file}: column {key} contains nulls")
        array = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        if key in VECTOR_KEYS:
            array = array.reshape(table.num_rows, column.type.list_size)
        if not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).reshape(table.num_rows, -1).any(axis=1).sum())
            raise DatasetError(f"{file}: column {key} has NaN or infinite values in {bad} rows")
        arrays[key] = array
    return _ShardArrays(arrays, episode_index)


def _shard_dataset(content: _ShardArrays, keep: NDArray[Any], episodes: list[EpisodeInfo], lengths: NDArray[Any],
                   manifest: Manifest) -> OfflineDataset:
    rows = keep[content.episode_index]
    return OfflineDataset(**{key: content.arrays[key][rows] for key in TRANSITION_KEYS},
                          episodes=[ep for ep, k in zip(episodes, keep) if k], episode_lengths=lengths[keep],
                          task=manifest.task, attrs=dict(manifest.attrs))


def _finish_commit(path: Path, manifest: Manifest) -> tuple[str, ...]:
    """After a manifest swap: install the pending episode table and remove unreferenced shard files."""
    done: list[str] = []
    pending = path / PENDING_EPISODES_FILE
    if pending.exists():
        if _sha256(pending.read_bytes()) == manifest.episodes_sha256:
            os.replace(pending, path / EPISODES_FILE)
            done.append(f"installed {PENDING_EPISODES_FILE}")
        else:
            pending.unlink()
            done.append(f"removed stale {PENDING_EPISODES_FILE}")
    referenced = {Path(s.file).name for s in manifest.shards}
    shard_dir = path / SHARDS_DIR
    for child in sorted(shard_dir.iterdir()) if shard_dir.is_dir() else []:
        if child.is_file() and child.name not in referenced:
            child.unlink()
            done.append(f"removed unreferenced {SHARDS_DIR}/{child.name}")
    for child in path.iterdir():
        if child.name.startswith(".") and child.name.endswith(".tmp") and child.is_file():
            child.unlink()
            done.append(f"removed temporary {child.name}")
    if done:   # nothing changed: nothing to make durable (this runs on every open)
        fsync_dir(path)
        if shard_dir.is_dir():
            fsync_dir(shard_dir)
    return tuple(done)
