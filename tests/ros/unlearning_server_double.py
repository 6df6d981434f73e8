"""The real unlearning_server node with a stand-in job function (an edge stand-in for
`saferule_core.unlearning.job.run_forget_job`, so the ROS behaviour can be tested quickly).

The stand-in keeps the job contract's observable effects: the ledger moves quarantined ->
unlearning -> unlearned (or failed, on an error or a cancel), a new signed artifact is published
to the registry (a tiny ONNX policy, parent = the latest), the unlearned "model" directory is
written under work_dir/<request_id>/, progress goes through named stages, and should_stop() is
polled; an exception ends it as `failed`, anything else (the server's ServerStopping) leaves the
request `unlearning`, as the real job does. What it does not do is train anything. Stage length:
$SAFERULE_DOUBLE_STAGE_S seconds (default 0.05); method "sisa" fails in its second stage (a
scripted job error).

    python -m tests.ros.unlearning_server_double --ros-args <unlearning_server parameters>
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.artifacts.signing import load_signing_key
from saferule_core.data.forget_requests import check_startable
from saferule_core.data.ledger import ForgetLedger, LedgerState, purge_forgotten
from saferule_core.data.selectors import ForgetSelector
from saferule_core.data.store import DatasetStore
from saferule_core.errors import UnlearningError
from saferule_core.unlearning.methods import METHOD_NAMES
from saferule_ros.unlearning_server import JobApi, main
from tests.ros.policy_artifacts import publish, random_policy

STAGES = ("loading", "suppress", "repair", "select", "export", "publish")


def stand_in_job(paths: Any, request_id: str, method: str = "safe_rule", config: Any = None,
                 progress: Callable[[str, float, dict[str, float]], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, purge: bool = False) -> SimpleNamespace:
    stage_s = float(os.environ.get("SAFERULE_DOUBLE_STAGE_S", "0.05"))
    ledger = ForgetLedger(paths.dataset_dir)
    entry = ledger.get(request_id)
    check_startable(entry)
    if entry.state == LedgerState.FAILED:           # re-run, as the real job does
        ledger.transition(request_id, LedgerState.UNLEARNING, note=f"re-run after a failure: {entry.error or '?'}")
    elif entry.state != LedgerState.UNLEARNING:
        ledger.transition(request_id, LedgerState.UNLEARNING)
    try:
        for index, stage in enumerate(STAGES):
            if should_stop is not None and should_stop():
                raise UnlearningError(f"unlearning of {request_id} cancelled during {stage}")
            if method == "sisa" and index == 1:
                raise UnlearningError("scripted failure of the stand-in job")
            if progress is not None:
                progress(stage, index / len(STAGES), {"stage_index": float(index)})
            deadline = time.monotonic() + stage_s
            while time.monotonic() < deadline:
                if should_stop is not None and should_stop():
                    raise UnlearningError(f"unlearning of {request_id} cancelled during {stage}")
                time.sleep(0.02)
        model_dir = Path(paths.work_dir) / request_id
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "parent_model.txt").write_text(str(paths.model_dir))
        registry = PolicyRegistry(paths.registry_dir)
        parent = registry.latest()
        version = publish(registry, random_policy(100 + len(registry.versions())), load_signing_key(paths.signing_key),
                          parent=parent)
        ledger.transition(request_id, LedgerState.UNLEARNED, artifact_version=version)
        if purge:
            purge_forgotten(DatasetStore.open(paths.dataset_dir), request_id, ledger)
    except Exception as err:
        ledger.transition(request_id, LedgerState.FAILED, error=str(err))
        raise UnlearningError(str(err)) from err
    if progress is not None:
        progress("publish", 1.0, {})
    return SimpleNamespace(request_id=request_id, new_version=version, parent_version=parent, model_dir=model_dir,
                           report=None,
                           metrics_before={"normalized_cost": 1.5, "forget_episodes": float(entry.matched_episodes)},
                           metrics_after={"normalized_cost": 0.4})


def stand_in_check_new(store: DatasetStore, selector: ForgetSelector, model_dir: Path, reason: str) -> list[str]:
    """The real check's selector part; the stand-in has no model to check against the dataset."""
    if not reason.strip():
        raise UnlearningError("a new forget request needs a reason (it is kept in the ledger)")
    mask = selector.select(store)
    ids = [ep.episode_id for ep, matched in zip(store.episodes, mask) if matched]
    if set(ids) | set(store.quarantined_ids()) >= set(store.episode_ids()):
        raise UnlearningError("the forget set is the whole dataset (with the quarantined episodes)")
    return ids


STAND_IN_API = JobApi(run=stand_in_job, make_paths=SimpleNamespace, methods=METHOD_NAMES, make_config=dict,
                      check_startable=check_startable, check_new_request=stand_in_check_new)

if __name__ == "__main__":
    raise SystemExit(main(sys.argv, job_api=STAND_IN_API))
