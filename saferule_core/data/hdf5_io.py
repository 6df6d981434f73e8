"""DSRL HDF5 files: one flat array per transition key, episodes marked by terminals/timeouts.

DSRL files carry no provenance, so an import gives every episode synthetic provenance: one robot
id, one source bag (the file name by default) and start/end times laid out back to back from
`base_time` at `step_seconds` per transition.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numpy.typing import NDArray

from saferule_core.data.dataset import TRANSITION_KEYS, VECTOR_KEYS, EpisodeInfo, OfflineDataset
from saferule_core.errors import DatasetError
from saferule_core.io_utils import atomic_write_bytes


def episode_lengths_from_flags(terminals: NDArray[Any], timeouts: NDArray[Any]) -> NDArray[Any]:
    """Split rows into episodes ending at each terminal or timeout; a trailing unfinished run is kept."""
    ends = np.flatnonzero((terminals > 0) | (timeouts > 0)) + 1
    if ends.size == 0 or ends[-1] != terminals.shape[0]:
        ends = np.append(ends, terminals.shape[0])
    return np.diff(np.concatenate([[0], ends])).astype(np.int64)


def import_dsrl_hdf5(path: Path | str, task: str, robot_id: str = "dsrl", source_bag: str | None = None,
                     base_time: float = 0.0, step_seconds: float = 0.1) -> OfflineDataset:
    """Read a DSRL HDF5 file into an OfflineDataset with synthetic provenance.

    `task` is checked against the task registry: the file's observation and action widths must
    match it. Episode ids are `<source_bag stem>-<index>`.
    """
    # Imported here: the tasks package loads the simulator backends, which plain data work does not need.
    from saferule_core.tasks.spec import get_task

    path = Path(path)
    spec = get_task(task)
    bag = source_bag if source_bag is not None else path.name
    if step_seconds <= 0 or not np.isfinite(step_seconds) or not np.isfinite(base_time):
        raise DatasetError(f"step_seconds must be positive and base_time finite (got {step_seconds}, {base_time})")
    arrays = _read_arrays(path)
    rows = arrays["observations"].shape[0]
    for key in TRANSITION_KEYS:
        array = arrays[key]
        want_dims = 2 if key in VECTOR_KEYS else 1
        if array.ndim != want_dims:
            raise DatasetError(f"{path}: {key} has shape {array.shape}, expected {want_dims}-D")
        if array.shape[0] != rows:
            raise DatasetError(f"{path}: {key} has {array.shape[0]} rows but observations has {rows}")
        if not np.isfinite(array).all():
            raise DatasetError(f"{path}: {key} contains NaN or infinite values")
    if rows == 0:
        raise DatasetError(f"{path}: the file holds no transitions")
    if arrays["observations"].shape[1] != spec.obs_dim or arrays["actions"].shape[1] != spec.act_dim:
        raise DatasetError(f"{path}: observation/action widths {arrays['observations'].shape[1]}/"
                           f"{arrays['actions'].shape[1]} do not match task {spec.name} "
                           f"({spec.obs_dim}/{spec.act_dim})")
    lengths = episode_lengths_from_flags(arrays["terminals"], arrays["timeouts"])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    stem = Path(bag).stem or "dsrl"
    episodes = [
        EpisodeInfo(f"{stem}-{i:06d}", robot_id, bag, base_time + float(start) * step_seconds,
                    base_time + float(start + length) * step_seconds)
        for i, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist()))
    ]
    try:
        dataset = OfflineDataset(**arrays, episodes=episodes, episode_lengths=lengths, task=spec.name,
                                 attrs={"source": "dsrl-hdf5", "source_file": path.name})
    except DatasetError as err:
        raise DatasetError(f"{path}: {err}") from err
    return dataset.with_content_hashes()


def export_dsrl_hdf5(dataset: OfflineDataset, path: Path | str) -> None:
    """Write exactly the DSRL keys (float32) to `path`, atomically. Provenance is not kept."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as fh:
        for key in TRANSITION_KEYS:
            fh.create_dataset(key, data=np.asarray(getattr(dataset, key), dtype=np.float32))
    atomic_write_bytes(Path(path), buffer.getvalue())


def _read_arrays(path: Path) -> dict[str, NDArray[Any]]:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as fh:
            missing = [key for key in TRANSITION_KEYS if key not in fh]
            if missing:
                raise DatasetError(f"{path}: missing DSRL keys {', '.join(missing)}")
            not_arrays = [key for key in TRANSITION_KEYS if not isinstance(fh[key], h5py.Dataset)]
            if not_arrays:
                raise DatasetError(f"{path}: {', '.join(not_arrays)} must be datasets, not groups")
            return {key: np.asarray(fh[key][()], dtype=np.float32) for key in TRANSITION_KEYS}
    except DatasetError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise DatasetError(f"{path}: not a readable HDF5 file ({err})") from err
