from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from saferule_core.data.dataset import TRANSITION_KEYS, OfflineDataset
from saferule_core.data.hdf5_io import episode_lengths_from_flags, export_dsrl_hdf5, import_dsrl_hdf5
from saferule_core.errors import DatasetError, TaskError


def write_h5(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as fh:
        for key, value in arrays.items():
            fh.create_dataset(key, data=value)
    return path


def dsrl_arrays(dataset: OfflineDataset) -> dict[str, np.ndarray]:
    return {key: getattr(dataset, key) for key in TRANSITION_KEYS}


def test_export_writes_exactly_the_dsrl_keys_as_float32(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    export_dsrl_hdf5(small_dataset, tmp_path / "out.hdf5")
    with h5py.File(tmp_path / "out.hdf5", "r") as fh:
        assert sorted(fh.keys()) == sorted(TRANSITION_KEYS)
        for key in TRANSITION_KEYS:
            assert fh[key].dtype == np.float32
            np.testing.assert_array_equal(fh[key][()], getattr(small_dataset, key))


def test_round_trip_splits_episodes_at_terminals_and_timeouts(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    export_dsrl_hdf5(small_dataset, tmp_path / "BallRun.hdf5")
    back = import_dsrl_hdf5(tmp_path / "BallRun.hdf5", "BallRun", robot_id="sim", base_time=100.0, step_seconds=0.5)
    for key in TRANSITION_KEYS:
        np.testing.assert_array_equal(getattr(back, key), getattr(small_dataset, key))
    np.testing.assert_array_equal(back.episode_lengths, small_dataset.episode_lengths)
    assert back.task == "BallRun"
    first, second = back.episodes[0], back.episodes[1]
    assert first.episode_id == "BallRun-000000" and first.robot_id == "sim" and first.source_bag == "BallRun.hdf5"
    assert (first.start_time, first.end_time) == (100.0, 100.0 + 0.5 * small_dataset.episode_lengths[0])
    assert second.start_time == first.end_time
    assert all(ep.content_hash for ep in back.episodes)
    assert back.dataset_hash() == back.with_content_hashes().dataset_hash()


def test_task_alias_and_source_bag(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    export_dsrl_hdf5(small_dataset, tmp_path / "x.hdf5")
    back = import_dsrl_hdf5(tmp_path / "x.hdf5", "OfflineBallRun-v0", source_bag="run-7.mcap")
    assert back.task == "BallRun"
    assert back.episodes[3].episode_id == "run-7-000003" and back.episodes[3].source_bag == "run-7.mcap"


def test_trailing_unfinished_episode_is_kept() -> None:
    terminals = np.array([0, 0, 1, 0, 0], dtype=np.float32)
    timeouts = np.array([0, 0, 0, 0, 0], dtype=np.float32)
    np.testing.assert_array_equal(episode_lengths_from_flags(terminals, timeouts), [3, 2])
    np.testing.assert_array_equal(episode_lengths_from_flags(np.array([1.0, 0, 0]), np.array([0, 0, 1.0])), [1, 2])


def test_export_is_atomic(tmp_path: Path, small_dataset: OfflineDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.hdf5"
    target.write_bytes(b"previous content")

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr("saferule_core.io_utils.os.replace", crash)
    with pytest.raises(OSError, match="simulated"):
        export_dsrl_hdf5(small_dataset, target)
    assert target.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["out.hdf5"]


def test_missing_keys_are_named(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    arrays = dsrl_arrays(small_dataset)
    del arrays["costs"], arrays["timeouts"]
    with pytest.raises(DatasetError, match="missing DSRL keys costs, timeouts"):
        import_dsrl_hdf5(write_h5(tmp_path / "f.hdf5", arrays), "BallRun")


def test_mismatched_lengths_are_named(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    arrays = dsrl_arrays(small_dataset)
    arrays["rewards"] = arrays["rewards"][:-2]
    with pytest.raises(DatasetError, match=r"rewards has \d+ rows but observations has"):
        import_dsrl_hdf5(write_h5(tmp_path / "f.hdf5", arrays), "BallRun")


def test_wrong_shapes_are_refused(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    arrays = dsrl_arrays(small_dataset)
    arrays["costs"] = arrays["costs"][:, None]
    with pytest.raises(DatasetError, match="costs has shape .* expected 1-D"):
        import_dsrl_hdf5(write_h5(tmp_path / "a.hdf5", arrays), "BallRun")
    arrays = dsrl_arrays(small_dataset)
    with pytest.raises(DatasetError, match="do not match task CarCircle"):
        import_dsrl_hdf5(write_h5(tmp_path / "b.hdf5", arrays), "CarCircle")


def test_nan_is_refused(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    arrays = dsrl_arrays(small_dataset)
    arrays["next_observations"] = arrays["next_observations"].copy()
    arrays["next_observations"][4, 2] = np.nan
    with pytest.raises(DatasetError, match="next_observations contains NaN"):
        import_dsrl_hdf5(write_h5(tmp_path / "f.hdf5", arrays), "BallRun")


def test_corrupt_and_missing_files(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    export_dsrl_hdf5(small_dataset, tmp_path / "good.hdf5")
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes((tmp_path / "good.hdf5").read_bytes()[:300])
    with pytest.raises(DatasetError, match="truncated.hdf5: not a readable HDF5 file"):
        import_dsrl_hdf5(truncated, "BallRun")
    (tmp_path / "text.hdf5").write_text("hello")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        import_dsrl_hdf5(tmp_path / "text.hdf5", "BallRun")
    with pytest.raises(DatasetError, match="no such file"):
        import_dsrl_hdf5(tmp_path / "absent.hdf5", "BallRun")


def test_empty_file_and_unknown_task(tmp_path: Path) -> None:
    arrays = {key: np.zeros((0, 7) if key.endswith("observations") else (0, 2) if key == "actions" else (0,),
                            dtype=np.float32) for key in TRANSITION_KEYS}
    with pytest.raises(DatasetError, match="holds no transitions"):
        import_dsrl_hdf5(write_h5(tmp_path / "empty.hdf5", arrays), "BallRun")
    with pytest.raises(TaskError, match="unknown task"):
        import_dsrl_hdf5(tmp_path / "empty.hdf5", "NoSuchTask")
