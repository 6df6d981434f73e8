"""A forget request carried out end to end: the one home of the lifecycle that `saferule unlearn`
and the ROS unlearning_server both run.

    run_forget_job(paths, request_id, method) ->
      check (nothing changes on a refusal) -> ledger `unlearning` (durable before work starts)
      -> unlearn -> save the model -> export ONNX + signed publish (parent = registry latest)
      -> ledger `unlearned` -> with purge: delete the episodes, ledger `purged`

Refusals (an unknown or finished request, episodes already purged, an empty forget set, a forget
set that is the whole dataset, a model that does not match the dataset) raise UnlearningError
before the ledger or the registry is touched. Once the ledger says `unlearning`, any failure
(cancellation included) moves it to `failed` with the message, leaves the registry as it was and
is raised as UnlearningError. An interruption that is not an Exception (Ctrl-C, the process
dying) leaves the request in `unlearning`, from where a later job resumes it. A `failed` request
whose episodes had been quarantined is re-run the same way (ledger `failed` -> `unlearning`); one
that failed before its quarantine is refused (file a new request).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nacl.signing import SigningKey
from numpy.typing import NDArray

from saferule_core.algos.base import Learner
from saferule_core.artifacts.export import default_check_observations, publish_learner
from saferule_core.artifacts.lineage import CheckpointRecord, checkpoint_record
from saferule_core.artifacts.manifest import ArtifactManifest
from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.artifacts.signing import load_signing_key
from saferule_core.data.dataset import OfflineDataset
from saferule_core.data.forget_requests import check_startable
from saferule_core.data.ledger import ForgetLedger, LedgerEntry, LedgerState, purge_forgotten, request_forget
from saferule_core.data.selectors import ForgetSelector
from saferule_core.data.store import DatasetStore
from saferule_core.errors import LedgerError, SafeRuleError, UnlearningError
from saferule_core.unlearning.api import (
    UnlearnReport,
    check_forget_mask,
    check_learner_matches,
    check_spaces_match,
    unlearn,
)
from saferule_core.unlearning.config import UnlearnConfig
from saferule_core.unlearning.methods import get_method
from saferule_core.unlearning.models import load_model, save_model_dir
from saferule_core.unlearning.session import ProgressFn

CHECK_OBSERVATIONS = 256   # rows of real observations in the export's ONNX-vs-torch check


@dataclass
class JobPaths:
    dataset_dir: Path        # a DatasetStore directory (has ledger.jsonl)
    model_dir: Path          # the trained model currently deployed (algos checkpoint or SISA directory)
    registry_dir: Path       # PolicyRegistry root
    signing_key: Path        # Ed25519 signing key file (or the key directory holding it)
    work_dir: Path           # where unlearned model dirs are written (<work_dir>/<request_id>/)


@dataclass
class JobResult:
    request_id: str
    new_version: str
    parent_version: str | None
    model_dir: Path
    report: UnlearnReport | None        # None: the version was published before an interruption (resumed)
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]


@dataclass
class PreparedJob:
    """What a checked request resolves to: the data to unlearn from and its forget mask."""

    store: DatasetStore
    entry: LedgerEntry
    dataset: OfflineDataset
    forget_mask: NDArray[Any]


def check_forget_ids(store: DatasetStore, episode_ids: Sequence[str], request_id: str) -> tuple[set[str], set[str]]:
    """Refuse a forget set that is empty (nothing of it left) or the whole dataset, without loading
    any rows. Returns (the forget set present in the store, the other quarantined episodes)."""
    store.refresh()
    present = set(store.episode_ids())
    forget = {eid for eid in episode_ids if eid in present}
    if not forget:
        raise UnlearningError(f"request {request_id}: none of its {len(episode_ids)} episodes is in the dataset any "
                              "more (already forgotten); there is nothing to unlearn")
    others_quarantined = set(store.quarantined_ids()) - forget
    if not present - forget - others_quarantined:
        raise UnlearningError(f"request {request_id}: the forget set is the whole dataset ({len(forget)} episodes"
                              f"{' with the other quarantined ones' if others_quarantined else ''}); nothing would "
                              "remain to learn from; retire the policy instead")
    return forget, others_quarantined


def forget_split(store: DatasetStore, episode_ids: Sequence[str], request_id: str,
                 progress: bool = False) -> tuple[OfflineDataset, NDArray[Any]]:
    """The data a request is unlearned against and its forget mask.

    The request's own episodes (quarantined or not) are the forget set; every other quarantined
    episode belongs to another pending request and is left out of both parts.
    """
    forget, others_quarantined = check_forget_ids(store, episode_ids, request_id)
    everything = store.load(exclude_quarantined=False, progress=progress)
    ids = np.array(everything.episode_ids(), dtype=object)
    keep = ~np.isin(ids, np.array(sorted(others_quarantined), dtype=object))
    dataset = everything.subset_episodes(keep) if not keep.all() else everything
    mask = np.isin(np.array(dataset.episode_ids(), dtype=object), np.array(sorted(forget), dtype=object))
    return dataset, check_forget_mask(dataset, mask)


def check_model_header(model_dir: Path, store: DatasetStore) -> Learner:
    """Load the deployed model and refuse it unless its spaces and task match the dataset's."""
    learner = load_model(model_dir)
    manifest = store.manifest
    check_spaces_match(learner.info, manifest.obs_dim, manifest.act_dim, store.task,
                       f"the model in {model_dir}", f"the dataset {store.path}")
    return learner


