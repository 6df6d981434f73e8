"""Live ingestion: the closed bags of a recorder's output directory become part of a dataset.

`ingest_closed_bags(bags_dir, dataset_dir, task)` reads every closed bag (its metadata.yaml exists)
that the dataset has not taken yet, and appends the finished episodes in them, with their
provenance, in ONE store commit that also records the bags as taken (`DatasetStore.append`). So:

- a bag is ingested once, even if its episodes are forgotten and purged later;
- a crash (kill -9) at any point leaves the dataset as it was before the call or as it is after
  it, and the next call picks up whatever was not committed;
- an episode still running when its bag was split continues in the next bag: while the newest
  closed bag holds a step of an unfinished episode, every bag that episode touches is held back
  and read again next time, together with the bag that finishes it. Its other, finished episodes
  are appended at once; when a held bag is read again they are recognised (same id, same content)
  and skipped;
- an episode that never finished (the robot or the recorder stopped mid-episode) is dropped and
  counted once its bags are no longer the newest; an episode id that is already in the dataset
  with different content is refused and counted, never overwritten.

Concurrent ingestions into the same dataset are serialised by a lock file next to it.
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from numpy.typing import NDArray

from saferule_core.data.dataset import OfflineDataset
from saferule_core.data.from_bags import read_bag_episodes
from saferule_core.data.store import DatasetStore
from saferule_core.errors import DatasetError

BAG_METADATA_FILE = "metadata.yaml"


def closed_bags(bags_dir: Path | str) -> list[Path]:
    """Bag directories under `bags_dir` that their recorder has finished (metadata.yaml is written
    last), oldest first by name (a recorder names its bags <prefix>_<start>_<NNN>)."""
    bags_dir = Path(bags_dir)
    if not bags_dir.is_dir():
        return []
    return sorted(p for p in bags_dir.iterdir() if p.is_dir() and (p / BAG_METADATA_FILE).is_file())


def bag_end_ns(bag: Path) -> int:
    """The time of a closed bag's last message (start + duration in its metadata.yaml); -1 for a bag
    without messages (a recorder that split just before it stopped), which is never the newest."""
    try:
        info = yaml.safe_load((bag / BAG_METADATA_FILE).read_text())["rosbag2_bagfile_information"]
        if int(info.get("message_count", 1)) == 0:
            return -1
        return int(info["starting_time"]["nanoseconds_since_epoch"]) + int(info["duration"]["nanoseconds"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{bag}: unreadable {BAG_METADATA_FILE} ({type(err).__name__}: {err})") from None


@dataclass
class IngestReport:
    """What one ingestion did, counted so that nothing is lost silently."""

    dataset: str
    created: bool = False                 # this call created the dataset
    bags_taken: list[str] = field(default_factory=list)      # recorded as ingested by this call
    bags_held: list[str] = field(default_factory=list)       # read, kept for the next call (an episode continues)
    episodes_added: int = 0
    transitions_added: int = 0
    episodes_already_in: int = 0          # read again from a held bag, already in the dataset
    episodes_unfinished_dropped: int = 0  # their recording stopped before the episode ended
    steps_unfinished_dropped: int = 0
    conflicting_ids: list[str] = field(default_factory=list)  # id in the dataset with other content: refused
    import_report: dict[str, Any] | None = None

    @property
    def changed(self) -> bool:
        return bool(self.bags_taken or self.episodes_added)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if not self.bags_taken and not self.bags_held:
            return f"{self.dataset}: no new closed bag"
        text = (f"{self.dataset}: +{self.episodes_added} episodes ({self.transitions_added} transitions) from "
                f"{len(self.bags_taken)} bags" + (" (dataset created)" if self.created else ""))
        notes = []
        if self.bags_held:
            notes.append(f"{len(self.bags_held)} bags held for an episode that continues")
        if self.episodes_already_in:
            notes.append(f"{self.episodes_already_in} episodes already in")
        if self.episodes_unfinished_dropped:
            notes.append(f"{self.episodes_unfinished_dropped} unfinished episodes dropped "
                         f"({self.steps_unfinished_dropped} steps)")
        if self.conflicting_ids:
            notes.append(f"{len(self.conflicting_ids)} episode ids refused (already in with other content: "
                         f"{', '.join(self.conflicting_ids[:3])})")
        return text + (f"; {'; '.join(notes)}" if notes else "")


@contextmanager
def _ingest_lock(dataset_dir: Path) -> Iterator[None]:
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = dataset_dir.parent / f".{dataset_dir.name}.ingest.lock"
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ingest_closed_bags(bags_dir: Path | str, dataset_dir: Path | str, task: str,
                       progress: bool = False) -> IngestReport:
    """Append the finished episodes of the closed bags in `bags_dir` that `dataset_dir` has not
    taken yet (creating the dataset on first use). See the module docstring."""
    dataset_dir = Path(dataset_dir)
    report = IngestReport(dataset=str(dataset_dir))
    with _ingest_lock(dataset_dir):
        store = DatasetStore.open(dataset_dir) if dataset_dir.exists() else None
        if store is not None and store.task != task:
            raise DatasetError(f"{dataset_dir} is a {store.task} dataset; the bags were recorded for {task}")
        taken = set(store.manifest.sources) if store is not None else set()
        candidates = [bag for bag in closed_bags(bags_dir) if bag.name not in taken]
        if not candidates:
            return report
        newest = max(candidates, key=lambda bag: (bag_end_ns(bag), bag.name)).name
        try:
            found = read_bag_episodes(candidates, task, progress=progress)
        except DatasetError as err:
            if "no step could be aligned" not in str(err):
                raise
            found = None   # bags without robot steps: taken, nothing to add
        held: set[str] = set()
        keep = np.zeros(0, dtype=bool)
        if found is not None:
            data = found.dataset.with_content_hashes()   # once: compared with the store, then stored
            report.import_report = found.report.to_json()
            finished = data.finished_episodes()
            for index in np.flatnonzero(~finished):
                bags = found.episode_bags[index]
                if newest in bags:
                    held |= bags
                else:
                    report.episodes_unfinished_dropped += 1
                    report.steps_unfinished_dropped += int(data.episode_lengths[index])
            keep = finished.copy()
            if store is not None:
                keep &= _new_episodes(store, data, finished, report)
        report.bags_taken = [bag.name for bag in candidates if bag.name not in held]
        report.bags_held = sorted(held)
        added = data.subset_episodes(keep) if found is not None and keep.any() else None
        if added is not None:
            added.attrs = {"source": "rosbag2 (live ingestion)"}
        if store is None:
            if added is None:
                return report   # nothing to create a dataset from yet; the bags are read again next time
            _remove_interrupted_creations(dataset_dir)
            DatasetStore.create(dataset_dir, added, sources=report.bags_taken, progress=progress)
            report.created = True
        else:
            store.append(added, report.bags_taken, progress=progress)
        if added is not None:
            report.episodes_added = added.num_episodes
            report.transitions_added = added.num_transitions
    return report


def _remove_interrupted_creations(dataset_dir: Path) -> None:
    """A creation killed before its rename leaves its temporary directory next to the dataset; under
    the ingest lock no other ingestion is creating it now."""
    for leftover in dataset_dir.parent.glob(f".{dataset_dir.name}.*.tmp"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def _new_episodes(store: DatasetStore, data: OfflineDataset, finished: NDArray[Any],
                  report: IngestReport) -> NDArray[Any]:
    """Mask of `data`'s (content-hashed) episodes that are not in `store` yet; same-content repeats are counted as
    already in, other content under a known id as a conflict."""
    known = {ep.episode_id: ep.content_hash for ep in store.episodes}
    new = np.ones(data.num_episodes, dtype=bool)
    for index, episode in enumerate(data.episodes):
        if episode.episode_id not in known:
            continue
        new[index] = False
        if not finished[index]:
            continue
        if known[episode.episode_id] == episode.content_hash:
            report.episodes_already_in += 1
        else:
            report.conflicting_ids.append(episode.episode_id)
    return new

