"""Unlearning jobs over forget requests, without ROS: the durable queue, admission (nothing is left
behind by a refused request) and what a restart does with each job it finds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saferule_core.data.forget_requests import ForgetRequests
from saferule_core.data.ledger import LedgerState
from saferule_core.data.selectors import ForgetSelector
from saferule_core.data.store import DatasetStore
from saferule_core.errors import ForgetRequestError, SafeRuleError, UnlearningError
from saferule_core.unlearning.forget_jobs import ForgetJobs
from saferule_core.unlearning.job_queue import JobQueue, QueuedJob, StateFileError
from tests.core.data.conftest import make_dataset


def job(request_id: str) -> QueuedJob:
    return QueuedJob(request_id, "fleet", "safe_rule", swap_on_success=False, queued_at=1.0)


def test_the_queue_keeps_its_order_and_model_lineage_across_a_reopen(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    queue = JobQueue(state, "models/deployed")
    assert [queue.add(job(r)) for r in ("a", "b", "c")] == [0, 1, 2]
    with pytest.raises(StateFileError, match="already queued"):
        queue.add(job("b"))
    assert queue.take_next() == job("a") and queue.running() == "a" and queue.take_next() is None
    assert not queue.drop_waiting("a") and queue.drop_waiting("c") and queue.position("c") is None
    queue.release("a")                                     # interrupted: stays queued, not running
    assert queue.running() is None and queue.position("a") == 0
    queue.take_next()
    queue.finish("a", model_dir="unlearning/a")
    reopened = JobQueue(state, "models/deployed")
    assert reopened.jobs() == [job("b")] and reopened.current_model_dir == "unlearning/a"
    # another base model (the operator deployed a different one) restarts the lineage, keeps the jobs
    moved = JobQueue(state, "models/other")
    assert moved.current_model_dir == "models/other" and moved.jobs() == [job("b")]


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "other", "version": 1}),
                                     json.dumps({"format": "saferule-unlearning-server-state", "version": 1,
                                                 "jobs": [{"request_id": "a"}], "base_model_dir": "m",
                                                 "current_model_dir": "m"}),
                                     json.dumps({"format": "saferule-unlearning-server-state", "version": 1,
                                                 "jobs": [1], "base_model_dir": "m", "current_model_dir": "m"})])
def test_a_damaged_state_file_is_one_clear_error(tmp_path: Path, content: str) -> None:
    state = tmp_path / "state.json"
    state.write_text(content)
    with pytest.raises(StateFileError, match=str(state)):
        JobQueue(state, "m")


@pytest.fixture
def jobs(tmp_path: Path) -> ForgetJobs:
    DatasetStore.create(tmp_path / "fleet", make_dataset())
    requests = ForgetRequests(tmp_path, default_dataset="fleet")
    return ForgetJobs(requests, JobQueue(tmp_path / "state.json", "models/deployed"))


def record(jobs: ForgetJobs, robot: str) -> str:
    return jobs.requests.record(jobs.requests.dataset_dir(""), ForgetSelector(robot_ids=(robot,)), "ops",
                                "compromised").request_id


def test_admission_queues_a_recorded_request_once_with_a_known_method(jobs: ForgetJobs) -> None:
    first = record(jobs, "robot-1")
    with pytest.raises(UnlearningError, match="unknown method 'magic'"):
        jobs.admit(first, "magic", swap_on_success=True)
    with pytest.raises(ForgetRequestError, match="unknown request id"):
        jobs.admit("forget-0000", "", swap_on_success=True)
    admitted = jobs.admit(first, " ", swap_on_success=True, goal_id="g1")
    assert admitted.job.method == "safe_rule" and admitted.job.dataset == "fleet" and admitted.job.goal_id == "g1"
    assert admitted.entry.state == LedgerState.QUARANTINED
    with pytest.raises(UnlearningError, match="already queued"):
        jobs.admit(first, "retrain", swap_on_success=False)
    jobs.queue.take_next()
    with pytest.raises(UnlearningError, match="already being unlearned"):
        jobs.admit(first, "retrain", swap_on_success=False)
    ledger = jobs.requests.ledger(admitted.dataset_dir)
    ledger.transition(first, LedgerState.UNLEARNING)
    ledger.transition(first, LedgerState.UNLEARNED, artifact_version="v0002")
    jobs.queue.finish(first)
    with pytest.raises(UnlearningError, match="already unlearned"):
        jobs.admit(first, "", swap_on_success=False)
    with pytest.raises(UnlearningError, match="default_method 'magic'"):
        ForgetJobs(jobs.requests, jobs.queue, default_method="magic")


def test_a_new_request_refused_on_admission_leaves_nothing_recorded_or_quarantined(jobs: ForgetJobs) -> None:
    fleet = jobs.requests.dataset_dir("")

    def refuse(_store: DatasetStore, _selector: ForgetSelector) -> None:
        raise UnlearningError("the deployed model was trained on another dataset")

    selector = ForgetSelector(robot_ids=("robot-2",))
    for method, check, message in (("magic", None, "unknown method"), ("", refuse, "another dataset")):
        with pytest.raises(SafeRuleError, match=message):
            jobs.admit_new(fleet, selector, "ops", "compromised", method, True, check or (lambda *_: None))
    assert jobs.requests.ledger(fleet).entries() == [] and DatasetStore.open(fleet).quarantined_ids() == ()
    assert jobs.queue.jobs() == []
    admitted = jobs.admit_new(fleet, selector, "ops", "compromised", "", True, lambda *_: None)
    assert jobs.queue.jobs() == [admitted.job] and admitted.entry.requester == "ops"
    assert set(DatasetStore.open(fleet).quarantined_ids()) == set(admitted.entry.matched_episode_ids)


def test_a_restart_keeps_waiting_and_interrupted_jobs_and_settles_the_rest(jobs: ForgetJobs) -> None:
    fleet = jobs.requests.dataset_dir("")
    ledger = jobs.requests.ledger(fleet)
    waiting, interrupted, swap_cut, done, failed = (record(jobs, r) for r in
                                                    ("robot-0", "robot-1", "robot-2", "robot-0", "robot-1"))
    for rid in (waiting, interrupted, swap_cut, done, failed):
        jobs.admit(rid, "", swap_on_success=rid != done)
    for rid in (interrupted, swap_cut, done, failed):
        ledger.transition(rid, LedgerState.UNLEARNING)
    for rid in (swap_cut, done):
        ledger.transition(rid, LedgerState.UNLEARNED, artifact_version="v0002")
    ledger.transition(failed, LedgerState.FAILED, error="bad model")
    jobs.queue.add(QueuedJob("forget-gone", "elsewhere", "safe_rule", False, 1.0))

    found = {r.request_id: r for r in jobs.recover("resume", swaps=True)}
    assert {rid for rid, r in found.items() if r.kept} == {waiting, interrupted, swap_cut}
    assert found["forget-gone"].level == "error" and "dropping" in found["forget-gone"].message
    assert "swap was cut short" in found[swap_cut].message and "resuming" in found[interrupted].message
    assert [j.request_id for j in jobs.queue.jobs()] == [waiting, interrupted, swap_cut]
    assert jobs.unlearned_version(jobs.queue.jobs()[2]) == "v0002" and jobs.unlearned_version(job(waiting)) is None

    # without runners to swap, an unlearned job leaves; with on_interrupted=fail, an interrupted one fails
    found = {r.request_id: r for r in jobs.recover("fail", swaps=False)}
    assert [j.request_id for j in jobs.queue.jobs()] == [waiting]
    assert ledger.get(interrupted).state == LedgerState.FAILED and "interrupted" in (ledger.get(interrupted).error or "")
    assert not found[swap_cut].kept
    with pytest.raises(UnlearningError, match="on_interrupted 'maybe'"):
        jobs.recover("maybe", swaps=False)
