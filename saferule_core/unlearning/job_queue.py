"""The durable queue of unlearning jobs: jobs in order (waiting or running) and the model that the
deployed policy came from (the unlearning server's state file; `forget_jobs` decides what enters it).

One JSON file, rewritten atomically on every change, so that queued requests survive a restart
(or a crash) of the server. A job stays in the file while it runs and leaves it only once the
ledger holds its outcome; a job found in the file at start-up was waiting, or was interrupted.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from saferule_core.errors import SafeRuleError
from saferule_core.io_utils import atomic_write_json

STATE_FORMAT = "saferule-unlearning-server-state"
STATE_VERSION = 1


class StateFileError(SafeRuleError):
    """The server's state file is unreadable or malformed."""


@dataclass(frozen=True)
class QueuedJob:
    request_id: str
    dataset: str              # dataset directory, relative to the data root
    method: str
    swap_on_success: bool
    queued_at: float          # POSIX seconds
    goal_id: str = ""         # the Unlearn goal that asked for it (informational)


class JobQueue:
    """Jobs in arrival order plus the deployed model directory, persisted in `path`. Thread-safe."""

    def __init__(self, path: Path, base_model_dir: str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._jobs: list[QueuedJob] = []
        self._running: str | None = None
        self.base_model_dir = base_model_dir
        self._current_model_dir = base_model_dir
        if self.path.exists():
            self._load()
        self._save()

    def _load(self) -> None:
        try:
            state = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StateFileError(f"cannot read the server state {self.path}: {err}; move it away to start "
                                 f"with an empty queue") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise StateFileError(f"{self.path} is not a {STATE_FORMAT} file of version {STATE_VERSION}")
        known = {f.name for f in fields(QueuedJob)}
        try:
            jobs = [QueuedJob(**{k: v for k, v in raw.items() if k in known}) for raw in state["jobs"]]
            base, current = str(state["base_model_dir"]), str(state["current_model_dir"])
        except (KeyError, TypeError, AttributeError) as err:
            raise StateFileError(f"{self.path}: malformed job list or model entry ({err})") from None
        self._jobs = jobs
        # A new base model_dir (the operator deployed another model) restarts the model lineage.
        if base == self.base_model_dir:
            self._current_model_dir = current

    def _save(self) -> None:
        atomic_write_json(self.path, {
            "format": STATE_FORMAT, "version": STATE_VERSION, "base_model_dir": self.base_model_dir,
            "current_model_dir": self._current_model_dir, "jobs": [asdict(job) for job in self._jobs],
        })

    # ----- queries ---------------------------------------------------------------------------
    def jobs(self) -> list[QueuedJob]:
        with self._lock:
            return list(self._jobs)

    def running(self) -> str | None:
        with self._lock:
            return self._running

    def position(self, request_id: str) -> int | None:
        """0 for the head of the queue (running or next), None when not queued."""
        with self._lock:
            for index, job in enumerate(self._jobs):
                if job.request_id == request_id:
                    return index
            return None

    @property
    def current_model_dir(self) -> str:
        with self._lock:
            return self._current_model_dir

    # ----- changes (each one durable before it returns) ---------------------------------------
    def add(self, job: QueuedJob) -> int:
        """Append a job; returns its position. Refuses a request already queued."""
        with self._lock:
            if any(j.request_id == job.request_id for j in self._jobs):
                raise StateFileError(f"request {job.request_id} is already queued")
            self._jobs.append(job)
            self._save()
            return len(self._jobs) - 1

    def take_next(self) -> QueuedJob | None:
        """The first job, now marked running (it stays in the file until `finish`)."""
        with self._lock:
            if self._running is not None or not self._jobs:
                return None
            self._running = self._jobs[0].request_id
            return self._jobs[0]

    def finish(self, request_id: str, model_dir: str | None = None) -> None:
        """Remove a job whose outcome the ledger now holds; record the new deployed model, if any."""
        with self._lock:
            self._jobs = [j for j in self._jobs if j.request_id != request_id]
            if self._running == request_id:
                self._running = None
            if model_dir is not None:
                self._current_model_dir = model_dir
            self._save()

    def release(self, request_id: str) -> None:
        """Stop running a job but keep it queued (interrupted by a shutdown: resumed at the next start)."""
        with self._lock:
            if self._running == request_id:
                self._running = None

    def drop_waiting(self, request_id: str) -> bool:
        """Remove a job that has not started; False when it is running or not queued."""
        with self._lock:
            if self._running == request_id or not any(j.request_id == request_id for j in self._jobs):
                return False
            self._jobs = [j for j in self._jobs if j.request_id != request_id]
            self._save()
            return True

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {"running": self._running, "jobs": [asdict(j) for j in self._jobs],
                    "current_model_dir": self._current_model_dir}
