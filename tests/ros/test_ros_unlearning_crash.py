"""kill -9 of the unlearning server at each stage of a running job (the real job, a real runner).

For every crash point the server kills itself with SIGKILL when the job reaches that stage
(SAFERULE_CRASH_AT). Then: the dataset verifies and the request's episodes stay quarantined, the
ledger says where the job was, the registry holds only whole, signed versions (none, or the one the
job published), and the robot still runs the previous policy. A restarted server finishes the
request: exactly one new version for it, recorded in the ledger and running on the robot.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from saferule_core.algos.trainer import TrainConfig, fit
from saferule_core.artifacts.export import publish_learner
from saferule_core.artifacts.lineage import checkpoint_record
from saferule_core.artifacts.signing import load_verify_key
from saferule_core.data.ledger import LedgerState
from saferule_core.data.store import DatasetStore
from saferule_interfaces.msg import PolicyStatus
from saferule_ros.fleet_client import FleetClient, spinning_waiter
from tests.ros.forget_fixtures import TINY_BCQ_LAG, ServerFiles, server_files
from tests.ros.ros_harness import CONFIG_DIR, node_process, probe_node, spin_until
from tests.ros.unlearning_harness import forget_request, ledger_entry, server_process, unlearn_goal

pytestmark = pytest.mark.ros

UNLEARN = {"steps": 20, "batch_size": 32, "forget_batch_size": 16, "num_threads": 1, "log_every": 5,
           "safe_rule": {"select_every": 5, "repair_fraction": 0.3}}
ROBOT = "crash_robot"
# (stage the server dies at, whether the job had published its version by then)
CRASH_POINTS = [("suppress", False), ("repair", False), ("select", False), ("publish", False), ("swap", True)]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fleet's files with v0001 published from a trained BCQ-Lag (with its checkpoint recorded)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("crash-template")
    files = server_files(root, publish_initial=False)
    learner, _ = fit("bcq_lag", DatasetStore.open(files.dataset_dir).load(), files.model_dir,
                     TrainConfig(steps=30, batch_size=64, num_threads=1, checkpoint_every=0, progress=False),
                     TINY_BCQ_LAG)
    _, manifest = publish_learner(learner, files.registry, files.key, checkpoint=checkpoint_record(files.model_dir))
    assert manifest.version == "v0001"
    (root / "unlearn.yaml").write_text(yaml.safe_dump(UNLEARN))
    return root


def _reopen(root: Path) -> ServerFiles:
    from saferule_core.artifacts.registry import PolicyRegistry
    from saferule_core.artifacts.signing import load_signing_key

    keys = root / "keys"
    return ServerFiles(root=root, data_root=root / "data", dataset_dir=root / "data" / "fleet",
                       registry=PolicyRegistry(root / "registry"), keys=keys, key=load_signing_key(keys),
                       work_dir=root / "work", model_dir=root / "model")


@pytest.mark.parametrize(("stage", "published"), CRASH_POINTS, ids=[stage for stage, _ in CRASH_POINTS])
def test_a_server_killed_mid_job_leaves_everything_consistent_and_finishes_after_a_restart(
        template: Path, tmp_path: Path, stage: str, published: bool) -> None:
    files = _reopen(shutil.copytree(template, tmp_path / "fleet"))
    verify_key = load_verify_key(files.keys)
    runner_args = ["--params-file", str(CONFIG_DIR / "policy_runner.yaml"), "-p", f"registry_dir:={files.registry.root}",
                   "-p", f"verify_key:={files.keys}", "-p", "follow_latest:=false", "-p", "status_period_s:=0.2",
                   "-r", f"__ns:=/{ROBOT}"]
    server_params = {"unlearn_config_file": tmp_path / "fleet" / "unlearn.yaml"}
    with node_process("policy_runner", runner_args, tmp_path / "runner.log") as runner, \
            probe_node("crash_probe") as (node, executor):
        statuses: list[PolicyStatus] = []
        node.create_subscription(PolicyStatus, f"/{ROBOT}/policy_status", statuses.append, 10)
        spin_until(executor, lambda: bool(statuses) and statuses[-1].active_version == "v0001", "the runner on v0001",
                   process=runner)
        client = FleetClient(node, spinning_waiter(executor), timeout_s=60.0)

        with server_process(files, tmp_path / "server.log", robots=[ROBOT],
                            env={"SAFERULE_CRASH_AT": stage}, **server_params) as server:
            answer = client.forget(forget_request(robot_ids=["robot_3"]))
            assert answer.accepted, answer.message
            client.send_unlearn(unlearn_goal(answer.request_id, method="safe_rule", swap=True), lambda _: None)
            spin_until(executor, lambda: server.proc.poll() is not None, f"the server's crash at {stage}",
                       timeout=120.0)
            assert server.proc.returncode == -9, server.log_text()[-3000:]

        # what the crash left behind
        store = DatasetStore.open(files.dataset_dir)
        store.verify()
        entry = ledger_entry(files, answer.request_id)
        assert set(entry.matched_episode_ids) <= set(store.quarantined_ids())
        assert entry.state == (LedgerState.UNLEARNED if published else LedgerState.UNLEARNING)
        versions = files.registry.versions()
        assert versions == (["v0001", "v0002"] if published else ["v0001"])
        for version in versions:
            files.registry.load(version, verify_key)              # whole and signed
        staged = [p.name for p in files.registry.root.iterdir() if p.name.endswith(".tmp")]
        assert not staged, f"half-written versions left in the registry: {staged}"
        statuses.clear()
        spin_until(executor, lambda: bool(statuses), "a status after the crash", process=runner)
        assert statuses[-1].active_version == "v0001"             # the previous policy still drives the robot

        # a restart finishes the request
        with server_process(files, tmp_path / "server-restart.log", robots=[ROBOT],
                            **server_params) as restarted:
            spin_until(executor, lambda: ledger_entry(files, answer.request_id).state == LedgerState.UNLEARNED,
                       "the request unlearned after the restart", timeout=180.0, process=restarted)
            statuses.clear()
            spin_until(executor, lambda: bool(statuses) and statuses[-1].active_version == "v0002",
                       "the robot on v0002", timeout=120.0, process=runner)
        entry = ledger_entry(files, answer.request_id)
        assert entry.artifact_version == "v0002" and files.registry.versions() == ["v0001", "v0002"]
        assert files.registry.version_for_request(answer.request_id) == "v0002"
        assert files.registry.manifest("v0002").parent_version == "v0001"
        client.destroy()
