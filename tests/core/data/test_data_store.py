from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saferule_core.data import store as store_module
from saferule_core.data.dataset import TRANSITION_KEYS, OfflineDataset
from saferule_core.data.store import (
    EPISODES_FILE,
    MANIFEST_FILE,
    PENDING_EPISODES_FILE,
    DatasetStore,
    dataset_hash_from_episodes,
    shard_schema,
)
from saferule_core.errors import DatasetError


def assert_same_data(got: OfflineDataset, want: OfflineDataset) -> None:
    for key in TRANSITION_KEYS:
        np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=key)
    np.testing.assert_array_equal(got.episode_lengths, want.episode_lengths)
    unhashed = [[replace(ep, content_hash="") for ep in d.episodes] for d in (got, want)]
    assert unhashed[0] == unhashed[1]
    assert got.task == want.task


def shard_files(path: Path) -> set[str]:
    return {p.name for p in (path / "shards").iterdir()}


def rewrite_manifest_sha(path: Path, shard_file: str, data: bytes) -> None:
    """Install `data` as a shard and make the manifest agree with it (to test checks behind the sha256)."""
    (path / shard_file).write_bytes(data)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    for shard in manifest["shards"]:
        if shard["file"] == shard_file:
            shard["sha256"] = hashlib.sha256(data).hexdigest()
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))


def raw_shard_bytes(num_rows: int, obs_dim: int, act_dim: int, lengths: list[int], ids: list[str],
                    fill: float = 0.5, schema_obs_dim: int | None = None) -> bytes:
    episode_index = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    obs = np.full((num_rows, obs_dim), fill, dtype=np.float32)
    act = np.zeros((num_rows, act_dim), dtype=np.float32)
    columns = {
        "episode_index": pa.array(episode_index),
        "episode_id": pa.DictionaryArray.from_arrays(pa.array(episode_index), pa.array(ids)),
        "observations": pa.FixedSizeListArray.from_arrays(pa.array(obs.ravel()), obs_dim),
        "next_observations": pa.FixedSizeListArray.from_arrays(pa.array(obs.ravel()), obs_dim),
        "actions": pa.FixedSizeListArray.from_arrays(pa.array(act.ravel()), act_dim),
    }
    for key in ("rewards", "costs", "terminals", "timeouts"):
        columns[key] = pa.array(np.zeros(num_rows, dtype=np.float32))
    table = pa.Table.from_pydict(columns, schema=shard_schema(schema_obs_dim or obs_dim, act_dim))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


# ----- round trip ------------------------------------------------------------------------------

