"""Starting an unlearning server (the real node and the real job, on the tiny model of
forget_fixtures) and talking to it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from builtin_interfaces.msg import Time

from saferule_core.data.ledger import ForgetLedger, LedgerEntry
from saferule_interfaces.action import Unlearn
from saferule_interfaces.srv import Forget
from tests.ros.forget_fixtures import ServerFiles
from tests.ros.ros_harness import REPO_ROOT, NodeProcess


@contextmanager
def server_process(files: ServerFiles, log: Path, robots: list[str] | None = None, long_jobs: bool = False,
                   env: dict[str, str] | None = None, **params: object) -> Iterator[NodeProcess]:
    """An unlearning server process (SIGINT at exit). `long_jobs`: a retraining runs until it is
    cancelled, stopped or killed (forget_fixtures.LONG_JOBS); `env`: extra environment variables."""
    params.setdefault("unlearn_config_file", files.jobs_file(long_jobs))
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "saferule_ros.unlearning_server", "--ros-args",
                                 *files.server_args(robots, **params)],
                                cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    handle = NodeProcess(proc, log)
    try:
        yield handle
    finally:
        handle.stop()


def forget_request(reason: str = "pytest: compromised robot", dataset: str = "", dry_run: bool = False,
                   window_start: Time | None = None, window_end: Time | None = None, requester: str = "pytest",
                   **lists: list[str]) -> Forget.Request:
    request = Forget.Request(dataset=dataset, reason=reason, requester=requester, dry_run=dry_run)
    for name, values in lists.items():
        setattr(request.selector, name, values)
    if window_start is not None:
        request.selector.window_start = window_start
    if window_end is not None:
        request.selector.window_end = window_end
    return request


def unlearn_goal(request_id: str = "", method: str = "finetune", swap: bool = False, requester: str = "pytest",
                 reason: str = "pytest goal", **lists: list[str]) -> Unlearn.Goal:
    """A goal naming `request_id`, or (with selector lists) new episodes, recorded with requester and reason."""
    goal = Unlearn.Goal(request_id=request_id, method=method, swap_on_success=swap, requester=requester, reason=reason)
    for name, values in lists.items():
        setattr(goal.selector, name, values)
    return goal


def ledger_entry(files: ServerFiles, request_id: str) -> LedgerEntry:
    return ForgetLedger(files.dataset_dir).get(request_id)


def ledger_entries(files: ServerFiles) -> list[LedgerEntry]:
    return ForgetLedger(files.dataset_dir).entries()
