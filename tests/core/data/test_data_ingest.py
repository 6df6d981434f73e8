"""Live ingestion of closed bags into a dataset: each bag once, episodes across splits, crash safety."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from saferule_core.data.ingest import closed_bags, ingest_closed_bags
from saferule_core.data.store import DatasetStore
from saferule_core.errors import DatasetError
from tests.core.data.test_data_from_bags import T0, Episode, Message, make_episode, write_bag

STEP_NS = 20_000_000


def episode_messages(episode: Episode, first: int, last: int) -> list[Message]:
    """The messages of steps first..last (observation t, and action/record t where t is a step)."""
    wanted = {f"{episode.episode_id}@{t}" for t in range(first, last + 1)}
    return [m for m in episode.messages if m.label in wanted]


def bag(bags_dir: Path, number: int, *parts: list[Message]) -> Path:
    messages = sorted((m for part in parts for m in part), key=lambda m: m.time_ns)
    return write_bag(bags_dir / f"saferule_20250101T000000Z_{number:03d}", messages)


def test_append_adds_episodes_and_records_sources_once(tmp_path: Path) -> None:
    from tests.core.data.conftest import make_dataset

    base, more = make_dataset(6, seed=1), make_dataset(4, seed=2, id_prefix="new")
    store = DatasetStore.create(tmp_path / "d", base, sources=["bag-a"])
    assert store.append(more, ["bag-b"]) == 4
    reopened = DatasetStore.open(tmp_path / "d")
    assert reopened.manifest.sources == ("bag-a", "bag-b")
    loaded = reopened.load()
    assert loaded.episode_ids() == base.episode_ids() + more.episode_ids()
    np.testing.assert_allclose(loaded.observations[-more.num_transitions:], more.observations, rtol=1e-6)
    assert reopened.num_transitions == base.num_transitions + more.num_transitions
    reopened.verify()
    with pytest.raises(DatasetError, match="already in"):
        reopened.append(make_dataset(2, seed=3, id_prefix="new"), ["bag-c"])
    with pytest.raises(DatasetError, match="already taken from: bag-b"):
        reopened.append(make_dataset(2, seed=3, id_prefix="other"), ["bag-b"])
    assert reopened.append(None, ["empty-bag"]) == 0
    assert DatasetStore.open(tmp_path / "d").manifest.sources == ("bag-a", "bag-b", "empty-bag")
    # deleting episodes keeps their source taken: a purged bag is never ingested again
    reopened.delete_episodes(more.episode_ids())
    assert "bag-b" in DatasetStore.open(tmp_path / "d").manifest.sources


def test_a_crash_before_the_commit_leaves_the_dataset_as_it_was(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.core.data.conftest import make_dataset

    store = DatasetStore.create(tmp_path / "d", make_dataset(6, seed=1))
    before = store.dataset_hash

    def crash(self: DatasetStore, manifest: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(DatasetStore, "_commit_manifest", crash)
    with pytest.raises(OSError):
        store.append(make_dataset(4, seed=2, id_prefix="new"), ["bag-b"])
    monkeypatch.undo()
    reopened = DatasetStore.open(tmp_path / "d")
    assert reopened.dataset_hash == before and reopened.manifest.sources == ()
    assert any("unreferenced" in line or "stale" in line for line in reopened.recovered)
    reopened.verify()


def test_episodes_that_continue_in_the_next_bag_wait_for_it(tmp_path: Path) -> None:
    bags, data = tmp_path / "bags", tmp_path / "dataset"
    first = make_episode("robot_1", 0, 5, T0, terminated=True, seed=1)
    spanning = make_episode("robot_1", 1, 6, T0 + 6 * STEP_NS, terminated=False, seed=2)   # truncated at its end
    orphan = make_episode("robot_2", 0, 8, T0 + 20 * STEP_NS, terminated=True, seed=3)    # its recording stops
    last = make_episode("robot_1", 2, 4, T0 + 40 * STEP_NS, terminated=True, seed=4)
    bag(bags, 0, first.messages, episode_messages(spanning, 0, 2))

    one = ingest_closed_bags(bags, data, "BallRun")
    assert one.created and one.episodes_added == 1 and one.bags_held == ["saferule_20250101T000000Z_000"]
    assert one.bags_taken == [] and DatasetStore.open(data).episode_ids() == [first.episode_id]

    bag(bags, 1, episode_messages(spanning, 3, 6), episode_messages(orphan, 0, 4))
    two = ingest_closed_bags(bags, data, "BallRun")
    assert two.episodes_already_in == 1 and two.episodes_added == 1          # first again; spanning finished
    assert two.bags_taken == ["saferule_20250101T000000Z_000"]
    assert two.bags_held == ["saferule_20250101T000000Z_001"]                  # orphan may still continue

    bag(bags, 2, last.messages)
    three = ingest_closed_bags(bags, data, "BallRun")
    assert three.episodes_added == 1 and three.episodes_unfinished_dropped == 1
    assert three.bags_taken == ["saferule_20250101T000000Z_001", "saferule_20250101T000000Z_002"]
    assert not ingest_closed_bags(bags, data, "BallRun").changed              # nothing new: nothing done

    stored = DatasetStore.open(data)
    assert stored.episode_ids() == [first.episode_id, spanning.episode_id, last.episode_id]
    assert stored.num_transitions == 5 + 6 + 4                                # every step of the finished episodes
    assert stored.manifest.sources == tuple(p.name for p in closed_bags(bags))
    loaded = stored.load()
    spanning_rows = slice(5, 11)
    np.testing.assert_allclose(loaded.actions[spanning_rows], spanning.actions, rtol=1e-6)
    assert [ep.source_bag for ep in loaded.episodes] == ["saferule_20250101T000000Z_000",
                                                          "saferule_20250101T000000Z_000",
                                                          "saferule_20250101T000000Z_002"]


def test_a_known_id_with_other_content_is_refused_not_overwritten(tmp_path: Path) -> None:
    bags, data = tmp_path / "bags", tmp_path / "dataset"
    bag(bags, 0, make_episode("robot_1", 0, 5, T0, terminated=True, seed=1).messages)
    ingest_closed_bags(bags, data, "BallRun")
    before = DatasetStore.open(data).dataset_hash
    # a robot restarted without unique episode ids: the same id again, other data
    bag(bags, 1, make_episode("robot_1", 0, 5, T0 + 10**12, terminated=True, seed=9).messages)
    report = ingest_closed_bags(bags, data, "BallRun")
    assert report.conflicting_ids == ["robot_1-000000"] and report.episodes_added == 0
    assert "refused" in report.summary()
    assert DatasetStore.open(data).dataset_hash == before
    with pytest.raises(DatasetError, match="CarRun"):
        ingest_closed_bags(bags, data, "CarRun")


KILL_SCRIPT = """
import sys
from saferule_core.data.ingest import ingest_closed_bags
ingest_closed_bags(sys.argv[1], sys.argv[2], "BallRun")
"""


def test_kill_9_during_ingestion_leaves_a_consistent_dataset_and_the_bags_are_taken_later(tmp_path: Path) -> None:
    bags = tmp_path / "bags"
    episodes = [make_episode(f"robot_{r}", seq, 100, T0 + (seq * 3 + r) * 101 * STEP_NS, terminated=True,
                             seed=100 * r + seq) for seq in range(12) for r in (1, 2, 3)]
    for number in range(3):
        bag(bags, number, *[ep.messages for ep in episodes[number * 12:(number + 1) * 12]])
    reference = tmp_path / "reference"
    ingest_closed_bags(bags, reference, "BallRun")
    expected = DatasetStore.open(reference)
    assert expected.num_episodes == 36
    for attempt, delay in enumerate((0.3, 0.6, 0.9, 1.2, 1.6)):
        data = tmp_path / f"dataset-{attempt}"
        process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(bags), str(data)])
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        if data.exists():   # killed after the dataset appeared: it must open and verify
            partial = DatasetStore.open(data)
            partial.verify()
            assert set(partial.manifest.sources) <= set(expected.manifest.sources)
        ingest_closed_bags(bags, data, "BallRun")   # the restart takes what was not committed
        final = DatasetStore.open(data)
        assert final.dataset_hash == expected.dataset_hash
        assert final.manifest.sources == expected.manifest.sources
        assert not any(p.name.endswith(".tmp") for p in [*data.iterdir(), *tmp_path.iterdir()])


def test_an_empty_last_bag_does_not_hide_an_episode_that_may_continue(tmp_path: Path) -> None:
    bags, data = tmp_path / "bags", tmp_path / "dataset"
    first = make_episode("robot_1", 0, 5, T0, terminated=True, seed=1)
    spanning = make_episode("robot_1", 1, 6, T0 + 6 * STEP_NS, terminated=False, seed=2)
    bag(bags, 0, first.messages, episode_messages(spanning, 0, 2))
    bag(bags, 1)                                   # the recorder split, then stopped: no messages
    report = ingest_closed_bags(bags, data, "BallRun")
    assert report.bags_held == ["saferule_20250101T000000Z_000"]
    assert report.bags_taken == ["saferule_20250101T000000Z_001"]
    bag(bags, 2, episode_messages(spanning, 3, 6))
    later = ingest_closed_bags(bags, data, "BallRun")
    assert later.episodes_added == 1 and DatasetStore.open(data).num_transitions == 5 + 6