def test_round_trip_keeps_arrays_provenance_and_hash(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    store = DatasetStore.create(tmp_path / "ds", small_dataset, episodes_per_shard=5)
    assert len(store.manifest.shards) == 3
    assert [len(s.episode_ids) for s in store.manifest.shards] == [5, 5, 2]
    reopened = DatasetStore.open(tmp_path / "ds")
    loaded = reopened.load()
    assert_same_data(loaded, small_dataset)
    assert loaded.attrs == {"origin": "synthetic"}
    expected = small_dataset.with_content_hashes()
    assert [ep.content_hash for ep in loaded.episodes] == [ep.content_hash for ep in expected.episodes]
    assert reopened.dataset_hash == expected.dataset_hash() == loaded.dataset_hash()
    assert reopened.manifest.obs_dim == 7 and reopened.manifest.act_dim == 2
    assert reopened.num_transitions == small_dataset.num_transitions
    manifest = json.loads((tmp_path / "ds" / MANIFEST_FILE).read_text())
    assert manifest["format_version"] == 1 and manifest["task"] == "BallRun"
    assert len(manifest["shards"][0]["sha256"]) == 64


def test_vector_columns_are_fixed_size_float32_lists(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    store = DatasetStore.create(tmp_path / "ds", small_dataset, episodes_per_shard=64)
    table = pq.read_table(tmp_path / "ds" / store.manifest.shards[0].file)
    assert table.schema.field("observations").type == pa.list_(pa.float32(), 7)
    assert table.schema.field("actions").type == pa.list_(pa.float32(), 2)
    assert table.schema.field("costs").type == pa.float32()
    provenance = pq.read_table(tmp_path / "ds" / EPISODES_FILE).to_pydict()
    assert provenance["robot_id"][:3] == ["robot-0", "robot-1", "robot-2"]
    assert provenance["length"] == small_dataset.episode_lengths.tolist()


def test_hash_from_episode_table_matches_dataset_hash(small_dataset: OfflineDataset) -> None:
    hashed = small_dataset.with_content_hashes()
    assert dataset_hash_from_episodes(hashed.task, hashed.episode_ids(),
                                      [ep.content_hash for ep in hashed.episodes]) == hashed.dataset_hash()


def test_create_refuses_existing_directory_and_bad_names(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    DatasetStore.create(tmp_path / "ds", small_dataset)
    with pytest.raises(DatasetError, match="already exists"):
        DatasetStore.create(tmp_path / "ds", small_dataset)
    with pytest.raises(DatasetError, match="not allowed"):
        DatasetStore.create(tmp_path / "other", small_dataset, extra_files={"../escape": b"x"})
    assert not (tmp_path / "other").exists()


def test_extra_files_appear_with_the_dataset(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    DatasetStore.create(tmp_path / "ds", small_dataset, extra_files={"poison.json": b"{}\n"})
    assert (tmp_path / "ds" / "poison.json").read_bytes() == b"{}\n"


def test_create_failure_mid_write_leaves_nothing(tmp_path: Path, small_dataset: OfflineDataset,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = store_module._encode_shard
    calls = {"n": 0}

    def failing(*args: object, **kwargs: object) -> bytes:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(store_module, "_encode_shard", failing)
    with pytest.raises(OSError, match="simulated"):
        DatasetStore.create(tmp_path / "ds", small_dataset, episodes_per_shard=4)
    assert calls["n"] == 2
    assert list(tmp_path.iterdir()) == []


# ----- quarantine ------------------------------------------------------------------------------

def test_quarantine_is_excluded_by_default_and_persists(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    store = DatasetStore.create(tmp_path / "ds", small_dataset, episodes_per_shard=5)
    assert store.quarantine(["ep-003", "ep-007"]) == ("ep-003", "ep-007")
    assert store.quarantine(["ep-003"]) == ()
    reopened = DatasetStore.open(tmp_path / "ds")
    assert reopened.quarantined_ids() == ("ep-003", "ep-007")
    np.testing.assert_array_equal(np.flatnonzero(reopened.quarantine_mask()), [3, 7])
    keep = np.ones(12, dtype=bool)
    keep[[3, 7]] = False
    assert_same_data(reopened.load(), small_dataset.subset_episodes(keep))
    assert_same_data(reopened.load(exclude_quarantined=False), small_dataset)
    assert reopened.unquarantine(["ep-007"]) == ("ep-007",)
    assert DatasetStore.open(tmp_path / "ds").quarantined_ids() == ("ep-003",)


def test_quarantine_of_unknown_episode_names_it(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    store = DatasetStore.create(tmp_path / "ds", small_dataset)
    with pytest.raises(DatasetError, match="1 episode ids are not in .*'?nope"):
        store.quarantine(["ep-001", "nope"])
    assert store.quarantined_ids() == ()


def test_load_refuses_when_everything_is_quarantined(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    store = DatasetStore.create(tmp_path / "ds", small_dataset)
    store.quarantine(small_dataset.episode_ids())
    with pytest.raises(DatasetError, match="every episode is quarantined"):
        store.load()


# ----- physical deletion -----------------------------------------------------------------------

def test_delete_rewrites_only_the_shards_holding_the_episodes(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    path = tmp_path / "ds"
    store = DatasetStore.create(path, small_dataset, episodes_per_shard=4)
    before = {s.file: (path / s.file).read_bytes() for s in store.manifest.shards}
    store.quarantine(["ep-001", "ep-005"])
    report = store.delete_episodes(["ep-001", "ep-002"])
    assert report.rewritten_shards == ("shards/shard-000000.parquet",)
    assert report.new_shards == ("shards/shard-000003.parquet",)
    assert report.untouched_shards == 2
    assert report.deleted_episode_ids == ("ep-001", "ep-002")
    assert report.deleted_transitions == int(small_dataset.episode_lengths[[1, 2]].sum())
    assert shard_files(path) == {"shard-000001.parquet", "shard-000002.parquet", "shard-000003.parquet"}
    for file in ("shards/shard-000001.parquet", "shards/shard-000002.parquet"):
        assert (path / file).read_bytes() == before[file]
    keep = np.ones(12, dtype=bool)
    keep[[1, 2]] = False
    expected = small_dataset.subset_episodes(keep)
    reopened = DatasetStore.open(path)
    assert reopened.recovered == ()
    assert reopened.quarantined_ids() == ("ep-005",)
    assert_same_data(reopened.load(exclude_quarantined=False), expected)
    assert report.dataset_hash_after == reopened.dataset_hash == expected.with_content_hashes().dataset_hash()
    assert report.dataset_hash_before != report.dataset_hash_after
    assert not (path / PENDING_EPISODES_FILE).exists()


def test_a_shard_emptied_by_delete_disappears(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    path = tmp_path / "ds"
    store = DatasetStore.create(path, small_dataset, episodes_per_shard=4)
    report = store.delete_episodes(["ep-008", "ep-009", "ep-010", "ep-011"])
    assert report.rewritten_shards == ("shards/shard-000002.parquet",) and report.new_shards == ()
    assert shard_files(path) == {"shard-000000.parquet", "shard-000001.parquet"}
    assert DatasetStore.open(path).load().num_episodes == 8


def test_deleted_bytes_are_physically_gone(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    doomed_value, kept_value = np.float32(-12345.678), np.float32(-98765.4375)
    observations = small_dataset.observations.copy()
    starts = small_dataset.episode_starts
    observations[starts[2]:starts[3], :] = doomed_value
    observations[starts[1]:starts[2], :] = kept_value
    episodes = list(small_dataset.episodes)
    episodes[2] = replace(episodes[2], episode_id="SENTINEL-forget-me")
    dataset = replace(small_dataset, observations=observations, episodes=episodes)
    path = tmp_path / "ds"
    DatasetStore.create(path, dataset, episodes_per_shard=4, compression="none")

    def files_containing(needle: bytes) -> list[str]:
        return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and needle in p.read_bytes())

    doomed_bytes, kept_bytes = doomed_value.tobytes(), kept_value.tobytes()
    assert files_containing(doomed_bytes) == ["shards/shard-000000.parquet"]
    assert files_containing(b"SENTINEL-forget-me")
    DatasetStore.open(path).delete_episodes(["SENTINEL-forget-me"])
    assert files_containing(doomed_bytes) == []
    assert files_containing(b"SENTINEL-forget-me") == []
    assert files_containing(kept_bytes) == ["shards/shard-000003.parquet"]  # the rewritten shard is searchable


def test_delete_refuses_unknown_and_all(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    store = DatasetStore.create(tmp_path / "ds", small_dataset)
    with pytest.raises(DatasetError, match="not in"):
        store.delete_episodes(["ghost"])
    with pytest.raises(DatasetError, match="refusing to delete all 12"):
        store.delete_episodes(small_dataset.episode_ids())
    with pytest.raises(DatasetError, match="list of strings"):
        store.delete_episodes("ep-001")  # type: ignore[arg-type]
    assert DatasetStore.open(tmp_path / "ds").num_episodes == 12


def test_delete_failure_before_commit_keeps_old_dataset(tmp_path: Path, small_dataset: OfflineDataset,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ds"
    store = DatasetStore.create(path, small_dataset, episodes_per_shard=4)
    manifest_before = (path / MANIFEST_FILE).read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("power cut (simulated)")

    monkeypatch.setattr(store_module, "atomic_write_json", crash)
    with pytest.raises(OSError, match="simulated"):
        store.delete_episodes(["ep-005"])
    monkeypatch.undo()
    assert (path / MANIFEST_FILE).read_bytes() == manifest_before
    assert "shard-000003.parquet" in shard_files(path)          # the orphaned replacement
    reopened = DatasetStore.open(path)
    assert any("shard-000003.parquet" in line for line in reopened.recovered)
    assert shard_files(path) == {"shard-000000.parquet", "shard-000001.parquet", "shard-000002.parquet"}
    assert not (path / PENDING_EPISODES_FILE).exists()
    assert_same_data(reopened.load(), small_dataset)


def test_crash_after_commit_is_finished_on_open(tmp_path: Path, small_dataset: OfflineDataset,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ds"
    store = DatasetStore.create(path, small_dataset, episodes_per_shard=4)

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("power cut (simulated)")

    monkeypatch.setattr(store_module, "_finish_commit", crash)
    with pytest.raises(OSError, match="simulated"):
        store.delete_episodes(["ep-005"])
    monkeypatch.undo()
    assert "shard-000001.parquet" in shard_files(path)           # old bytes still on disk ...
    reopened = DatasetStore.open(path)                           # ... until the next open
    assert "shard-000001.parquet" not in shard_files(path)
    assert any("installed" in line for line in reopened.recovered)
    keep = np.ones(12, dtype=bool)
    keep[5] = False
    assert_same_data(reopened.load(), small_dataset.subset_episodes(keep))


# ----- corrupt and malformed directories --------------------------------------------------------

def test_missing_manifest_and_directory(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    with pytest.raises(DatasetError, match="no such dataset directory"):
        DatasetStore.open(tmp_path / "nothing")
    DatasetStore.create(tmp_path / "ds", small_dataset)
    (tmp_path / "ds" / MANIFEST_FILE).unlink()
    with pytest.raises(DatasetError, match="manifest.json is missing"):
        DatasetStore.open(tmp_path / "ds")


@pytest.mark.parametrize("text, problem", [
    ("{not json", "not valid JSON"),
    ('{"format": "other"}', "not a saferule dataset manifest"),
    ('{"format": "saferule-dataset", "format_version": 99}', "unsupported format version 99"),
    ('{"format": "saferule-dataset", "format_version": 1}', "lacks"),
])
def test_malformed_manifest(tmp_path: Path, small_dataset: OfflineDataset, text: str, problem: str) -> None:
    DatasetStore.create(tmp_path / "ds", small_dataset)
    (tmp_path / "ds" / MANIFEST_FILE).write_text(text)
    with pytest.raises(DatasetError, match=problem):
        DatasetStore.open(tmp_path / "ds")


def test_truncated_shard_is_named(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    store = DatasetStore.create(tmp_path / "ds", small_dataset, episodes_per_shard=4)
    shard = tmp_path / "ds" / store.manifest.shards[1].file
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"shard-000001\.parquet: sha256 does not match"):
        DatasetStore.open(tmp_path / "ds").load()


def test_missing_shard_is_named(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    store = DatasetStore.create(tmp_path / "ds", small_dataset, episodes_per_shard=4)
    (tmp_path / "ds" / store.manifest.shards[2].file).unlink()
    with pytest.raises(DatasetError, match=r"shard-000002\.parquet: file is missing"):
        store.verify()


def test_unreadable_parquet_behind_a_matching_sha(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    store = DatasetStore.create(tmp_path / "ds", small_dataset, episodes_per_shard=4)
    rewrite_manifest_sha(tmp_path / "ds", store.manifest.shards[0].file, b"PAR1 this is not parquet PAR1")
    with pytest.raises(DatasetError, match=r"shard-000000\.parquet: unreadable Parquet"):
        DatasetStore.open(tmp_path / "ds").load()


def test_wrong_observation_width_is_named(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    store = DatasetStore.create(tmp_path / "ds", small_dataset, episodes_per_shard=4)
    shard = store.manifest.shards[0]
    lengths = small_dataset.episode_lengths[:4].tolist()
    data = raw_shard_bytes(shard.num_rows, 6, 2, lengths, list(shard.episode_ids))
    rewrite_manifest_sha(tmp_path / "ds", shard.file, data)
    with pytest.raises(DatasetError, match=r"shard-000000\.parquet: column observations has type .*6.*obs_dim 7"):
        DatasetStore.open(tmp_path / "ds").load()


def test_nan_in_shard_is_named(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    store = DatasetStore.create(tmp_path / "ds", small_dataset, episodes_per_shard=4)
    shard = store.manifest.shards[1]
    lengths = small_dataset.episode_lengths[4:8].tolist()
    data = raw_shard_bytes(shard.num_rows, 7, 2, lengths, list(shard.episode_ids), fill=float("nan"))
    rewrite_manifest_sha(tmp_path / "ds", shard.file, data)
    with pytest.raises(DatasetError, match=r"shard-000001\.parquet: column observations has NaN"):
        DatasetStore.open(tmp_path / "ds").load()


def test_rows_not_matching_episode_lengths_are_refused(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    store = DatasetStore.create(tmp_path / "ds", small_dataset, episodes_per_shard=4)
    shard = store.manifest.shards[0]
    lengths = small_dataset.episode_lengths[:4].tolist()
    shifted = [lengths[0] + 1, lengths[1] - 1, *lengths[2:]]
    data = raw_shard_bytes(shard.num_rows, 7, 2, shifted, list(shard.episode_ids))
    rewrite_manifest_sha(tmp_path / "ds", shard.file, data)
    with pytest.raises(DatasetError, match="not grouped into the manifest's episodes"):
        DatasetStore.open(tmp_path / "ds").load()


def test_corrupt_episode_table_fails_open(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    DatasetStore.create(tmp_path / "ds", small_dataset)
    table = tmp_path / "ds" / EPISODES_FILE
    table.write_bytes(table.read_bytes()[:50])
    with pytest.raises(DatasetError, match=r"episodes\.parquet: sha256 does not match"):
        DatasetStore.open(tmp_path / "ds")


def test_other_process_changes_are_seen(tmp_path: Path, dataset_factory: Callable[..., OfflineDataset]) -> None:
    dataset = dataset_factory(num_episodes=6)
    first = DatasetStore.create(tmp_path / "ds", dataset, episodes_per_shard=2)
    second = DatasetStore.open(tmp_path / "ds")
    second.delete_episodes(["ep-000"])
    assert first.load().num_episodes == 5
    first.refresh()
    assert "ep-000" not in first.episode_ids()
