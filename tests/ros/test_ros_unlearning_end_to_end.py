"""The real chain, nothing stood in: a BCQ-Lag model trained for 50 updates on a tiny fleet dataset
is exported and published as v0001; a policy_runner runs it; the unlearning server (real
`run_forget_job`) first runs a long retraining of robot_3's request that is cancelled (the request
is left `failed`, nothing published), then re-runs the same request with Safe-RULE (a few updates):
it publishes v0002 and swaps the runner to it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from saferule_core.algos.trainer import TrainConfig, fit
from saferule_core.artifacts.export import default_check_observations, export_and_publish
from saferule_core.artifacts.manifest import ManifestFields
from saferule_core.data.ledger import LedgerState
from saferule_core.data.store import DatasetStore
from saferule_core.unlearning.job import run_forget_job  # noqa: F401  (this test needs the real job)
from saferule_interfaces.action import Unlearn
from saferule_interfaces.msg import PolicyStatus
from saferule_ros.fleet_client import FleetClient, spinning_waiter
from saferule_ros.forget_messages import metrics_from_msgs
from tests.ros.forget_fixtures import TINY_BCQ_LAG, server_files
from tests.ros.ros_harness import CONFIG_DIR, node_process, probe_node, spin_until
from tests.ros.unlearning_harness import forget_request, ledger_entry, server_process, unlearn_goal

pytestmark = pytest.mark.ros


def test_real_unlearning_job_over_dds_swaps_the_runner(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    files = server_files(tmp_path, publish_initial=False)
    dataset = DatasetStore.open(files.dataset_dir).load()
    learner, _ = fit("bcq_lag", dataset, files.model_dir,
                     TrainConfig(steps=50, batch_size=64, num_threads=1, checkpoint_every=0, progress=False),
                     TINY_BCQ_LAG)
    info, stats = learner.info, learner.info.stats
    fields = ManifestFields(task=info.task, obs_dim=info.obs_dim, act_dim=info.act_dim,
                            action_low=[float(v) for v in stats.action_low],
                            action_high=[float(v) for v in stats.action_high], dataset_hash=info.dataset_hash,
                            method=info.algo, parent_version=None)
    _, manifest = export_and_publish(learner.deployable_policy(), fields, files.registry, files.key,
                                     check_batch=default_check_observations(info.obs_dim, stats.obs_mean, stats.obs_std))
    assert manifest.version == "v0001"
    config_file = tmp_path / "unlearn.yaml"
    # Safe-RULE is short; a retraining is long enough to be cancelled while it runs.
    config_file.write_text(yaml.safe_dump({"steps": 20, "retrain_steps": 100_000, "batch_size": 32,
                                           "forget_batch_size": 16, "num_threads": 1, "log_every": 5,
                                           "safe_rule": {"select_every": 5}}))

    runner_args = ["--params-file", str(CONFIG_DIR / "policy_runner.yaml"), "-p", f"registry_dir:={files.registry.root}",
                   "-p", f"verify_key:={files.keys}", "-p", "follow_latest:=false", "-p", "status_period_s:=0.2",
                   "-r", "__ns:=/e2e_robot"]
    with node_process("policy_runner", runner_args, tmp_path / "runner.log") as runner, \
            server_process(files, tmp_path / "server.log", robots=["e2e_robot"],
                           unlearn_config_file=config_file) as server, \
            probe_node("e2e_probe") as (node, executor):
        statuses: list[PolicyStatus] = []
        node.create_subscription(PolicyStatus, "/e2e_robot/policy_status", statuses.append, 10)
        client = FleetClient(node, spinning_waiter(executor), timeout_s=60.0)
        spin_until(executor, lambda: bool(statuses) and statuses[-1].active_version == "v0001", "the runner on v0001",
                   process=runner)

        answer = client.forget(forget_request(robot_ids=["robot_3"]))
        assert answer.accepted, answer.message
        # A job that ends without a policy leaves the request failed; the same request runs again.
        retrain_feedback: list[Unlearn.Feedback] = []
        retraining = client.send_unlearn(unlearn_goal(answer.request_id, method="retrain", swap=True),
                                         retrain_feedback.append)
        spin_until(executor, lambda: any(f.progress > 0 for f in retrain_feedback), "the retraining under way",
                   process=server)
        assert client.cancel(retraining)
        status, result = client.unlearn_result(retraining, 120.0)
        assert status == "canceled" and not result.success, (status, result.message)
        failed = ledger_entry(files, answer.request_id)
        assert failed.state == LedgerState.FAILED and "cancel" in (failed.error or ""), failed
        assert files.registry.latest() == "v0001"
        feedback: list[Unlearn.Feedback] = []
        handle = client.send_unlearn(unlearn_goal(answer.request_id, method="safe_rule", swap=True), feedback.append)
        status, result = client.unlearn_result(handle, 300.0)
        assert status == "succeeded" and result.success, result.message + "\n" + server.log_text()[-3000:]
        assert (result.new_policy_version, result.parent_policy_version) == ("v0002", "v0001")
        assert metrics_from_msgs(result.metrics_before) and metrics_from_msgs(result.metrics_after)
        assert "e2e_robot now v0002" in result.message
        assert feedback and feedback[-1].progress == pytest.approx(1.0)
        assert len({f.stage for f in feedback}) >= 3, [f.stage for f in feedback]
        entry = ledger_entry(files, answer.request_id)
        assert entry.state == LedgerState.UNLEARNED and entry.artifact_version == "v0002"
        states = [state for state, _ in entry.history]
        assert states[-3:] == ["failed", "unlearning", "unlearned"], states
        lineage = files.registry.manifest("v0002")
        assert lineage.parent_version == "v0001" and lineage.forget_request_id == answer.request_id
        statuses.clear()
        spin_until(executor, lambda: bool(statuses) and statuses[-1].active_version == "v0002", "the runner on v0002",
                   process=runner)
        client.destroy()
