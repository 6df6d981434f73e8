"""dataset_ingestor in a driving fleet: closed bags join the dataset by themselves, each bag once,
every finished episode's steps counted, and a kill -9 of the ingestor loses nothing."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from saferule_core.data.from_bags import read_bag_episodes
from saferule_core.data.ingest import closed_bags, ingest_closed_bags
from saferule_core.data.store import DatasetStore
from saferule_ros.bringup import FleetArgs, fleet_nodes, prepare_data_root
from saferule_ros.processes import FleetProcesses
from tests.ros.test_bringup_processes import Lines

pytestmark = pytest.mark.ros

WAIT_S = 90.0


def wait_for(done, what: str, processes: FleetProcesses) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT_S
    while not done():
        processes.check_alive()
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S:g} s"
        time.sleep(0.2)


def _written_step_records(bags: list[Path]) -> int:
    from rosbags.rosbag2 import Reader

    total = 0
    for bag in bags:
        with Reader(bag) as reader:
            total += sum(conn.msgcount for conn in reader.connections if conn.topic.endswith("/step_record"))
    return total


def test_closed_bags_join_the_dataset_while_the_fleet_drives(tmp_path: Path) -> None:
    fleet = FleetArgs(robots=2, data_root=str(tmp_path / "fleet"), behaviour_drivers=True, control_rate=100.0,
                      bag_split_s=3.0)
    layout = fleet.layout
    prepare_data_root(layout)
    wanted = ("sim_robot", "behaviour_driver", "recorder", "dataset_ingestor")
    specs = [spec for spec in fleet_nodes(fleet) if spec.executable in wanted]
    lines = Lines()
    with FleetProcesses(specs, echo=lines, log_dir=tmp_path / "logs") as processes:
        processes.start()

        def stored_episodes() -> int:
            return DatasetStore.open(layout.dataset_dir).num_episodes if layout.dataset_dir.exists() else 0

        wait_for(lambda: stored_episodes() >= 4, "episodes ingested from closed bags", processes)
        # kill -9 of the ingestor mid-run; its restart takes whatever it had not committed
        assert processes.kill("dataset_ingestor") == -signal.SIGKILL
        DatasetStore.open(layout.dataset_dir).verify()
        before_restart = stored_episodes()
        processes.start(["dataset_ingestor"])
        wait_for(lambda: stored_episodes() > before_restart, "ingestion after the restart", processes)
        statuses = processes.stop()
    assert statuses["dataset_ingestor"] == 0 and statuses["recorder"] == 0, statuses

    # After the fleet stopped, one more pass takes the last bags (the final one closed at shutdown).
    final = ingest_closed_bags(layout.bags_dir, layout.dataset_dir, fleet.task)
    store = DatasetStore.open(layout.dataset_dir)
    store.verify()
    bags = closed_bags(layout.bags_dir)
    found = read_bag_episodes(bags, fleet.task)
    recorded = found.dataset
    ends = recorded.episode_starts + recorded.episode_lengths - 1
    finished = (recorded.terminals[ends] > 0) | (recorded.timeouts[ends] > 0)
    expected = recorded.subset_episodes(finished)
    # every finished episode the bags hold is in the dataset once, with all of its steps
    assert sorted(store.episode_ids()) == sorted(expected.episode_ids())
    assert store.num_transitions == expected.num_transitions
    # ... nothing was lost in the middle of the recording: no sample overwritten in DDS, no step
    # skipped within an episode on any topic (the recorder's own counts) ...
    stopped = [line for line in lines.of("recorder") if "stopped: {" in line]
    assert stopped and "'lost_in_dds': 0," in stopped[-1] and "'missing_steps': 0," in stopped[-1], stopped
    # ... and the step records the recorder wrote (its own per-topic counts in the bags) are exactly
    # those transitions plus the steps of episodes the recording cut off (at the start and at the
    # stop): their aligned steps, at most one first step per robot whose observation came before
    # the recorder's subscription to it matched, and at most one last step per unfinished episode
    # whose next observation came after the recorder had stopped
    written = _written_step_records(bags)
    cut_off = recorded.num_transitions - expected.num_transitions
    unaligned = found.report.dropped_steps
    assert unaligned <= fleet.robots + int((~finished).sum()), found.report.summary()
    assert written == store.num_transitions + cut_off + unaligned, (written, store.num_transitions, cut_off, unaligned)
    # every closed bag is taken, or held because an episode in it had not finished at the stop
    assert set(store.manifest.sources) | set(final.bags_held) == {b.name for b in bags}
    assert not set(final.bags_held) & set(store.manifest.sources)
    assert {ep.robot_id for ep in store.episodes} == {"robot_1", "robot_2"}
    assert all(ep.source_bag in {b.name for b in bags} for ep in store.episodes)
    assert not ingest_closed_bags(layout.bags_dir, layout.dataset_dir, fleet.task).episodes_added
    assert any("episodes (" in line for line in lines.of("dataset_ingestor"))