def check_new_request(store: DatasetStore, selector: ForgetSelector, model_dir: Path, reason: str) -> list[str]:
    """Every check a new forget request meant for unlearning must pass before anything is recorded:
    a reason, a selector that matches episodes but not all the (unquarantined) data, and a deployed
    model whose spaces and task match the dataset. Returns the matched episode ids."""
    if not reason.strip():
        raise UnlearningError("a new forget request needs a reason (it is kept in the ledger)")
    ids = selector.match(store).episode_ids      # SelectorError when it matches nothing
    check_model_header(model_dir, store)
    check_forget_ids(store, ids, "(new)")
    return ids


def admit_new_request(store: DatasetStore, selector: ForgetSelector, model_dir: Path, requester: str, reason: str,
                      ledger: ForgetLedger | None = None) -> LedgerEntry:
    """Check a new forget request (check_new_request), then record and quarantine it: a refused
    request leaves the ledger and the dataset as they were."""
    check_new_request(store, selector, model_dir, reason)
    return request_forget(store, selector, requester=requester, reason=reason.strip(), ledger=ledger)


def prepare(paths: JobPaths, request_id: str, method: str) -> tuple[PreparedJob, Learner]:
    """Every check that can refuse a job, with no side effect."""
    get_method(method)
    store = DatasetStore.open(paths.dataset_dir)
    try:
        entry = ForgetLedger(store.path).get(request_id)
    except LedgerError as err:
        raise UnlearningError(str(err)) from err
    check_startable(entry)
    learner = check_model_header(paths.model_dir, store)
    dataset, mask = forget_split(store, entry.matched_episode_ids, request_id)
    check_learner_matches(learner, dataset)
    return PreparedJob(store, entry, dataset, mask), learner


def run_forget_job(paths: JobPaths, request_id: str, method: str = "safe_rule", config: UnlearnConfig | None = None,
                   progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None,
                   purge: bool = False) -> JobResult:
    """Carry out forget request `request_id` with `method`; see the module docstring."""
    signing_key = load_signing_key(paths.signing_key)  # a missing key refuses before anything changes
    registry = PolicyRegistry(paths.registry_dir)
    registry.latest()                                  # a broken registry, too
    job, learner = prepare(paths, request_id, method)
    ledger = ForgetLedger(job.store.path)
    entry = job.entry
    try:
        if entry.state == LedgerState.REQUESTED:
            job.store.quarantine(list(entry.matched_episode_ids))
            entry = ledger.transition(request_id, LedgerState.QUARANTINED)
        if entry.state == LedgerState.FAILED:
            entry = ledger.transition(request_id, LedgerState.UNLEARNING,
                                      note=f"re-run after a failure: {entry.error or '?'}"[:2000])
        elif entry.state != LedgerState.UNLEARNING:
            entry = ledger.transition(request_id, LedgerState.UNLEARNING)
    except SafeRuleError as err:
        raise UnlearningError(f"request {request_id}: cannot start: {err}") from err
    published = registry.version_for_request(request_id)
    if published is not None:
        # Interrupted between publishing and recording: record that version, never a second one.
        result = _record_published(registry, ledger, request_id, published)
    else:
        try:
            result = _unlearn_and_publish(paths, job, learner, registry, signing_key, ledger, method, config,
                                          progress, should_stop)
        except Exception as err:
            message = str(err) if isinstance(err, SafeRuleError) else f"internal error: {type(err).__name__}: {err}"
            ledger.transition(request_id, LedgerState.FAILED, error=message[:2000] or type(err).__name__)
            if isinstance(err, UnlearningError):
                raise
            raise UnlearningError(f"request {request_id} failed: {message}") from err
    if purge:
        try:
            purge_forgotten(job.store, request_id, ledger=ledger)
        except SafeRuleError as err:
            raise UnlearningError(f"request {request_id}: unlearned as {result.new_version}, but the purge "
                                  f"failed: {err}") from err
    return result


