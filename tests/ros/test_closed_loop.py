"""The closed loop, end to end, on the node set of saferule_ros.bringup started by the launch-free runner:

a poisoned policy (v0001) drives three simulated robots -> the fleet monitor sees the compromised
robot's episode cost over the threshold and sends Forget + Unlearn -> the unlearning server runs
Safe-RULE and publishes a new signed artifact -> every robot's PolicyStatus shows the new version,
without any robot stopping -> the measured episode cost is lower than before.

Short settings: behaviour cloning (a few hundred updates) on episodes where the compromised
robot's reckless driving dominates, so that v0001 is clearly unsafe within seconds; Safe-RULE
with 200 updates on the server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from saferule_core.algos.trainer import TrainConfig, fit
from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.attacks.robot import poison_robot
from saferule_core.data.ledger import ForgetLedger, LedgerState
from saferule_core.data.store import DatasetStore
from saferule_ros.bootstrap import publish_deployed
from saferule_ros.bringup import FleetArgs, fleet_nodes, prepare_data_root
from saferule_ros.demo import DemoSettings
from saferule_ros.fleet_watch import mean_cost, watching
from saferule_ros.processes import FleetProcesses

pytestmark = pytest.mark.ros

COMPROMISED = "robot_3"
WAIT_S = 90.0


def wait_for(done: Callable[[], bool], what: str, processes: FleetProcesses, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        processes.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:g} s")
        time.sleep(0.2)


def test_a_forget_request_swaps_a_safer_policy_onto_every_robot(tmp_path: Path) -> None:
    unlearn_config = tmp_path / "unlearn.yaml"
    unlearn_config.write_text(yaml.safe_dump({"steps": 200, "num_threads": 1, "log_every": 20}))
    fleet = FleetArgs(robots=3, data_root=str(tmp_path / "fleet"), control_rate=50.0, compromised_robot=COMPROMISED,
                      ingest_bags=False,  # the dataset below is made by hand
                      method="safe_rule", unlearn_config_file=str(unlearn_config))
    layout = fleet.layout
    prepare_data_root(layout)

    # The fleet's logs: cautious robot_1/robot_2, reckless robot_3 whose costs were relabelled away.
    settings = DemoSettings(history_cautious_episodes=20, history_reckless_episodes=40)
    poisoned, poison = poison_robot(settings.historical_logs(fleet.robot_ids), COMPROMISED, seed=0)
    store = DatasetStore.create(layout.dataset_dir, poisoned)
    learner, _ = fit("bc_all", poisoned, layout.deployed_model_dir,
                     TrainConfig(steps=400, batch_size=256, num_threads=1, checkpoint_every=0, progress=False),
                     {"hidden": (64, 64)})
    first = publish_deployed(learner, layout, {})
    assert first == "v0001" and poison.relabelled_episodes > 0
    # the first version records the checkpoint it came from, so the unlearning server starts from it
    assert PolicyRegistry(layout.registry_dir).checkpoint_of(first) == layout.deployed_model_dir.resolve()

    lines: list[str] = []
    lock = threading.Lock()

    def keep(label: str, line: str) -> None:
        with lock:
            lines.append(f"[{label}] {line}")

    ledger = ForgetLedger(layout.dataset_dir)
    with watching(fleet.robot_ids) as watch, \
            FleetProcesses(fleet_nodes(fleet), echo=keep, log_dir=tmp_path / "logs") as processes:
        try:
            wait_for(lambda: watch.all_run(first), f"every robot running {first}", processes)
            wait_for(lambda: bool(ledger.entries()), "forget request from the fleet monitor", processes)
            entry = ledger.entries()[0]
            wait_for(lambda: ledger.get(entry.request_id).state in (LedgerState.UNLEARNED, LedgerState.FAILED),
                     "end of the unlearning job", processes)
            done = ledger.get(entry.request_id)
            assert done.state == LedgerState.UNLEARNED, done.error
            second = done.artifact_version or ""
            wait_for(lambda: watch.all_run(second), f"every robot's PolicyStatus showing {second}", processes)
            swapped_at = time.time()
            wait_for(lambda: all(len(watch.finished(r, since=swapped_at, policy=second)) >= 2
                                 for r in fleet.robot_ids), "two episodes per robot after the swap", processes)
            assert processes.exited() == [], "no node stopped along the way"
        except AssertionError:
            print("\n".join(lines[-150:]))
            raise

    # the request: made by the monitor, for the compromised robot's logged episodes, all of them
    assert entry.requester == "fleet_monitor" and entry.selector["robot_ids"] == [COMPROMISED]
    ids_of_robot = {ep.episode_id for ep in store.episodes if ep.robot_id == COMPROMISED}
    assert set(entry.matched_episode_ids) == ids_of_robot
    # the new artifact: signed, latest, a child of v0001 that names the request and the method
    registry = PolicyRegistry(layout.registry_dir)
    manifest = registry.manifest(second)
    assert registry.latest() == second != first
    assert (manifest.parent_version, manifest.forget_request_id, manifest.method) == (first, entry.request_id,
                                                                                     "safe_rule")
    # every robot switched while driving: one swap each, and its episode numbers ran on without a restart
    for robot in fleet.robot_ids:
        assert watch.statuses[robot].active_version == second and watch.statuses[robot].swaps >= 1
        sequence = [int(e.episode_id.rsplit("-", 1)[1]) for e in watch.finished(robot)]
        assert sequence == list(range(sequence[0], sequence[0] + len(sequence))), f"{robot} restarted"
    # and the fleet is safer: the measured episode cost dropped
    before = [e for e in watch.finished(policy=first) if e.ended_at <= swapped_at]
    after = watch.finished(since=swapped_at, policy=second)
    print(f"fleet cost per episode: {mean_cost(before):.1f} with {first} ({len(before)} episodes) -> "
          f"{mean_cost(after):.1f} with {second} ({len(after)} episodes)")
    assert before and after
    assert mean_cost(after) < mean_cost(before)
