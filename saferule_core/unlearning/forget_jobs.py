"""Unlearning jobs over a data root's forget requests: which jobs enter the queue, and what a restart
does with the jobs it finds. One set of rules for every front end (the unlearning server is one).

`ForgetJobs.admit` queues a job for a recorded request; `admit_new` records a new request and
queues its job in one step, and a request refused on the way leaves nothing behind (no ledger entry,
nothing quarantined). `recover` settles the jobs a stopped or crashed server left in its state
file against their ledgers. No torch here: the one check that needs the model (`check_new`) is
passed in by the caller.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from saferule_core.data.forget_requests import Admission, ForgetRequests, check_startable, resolve_dataset_dir
from saferule_core.data.ledger import LedgerEntry, LedgerState
from saferule_core.data.selectors import ForgetSelector
from saferule_core.errors import SafeRuleError, UnlearningError
from saferule_core.limits import MAX_METHOD_CHARS, check_chars
from saferule_core.unlearning.job_queue import JobQueue, QueuedJob
from saferule_core.unlearning.methods import METHOD_NAMES

InterruptedPolicy = Literal["resume", "fail"]
INTERRUPTED_POLICIES: tuple[InterruptedPolicy, ...] = ("resume", "fail")
DONE_STATES = (LedgerState.UNLEARNED, LedgerState.PURGED)


@dataclass(frozen=True)
class Admitted:
    job: QueuedJob
    entry: LedgerEntry
    dataset_dir: Path


@dataclass(frozen=True)
class Recovered:
    """What start-up did with one job found in the queue."""

    request_id: str
    kept: bool                                # still queued (it runs, resumes or swaps)
    level: Literal["info", "warning", "error"]
    message: str


class ForgetJobs:
    def __init__(self, requests: ForgetRequests, queue: JobQueue, default_method: str = "safe_rule") -> None:
        if default_method not in METHOD_NAMES:
            raise UnlearningError(f"default_method {default_method!r}: expected one of {', '.join(METHOD_NAMES)}")
        self.requests = requests
        self.queue = queue
        self.default_method = default_method

    def method(self, name: str) -> str:
        """The method a job runs: `name`, or the default when blank; one of METHOD_NAMES."""
        check_chars("method", name, MAX_METHOD_CHARS, UnlearningError)
        method = name.strip() or self.default_method
        if method not in METHOD_NAMES:
            raise UnlearningError(f"unknown method {method!r}; methods: {', '.join(METHOD_NAMES)}")
        return method

    # ----- admission ---------------------------------------------------------------------------
    def admit(self, request_id: str, method: str, swap_on_success: bool, goal_id: str = "") -> Admitted:
        """Queue a job for a recorded request that can be unlearned and is not queued already."""
        method = self.method(method)
        dataset_dir, entry = self.requests.find(request_id.strip())
        if self.queue.running() == entry.request_id:
            raise UnlearningError(f"request {entry.request_id} is already being unlearned")
        position = self.queue.position(entry.request_id)
        if position is not None:
            raise UnlearningError(f"request {entry.request_id} is already queued ({position} jobs ahead of it)")
        check_startable(entry)
        return self._queue(dataset_dir, entry, method, swap_on_success, goal_id)

    def admit_new(self, dataset_dir: Path, selector: ForgetSelector, requester: str, reason: str, method: str,
                  swap_on_success: bool, check_new: Admission, goal_id: str = "") -> Admitted:
        """Record a new request and queue its job; `check_new` (store, selector) raises to refuse it
        before anything is recorded (a model that cannot be unlearned on that data, say)."""
        method = self.method(method)
        entry = self.requests.record(dataset_dir, selector, requester, reason, check_new)
        return self._queue(dataset_dir, entry, method, swap_on_success, goal_id)

    def _queue(self, dataset_dir: Path, entry: LedgerEntry, method: str, swap_on_success: bool,
               goal_id: str) -> Admitted:
        job = QueuedJob(entry.request_id, self.requests.relative(dataset_dir), method, swap_on_success, time.time(),
                        goal_id)
        self.queue.add(job)
        return Admitted(job, entry, dataset_dir)

    # ----- what a job finds --------------------------------------------------------------------
    def unlearned_version(self, job: QueuedJob) -> str | None:
        """The version a queued job's request was already unlearned as (a restart cut its swap
        short), else None."""
        try:
            entry = self.requests.ledger(self.dataset_dir(job)).get(job.request_id)
        except SafeRuleError:
            return None   # the job itself reports what is wrong
        return entry.artifact_version if entry.state in DONE_STATES and entry.artifact_version else None

    def dataset_dir(self, job: QueuedJob) -> Path:
        return resolve_dataset_dir(self.requests.data_root, job.dataset)

    # ----- start-up ----------------------------------------------------------------------------
    def recover(self, on_interrupted: str, swaps: bool) -> list[Recovered]:
        """Settle every job found in the queue at start-up: waiting ones stay; a job interrupted
        mid-run stays (resume) or is marked failed (fail); one whose request was unlearned stays
        only when `swaps` and its swap was asked for (the swap was cut short); the rest leave."""
        if on_interrupted not in INTERRUPTED_POLICIES:
            raise UnlearningError(f"on_interrupted {on_interrupted!r}: expected one of "
                                  f"{', '.join(INTERRUPTED_POLICIES)}")
        policy: InterruptedPolicy = "resume" if on_interrupted == "resume" else "fail"
        return [self._recover(job, policy, swaps) for job in self.queue.jobs()]

    def _recover(self, job: QueuedJob, on_interrupted: InterruptedPolicy, swaps: bool) -> Recovered:
        rid = job.request_id
        try:
            ledger = self.requests.ledger(self.dataset_dir(job))
            entry = ledger.get(rid)
        except SafeRuleError as err:
            return self._drop(job, "error", f"dropping queued {rid}: {err}")
        if entry.state in DONE_STATES:
            if job.swap_on_success and swaps:
                return Recovered(rid, True, "warning", f"{rid} was unlearned as {entry.artifact_version}, but its "
                                                       f"swap was cut short; swapping now")
            return self._drop(job, "info", f"{rid} already {entry.state.value}; removed from the queue")
        if entry.state == LedgerState.FAILED:
            return self._drop(job, "warning", f"{rid} failed before the restart ({entry.error}); removed from "
                                              f"the queue")
        if entry.state == LedgerState.UNLEARNING:
            if on_interrupted == "resume":
                return Recovered(rid, True, "warning", f"{rid} was interrupted mid-job; resuming it")
            ledger.transition(rid, LedgerState.FAILED, error="interrupted: the unlearning server stopped during "
                                                             "the job; the previous policy stays active")
            return self._drop(job, "warning", f"{rid} was interrupted; marked failed (on_interrupted: fail)")
        return Recovered(rid, True, "info", f"{rid} is still queued ({entry.state.value})")

    def _drop(self, job: QueuedJob, level: Literal["info", "warning", "error"], message: str) -> Recovered:
        self.queue.finish(job.request_id)
        return Recovered(job.request_id, False, level, message)
