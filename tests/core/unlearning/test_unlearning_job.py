"""The forget-request job end to end with a real DatasetStore, ledger and PolicyRegistry."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import saferule_core.unlearning.job as job_module
from saferule_core.algos.base import Learner
from saferule_core.algos.checkpoint import save_model
from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.artifacts.signing import load_verify_key
from saferule_core.data.ledger import ForgetLedger, LedgerState, request_forget
from saferule_core.data.selectors import ForgetSelector
from saferule_core.data.store import DatasetStore
from saferule_core.errors import UnlearningError
from saferule_core.unlearning.job import JobPaths, run_forget_job
from tests.core.unlearning.conftest import small_config


@dataclass
class Fleet:
    root: Path
    paths: JobPaths
    store: DatasetStore
    registry: PolicyRegistry
    ledger: ForgetLedger

    def request(self, **selector: tuple[str, ...]) -> str:
        selection = ForgetSelector(**selector) if selector else ForgetSelector(robot_ids=("robot_3",))
        return request_forget(self.store, selection, "tester", "poisoned robot", self.ledger).request_id


@pytest.fixture
def fleet(template: Path, tmp_path: Path) -> Fleet:
    root = tmp_path / "fleet"
    shutil.copytree(template, root)
    paths = JobPaths(dataset_dir=root / "data", model_dir=root / "model", registry_dir=root / "registry",
                     signing_key=root / "keys" / "signing_key", work_dir=root / "unlearned")
    store = DatasetStore.open(paths.dataset_dir)
    return Fleet(root, paths, store, PolicyRegistry(paths.registry_dir), ForgetLedger(store.path))


def test_job_moves_the_request_through_its_lifecycle_and_publishes(fleet: Fleet) -> None:
    request_id = fleet.request()
    stages: list[str] = []
    result = run_forget_job(fleet.paths, request_id, "safe_rule", small_config(steps=10),
                            progress=lambda stage, fraction, metrics: stages.append(stage))
    entry = fleet.ledger.get(request_id)
    assert [state for state, _ in entry.history] == ["requested", "quarantined", "unlearning", "unlearned"]
    assert entry.artifact_version == result.new_version == "v0002" and result.parent_version == "v0001"
    assert fleet.registry.versions() == ["v0001", "v0002"] and fleet.registry.latest() == "v0002"
    manifest = fleet.registry.load("v0002", load_verify_key(fleet.root / "keys")).manifest  # signature checks out
    assert manifest.forget_request_id == request_id and manifest.method == "safe_rule"
    assert manifest.parent_version == "v0001"
    retained = fleet.store.load()
    assert manifest.dataset_hash == retained.dataset_hash()            # the quarantined episodes are gone
    assert "forget_action_distance" in manifest.metrics and "export_max_abs_diff" in manifest.metrics
    assert manifest.metrics["stats_rebased"] == 1.0 and result.report.stats_rebased
    assert (result.model_dir / "model.pt").is_file() and result.model_dir == fleet.paths.work_dir / request_id
    assert result.metrics_after["forget_action_distance"] > result.metrics_before["forget_action_distance"]
    assert stages[0] == "safe_rule" and "publish" in stages
    assert sorted(fleet.store.quarantined_ids()) == [f"forget-{i:02d}" for i in range(4)]


def test_an_interrupted_job_resumes_and_purges(fleet: Fleet) -> None:
    request_id = fleet.request()
    fleet.ledger.transition(request_id, LedgerState.UNLEARNING)        # as if the process had died mid-job
    result = run_forget_job(fleet.paths, request_id, "finetune", small_config(steps=5), purge=True)
    entry = fleet.ledger.get(request_id)
    assert entry.state == LedgerState.PURGED and entry.artifact_version == result.new_version == "v0002"
    assert [state for state, _ in entry.history][-3:] == ["unlearning", "unlearned", "purged"]
    reopened = DatasetStore.open(fleet.paths.dataset_dir)
    assert not any(eid.startswith("forget") for eid in reopened.episode_ids()) and reopened.num_episodes == 16
    assert entry.dataset_hash_after == reopened.dataset_hash
    with pytest.raises(UnlearningError, match="already forgotten"):
        run_forget_job(fleet.paths, request_id, "finetune", small_config(steps=5))


def test_a_failing_job_is_marked_failed_and_leaves_the_registry_alone(fleet: Fleet,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    request_id = fleet.request()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(job_module, "unlearn", broken)
    with pytest.raises(UnlearningError, match="disk on fire"):
        run_forget_job(fleet.paths, request_id, "finetune", small_config())
    entry = fleet.ledger.get(request_id)
    assert entry.state == LedgerState.FAILED and "disk on fire" in (entry.error or "")
    assert fleet.registry.versions() == ["v0001"] and fleet.registry.latest() == "v0001"
    assert not (fleet.paths.work_dir / request_id).exists()


def test_a_failed_quarantined_request_is_rerun(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    request_id = fleet.request()
    real_unlearn = job_module.unlearn

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(job_module, "unlearn", broken)
    with pytest.raises(UnlearningError, match="disk on fire"):
        run_forget_job(fleet.paths, request_id, "finetune", small_config(steps=5))
    assert fleet.ledger.get(request_id).resumable
    monkeypatch.setattr(job_module, "unlearn", real_unlearn)
    result = run_forget_job(fleet.paths, request_id, "finetune", small_config(steps=5))
    entry = fleet.ledger.get(request_id)
    assert [state for state, _ in entry.history] == ["requested", "quarantined", "unlearning", "failed",
                                                     "unlearning", "unlearned"]
    assert entry.state == LedgerState.UNLEARNED and entry.artifact_version == result.new_version == "v0002"
    assert entry.error is None and "disk on fire" in (entry.note or "")
    assert fleet.registry.versions() == ["v0001", "v0002"]


def test_a_request_that_failed_before_quarantine_is_refused(fleet: Fleet) -> None:
    request_id = fleet.ledger.record_request(ForgetSelector(robot_ids=("robot_3",)), ["forget-00"], 10,
                                             fleet.store.dataset_hash, "tester", "poisoned robot").request_id
    fleet.ledger.transition(request_id, LedgerState.FAILED, error="quarantine failed: disk full")
    before = fleet.ledger.get(request_id)
    with pytest.raises(UnlearningError, match="failed before its episodes were quarantined .*disk full.*new forget "
                                              "request"):
        run_forget_job(fleet.paths, request_id, "finetune", small_config())
    assert fleet.ledger.get(request_id) == before and fleet.registry.versions() == ["v0001"]


def test_cancellation_fails_the_request_and_publishes_nothing(fleet: Fleet) -> None:
    request_id = fleet.request()
    with pytest.raises(UnlearningError, match="cancelled"):
        run_forget_job(fleet.paths, request_id, "finetune", small_config(steps=200), should_stop=lambda: True)
    assert fleet.ledger.get(request_id).state == LedgerState.FAILED
    assert fleet.registry.versions() == ["v0001"]


def test_other_pending_requests_are_kept_out_of_the_retained_data(fleet: Fleet) -> None:
    first = fleet.request(episode_ids=("forget-00", "forget-01"))
    fleet.request(episode_ids=("keep-00",))
    dataset, mask = job_module.forget_split(fleet.store, fleet.ledger.get(first).matched_episode_ids, first)
    ids = dataset.episode_ids()
    assert "keep-00" not in ids and {"forget-02", "forget-03"} <= set(ids)
    assert [eid for eid, m in zip(ids, mask) if m] == ["forget-00", "forget-01"]


@pytest.mark.parametrize("case", ["whole dataset", "mismatched model", "unknown request", "unknown method"])
def test_refusals_change_nothing(fleet: Fleet, trained: dict[str, Learner], case: str) -> None:
    request_id = fleet.request(robot_ids=("robot_1", "robot_3")) if case == "whole dataset" else fleet.request()
    if case == "mismatched model":
        from tests.core.unlearning.conftest import train_tiny, two_behaviour_dataset

        save_model(fleet.paths.model_dir, train_tiny("bc_all", two_behaviour_dataset(obs_dim=9), steps=2))
    before = fleet.ledger.get(request_id)
    request = "forget-nope" if case == "unknown request" else request_id
    method = "amnesia" if case == "unknown method" else "finetune"
    expected = {"whole dataset": "whole dataset", "mismatched model": "obs_dim=9",
                "unknown request": "no forget request", "unknown method": "unknown unlearning method"}[case]
    with pytest.raises(UnlearningError, match=expected):
        run_forget_job(fleet.paths, request, method, small_config())
    assert fleet.ledger.get(request_id) == before
    assert fleet.registry.versions() == ["v0001"]


def test_forget_mask_matches_the_frozen_episode_ids(fleet: Fleet) -> None:
    request_id = fleet.request(episode_ids=("forget-03", "keep-05"))
    dataset, mask = job_module.forget_split(fleet.store, fleet.ledger.get(request_id).matched_episode_ids, request_id)
    assert np.array(dataset.episode_ids())[mask].tolist() == ["keep-05", "forget-03"]


def test_a_job_killed_between_publishing_and_recording_records_its_version_on_resume(
        fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    request_id = fleet.request()
    real_transition = ForgetLedger.transition

    def killed_before_recording(self: ForgetLedger, rid: str, state: object, **fields: object) -> object:
        if LedgerState(state) == LedgerState.UNLEARNED:
            raise SystemExit("kill -9")          # nothing after this point runs, as in a killed process
        return real_transition(self, rid, state, **fields)

    monkeypatch.setattr(ForgetLedger, "transition", killed_before_recording)
    with pytest.raises(SystemExit):
        run_forget_job(fleet.paths, request_id, "safe_rule", small_config(steps=10))
    monkeypatch.undo()
    assert fleet.registry.versions() == ["v0001", "v0002"]
    assert fleet.ledger.get(request_id).state == LedgerState.UNLEARNING
    resumed = run_forget_job(fleet.paths, request_id, "safe_rule", small_config(steps=10))
    assert resumed.new_version == "v0002" and resumed.report is None and resumed.parent_version == "v0001"
    assert fleet.registry.versions() == ["v0001", "v0002"]          # no second version for the same request
    entry = fleet.ledger.get(request_id)
    assert entry.state == LedgerState.UNLEARNED and entry.artifact_version == "v0002"
    assert resumed.model_dir == fleet.registry.checkpoint_of("v0002")