def _unlearn_and_publish(paths: JobPaths, job: PreparedJob, learner: Learner, registry: PolicyRegistry,
                         signing_key: SigningKey, ledger: ForgetLedger, method: str, config: UnlearnConfig | None,
                         progress: ProgressFn | None, should_stop: Callable[[], bool] | None) -> JobResult:
    request_id = job.entry.request_id
    new_learner, report = unlearn(learner, job.dataset, job.forget_mask, method, config, progress, should_stop)
    model_dir = save_model_dir(Path(paths.work_dir) / request_id, new_learner)
    if progress is not None:
        progress("publish", 1.0, {})
    metrics_after = {**report.offline_after, **report.details, "wall_time_s": report.wall_time_s,
                     "updates": float(report.updates), "stats_rebased": float(report.stats_rebased)}
    parent = registry.latest()
    manifest = _publish(new_learner, job.dataset, job.forget_mask, registry, signing_key, parent, request_id,
                        method, metrics_after, checkpoint_record(model_dir))
    ledger.transition(request_id, LedgerState.UNLEARNED, artifact_version=manifest.version,
                      metrics=_finite(metrics_after))
    return JobResult(request_id=request_id, new_version=manifest.version, parent_version=parent, model_dir=model_dir,
                     report=report, metrics_before=dict(report.offline_before), metrics_after=metrics_after)


def _record_published(registry: PolicyRegistry, ledger: ForgetLedger, request_id: str, version: str) -> JobResult:
    manifest = registry.manifest(version)
    metrics = _finite(dict(manifest.metrics))
    ledger.transition(request_id, LedgerState.UNLEARNED, artifact_version=version, metrics=metrics,
                      note="published before an interruption; recorded when the job resumed")
    model_dir = registry.checkpoint_of(version)
    return JobResult(request_id=request_id, new_version=version, parent_version=manifest.parent_version,
                     model_dir=model_dir if model_dir is not None else Path(), report=None, metrics_before={},
                     metrics_after=metrics)


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if np.isfinite(v)}


def _publish(learner: Learner, dataset: OfflineDataset, forget_mask: NDArray[Any], registry: PolicyRegistry,
             signing_key: SigningKey, parent: str | None, request_id: str, method: str,
             metrics: dict[str, float], checkpoint: CheckpointRecord) -> ArtifactManifest:
    """Export the learner's deployable policy, check it on real and synthetic observations, publish it."""
    info = learner.info
    retained = dataset.observations[~dataset.transition_mask_for_episodes(forget_mask)]
    rows = np.random.default_rng(0).choice(retained.shape[0], min(CHECK_OBSERVATIONS, retained.shape[0]),
                                           replace=False)
    real = retained[np.sort(rows)]
    synthetic = default_check_observations(info.obs_dim, retained.mean(axis=0), retained.std(axis=0) + 1e-3)
    _, manifest = publish_learner(learner, registry, signing_key, method=method, parent=parent,
                                  forget_request_id=request_id, metrics=_finite(metrics),
                                  check_batch=np.concatenate([real, synthetic]).astype(np.float32),
                                  checkpoint=checkpoint)
    return manifest
