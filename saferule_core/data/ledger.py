"""The forget ledger: an append-only JSON-lines record of every forget request and its progress.

Lifecycle of a request (a state change appends one line; old lines are never rewritten):

    requested -> quarantined -> unlearning -> unlearned -> purged
    quarantined -> purged          (data-only forget: no policy to repair)
    any state but purged -> failed (data stays quarantined, the previous policy stays active)
    failed -> unlearning           (a re-run, only if the request had reached quarantined)

A request that failed before its episodes were quarantined stays failed for good (file a new one);
one that failed later still has its episodes quarantined, so its unlearning can be re-run. The
rule depends on the request's history, so ask `LedgerEntry.next_states`, not the static table.

Each append is flushed and fsync'ed before it returns, so an acknowledged state change survives a
crash. A crash mid-append leaves a torn last line without its newline: readers ignore it and report
it (`torn_tail`); the next append cuts it off first, since it was never acknowledged.

A `ForgetLedger` keeps what it has folded and, on each read or append, reads only the bytes added
since (by any process): an append costs the same however long the ledger is, once the instance has
read it (the unlearning server keeps one per dataset). A file that was replaced or shortened is
read again from the start; an edit of earlier lines (never made by the ledger) is seen by a new
instance, which folds the whole file.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import threading
import time
import uuid
from collections import ChainMap
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from saferule_core.data.selectors import ForgetSelector
from saferule_core.data.store import DatasetStore, DeletionReport
from saferule_core.errors import LedgerError, SafeRuleError
from saferule_core.io_utils import fsync_dir
from saferule_core.limits import check_request_text

LEDGER_FILE = "ledger.jsonl"


class LedgerState(str, Enum):
    REQUESTED = "requested"
    QUARANTINED = "quarantined"
    UNLEARNING = "unlearning"
    UNLEARNED = "unlearned"
    PURGED = "purged"
    FAILED = "failed"


ALLOWED_TRANSITIONS: dict[LedgerState, frozenset[LedgerState]] = {
    LedgerState.REQUESTED: frozenset({LedgerState.QUARANTINED, LedgerState.FAILED}),
    LedgerState.QUARANTINED: frozenset({LedgerState.UNLEARNING, LedgerState.PURGED, LedgerState.FAILED}),
    LedgerState.UNLEARNING: frozenset({LedgerState.UNLEARNED, LedgerState.FAILED}),
    LedgerState.UNLEARNED: frozenset({LedgerState.PURGED, LedgerState.FAILED}),
    LedgerState.PURGED: frozenset(),
    LedgerState.FAILED: frozenset({LedgerState.UNLEARNING}),   # only when resumable; see LedgerEntry.next_states
}
# Final whatever the history; a failed request is final too unless it is resumable.
TERMINAL_STATES: frozenset[LedgerState] = frozenset({LedgerState.PURGED})
REQUIRED_FIELDS: dict[LedgerState, tuple[str, ...]] = {
    LedgerState.UNLEARNED: ("artifact_version",),
    LedgerState.PURGED: ("dataset_hash_after",),
    LedgerState.FAILED: ("error",),
}
# Fields a state change may carry, with their JSON types.
TRANSITION_FIELDS: dict[str, type] = {
    "artifact_version": str, "dataset_hash_after": str, "error": str, "note": str, "metrics": dict,
}


@dataclass(frozen=True)
class LedgerEntry:
    """One request, folded over all its lines: the latest state and everything recorded so far."""

    request_id: str
    requester: str
    reason: str
    created: float
    selector: dict[str, Any]
    matched_episode_ids: tuple[str, ...]
    matched_episodes: int
    matched_transitions: int
    dataset_hash_before: str
    state: LedgerState = LedgerState.REQUESTED
    updated: float = 0.0
    artifact_version: str | None = None
    dataset_hash_after: str | None = None
    error: str | None = None
    note: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: tuple[tuple[str, float], ...] = ()

    @property
    def resumable(self) -> bool:
        """Failed after its episodes were quarantined, so its unlearning can be re-run."""
        return self.state is LedgerState.FAILED and any(
            state == LedgerState.QUARANTINED.value for state, _ in self.history)

    @property
    def next_states(self) -> frozenset[LedgerState]:
        """The states this request may move to next, given its state and history."""
        if self.state is LedgerState.FAILED and not self.resumable:
            return frozenset()
        return ALLOWED_TRANSITIONS[self.state]

    @property
    def pending(self) -> bool:
        """Not settled yet: neither purged nor failed for good (a resumable failure is pending)."""
        return bool(self.next_states)

    def forget_selector(self) -> ForgetSelector:
        return ForgetSelector.from_dict(self.selector)


@dataclass
class _Folded:
    """The intact prefix of the ledger file that an instance has folded so far."""

    identity: tuple[int, int] = (0, 0)     # st_dev, st_ino of the file it was read from
    length: int = 0                        # bytes of complete lines
    lines: int = 0
    entries: dict[str, LedgerEntry] = field(default_factory=dict)


class ForgetLedger:
    """The ledger at `path`: a `*.jsonl` file, or else a dataset directory holding `ledger.jsonl`.

    One instance may be shared by threads.
    """

    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        self.path = path if path.suffix == ".jsonl" else path / LEDGER_FILE
        self.torn_tail: str | None = None   # the ignored partial last line of the latest read, if any
        self._folded = _Folded()
        self._fold_lock = threading.Lock()

    # ----- reading ---------------------------------------------------------------------------
    def entries(self) -> list[LedgerEntry]:
        """Every request in the order it was recorded, each at its latest state."""
        with self._fold_lock:
            if not self.path.exists():
                self.torn_tail = None
                self._folded = _Folded()
                return []
            with self._locked(exclusive=False) as fd:
                folded, _ = self._catch_up(fd)
            return list(folded.entries.values())

    def get(self, request_id: str) -> LedgerEntry:
        for entry in self.entries():
            if entry.request_id == request_id:
                return entry
        raise LedgerError(f"no forget request {request_id!r} in {self.path}")

    def pending(self) -> list[LedgerEntry]:
        """Requests not yet purged or failed for good (resumable failures included)."""
        return [entry for entry in self.entries() if entry.pending]

    def summary(self) -> dict[str, int]:
        """Number of requests per state (states with none left out)."""
        counts: dict[str, int] = {}
        for entry in self.entries():
            counts[entry.state.value] = counts.get(entry.state.value, 0) + 1
        return counts

    # ----- appending -------------------------------------------------------------------------
    def record_request(self, selector: ForgetSelector, matched_episode_ids: Sequence[str], matched_transitions: int,
                       dataset_hash_before: str, requester: str, reason: str, request_id: str | None = None,
                       created: float | None = None) -> LedgerEntry:
        """Append a new request in state `requested` with its matched episodes frozen in."""
        if not isinstance(selector, ForgetSelector):
            raise LedgerError(f"selector must be a ForgetSelector, got {type(selector).__name__}")
        if not requester.strip() or not reason.strip():
            raise LedgerError("a forget request needs a non-empty requester and reason")
        check_request_text(requester, reason, LedgerError)
        ids = [str(e) for e in matched_episode_ids]
        if not ids:
            raise LedgerError("a forget request must match at least one episode")
        if len(set(ids)) != len(ids):
            raise LedgerError("matched episode ids contain duplicates")
        if int(matched_transitions) < len(ids):
            raise LedgerError(f"{len(ids)} episodes cannot hold only {matched_transitions} transitions")
        now = time.time() if created is None else float(created)
        event = {
            "event": "request", "request_id": request_id or f"forget-{uuid.uuid4().hex[:16]}",
            "state": LedgerState.REQUESTED.value, "time": now, "requester": requester, "reason": reason,
            "created": now, "selector": selector.to_dict(), "matched_episode_ids": ids,
            "matched_episodes": len(ids), "matched_transitions": int(matched_transitions),
            "dataset_hash_before": dataset_hash_before,
        }
        return self._append(event)

    def transition(self, request_id: str, new_state: LedgerState | str, **fields: Any) -> LedgerEntry:
        """Append a state change; refuse it unless the lifecycle allows it and its fields are complete."""
        try:
            state = LedgerState(new_state)
        except ValueError as err:
            raise LedgerError(f"unknown ledger state {new_state!r}; states: "
                              f"{', '.join(s.value for s in LedgerState)}") from err
        unknown = sorted(set(fields) - set(TRANSITION_FIELDS))
        if unknown:
            raise LedgerError(f"unknown ledger fields {', '.join(unknown)} (known: {', '.join(TRANSITION_FIELDS)})")
        for name, value in fields.items():
            if not isinstance(value, TRANSITION_FIELDS[name]):
                raise LedgerError(f"ledger field {name} must be {TRANSITION_FIELDS[name].__name__}, "
                                  f"got {type(value).__name__}")
        missing = [name for name in REQUIRED_FIELDS.get(state, ()) if not fields.get(name)]
        if missing:
            raise LedgerError(f"moving to {state.value} needs {', '.join(missing)}")
        if "metrics" in fields:
            metrics = fields["metrics"]
            if not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                       and math.isfinite(v) for k, v in metrics.items()):
                raise LedgerError("metrics must map names to finite numbers")
            fields["metrics"] = {k: float(v) for k, v in metrics.items()}
        event = {"event": "transition", "request_id": request_id, "state": state.value, "time": time.time(), **fields}
        return self._append(event)

    def _append(self, event: dict[str, Any]) -> LedgerEntry:
        line = (json.dumps(event, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._fold_lock, self._locked(exclusive=True) as fd:
            folded, torn = self._catch_up(fd)
            _check_event(folded.entries, event)
            if torn is not None:
                os.ftruncate(fd, folded.length)
            written = 0
            while written < len(line):
                written += os.pwrite(fd, line[written:], folded.length + written)
            os.fsync(fd)
            self._fold_in(folded, line)
        if created:
            fsync_dir(self.path.parent)
        return folded.entries[event["request_id"]]

    def _catch_up(self, fd: int) -> tuple[_Folded, str | None]:
        """Fold what was appended since this instance last read the file (the whole file the first
        time, or when it was replaced or shortened); the torn last line, if any, is left out and
        reported. The caller holds `_fold_lock` and the file lock."""
        info = os.fstat(fd)
        folded = self._folded
        identity = (info.st_dev, info.st_ino)
        if (identity != folded.identity or info.st_size < folded.length
                or (folded.length and os.pread(fd, 1, folded.length - 1) != b"\n")):
            folded = self._folded = _Folded(identity)
        tail = _read_from(fd, folded.length)
        intact = tail.rfind(b"\n") + 1
        self._fold_in(folded, tail[:intact])
        self.torn_tail = tail[intact:].decode("utf-8", errors="replace") if intact < len(tail) else None
        return folded, self.torn_tail

    def _fold_in(self, folded: _Folded, complete_lines: bytes) -> None:
        """Fold complete lines that follow `folded` in the file; all of them or, on an error, none."""
        changes = _fold_lines(complete_lines, self.path, folded.entries, folded.lines)
        folded.entries.update(changes)
        folded.length += len(complete_lines)
        folded.lines += complete_lines.count(b"\n")

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[int]:
        flags = os.O_RDWR | os.O_CREAT if exclusive else os.O_RDONLY
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as err:
            if err.errno == errno.ENOENT:
                raise LedgerError(f"{self.path}: no such ledger directory") from err
            raise LedgerError(f"cannot open ledger {self.path}: {err.strerror}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield fd
        finally:
            os.close(fd)


# ----- parsing and folding ---------------------------------------------------------------------

def _read_from(fd: int, offset: int) -> bytes:
    chunks = []
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _fold_lines(data: bytes, source: Path, base: dict[str, LedgerEntry], lines_before: int) -> dict[str, LedgerEntry]:
    """The entries that complete lines `data` (following `lines_before` lines folded into `base`)
    add or change; `base` itself is left as it is."""
    changes: dict[str, LedgerEntry] = {}
    entries: MutableMapping[str, LedgerEntry] = ChainMap(changes, base)
    for number, raw in enumerate(data.splitlines(), start=lines_before + 1):
        if not raw.strip():
            continue
        try:
            event = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LedgerError(f"{source}: line {number} is not valid JSON ({err})") from err
        try:
            _check_event(entries, event)
            _apply(entries, event)
        except LedgerError as err:
            raise LedgerError(f"{source}: line {number}: {err}") from err
    return changes


def _check_event(entries: MutableMapping[str, LedgerEntry], event: Any) -> None:
    if not isinstance(event, dict) or event.get("event") not in ("request", "transition"):
        raise LedgerError("not a ledger event")
    request_id = event.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise LedgerError("ledger event without a request id")
    if event["event"] == "request":
        if request_id in entries:
            raise LedgerError(f"forget request {request_id!r} already exists")
        return
    if request_id not in entries:
        raise LedgerError(f"no forget request {request_id!r}")
    entry = entries[request_id]
    try:
        wanted = LedgerState(event.get("state"))
    except ValueError as err:
        raise LedgerError(f"unknown ledger state {event.get('state')!r}") from err
    allowed_next = entry.next_states
    if wanted not in allowed_next:
        if allowed_next:
            allowed = ", ".join(sorted(s.value for s in allowed_next))
        elif entry.state is LedgerState.FAILED:
            allowed = "none (it failed before its episodes were quarantined: final state)"
        else:
            allowed = "none (final state)"
        raise LedgerError(f"request {request_id} is {entry.state.value}; it cannot become {wanted.value} "
                          f"(allowed next: {allowed})")


def _apply(entries: MutableMapping[str, LedgerEntry], event: dict[str, Any]) -> None:
    request_id = event["request_id"]
    when = float(event.get("time", 0.0))
    if event["event"] == "request":
        try:
            entries[request_id] = LedgerEntry(
                request_id=request_id, requester=str(event["requester"]), reason=str(event["reason"]),
                created=float(event["created"]), selector=dict(event["selector"]),
                matched_episode_ids=tuple(event["matched_episode_ids"]),
                matched_episodes=int(event["matched_episodes"]), matched_transitions=int(event["matched_transitions"]),
                dataset_hash_before=str(event["dataset_hash_before"]), state=LedgerState.REQUESTED, updated=when,
                history=((LedgerState.REQUESTED.value, when),),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise LedgerError(f"malformed request record ({err})") from err
        return
    entry = entries[request_id]
    state = LedgerState(event["state"])
    changes = {name: event[name] for name in TRANSITION_FIELDS if name in event}
    if entry.state is LedgerState.FAILED and "error" not in changes:
        changes["error"] = None   # a resumed request is no longer failed; the error stays in the file
    entries[request_id] = replace(entry, state=state, updated=when, history=entry.history + ((state.value, when),),
                                  **changes)


# ----- the forget workflow shared by the CLI and the unlearning server -------------------------

def request_forget(store: DatasetStore, selector: ForgetSelector, requester: str, reason: str,
                   ledger: ForgetLedger | None = None) -> LedgerEntry:
    """Record a forget request for what `selector` matches in `store`, then quarantine it.

    The request is durable before the quarantine starts; the entry returned is `quarantined`.
    """
    ledger = ledger or ForgetLedger(store.path)
    found = selector.match(store)
    entry = ledger.record_request(selector, found.episode_ids, found.transitions, store.dataset_hash,
                                  requester=requester, reason=reason)
    try:
        store.quarantine(found.episode_ids)
    except SafeRuleError as err:
        ledger.transition(entry.request_id, LedgerState.FAILED, error=f"quarantine failed: {err}")
        raise
    return ledger.transition(entry.request_id, LedgerState.QUARANTINED)


def purge_forgotten(store: DatasetStore, request_id: str, ledger: ForgetLedger | None = None,
                    progress: bool = False) -> tuple[LedgerEntry, DeletionReport | None]:
    """Physically delete a request's episodes and record the dataset hash after.

    Episodes already gone (an overlapping earlier purge, or a crash after the delete but before
    the ledger line) are skipped, so a purge can be re-run. The report is None when nothing was left.
    """
    ledger = ledger or ForgetLedger(store.path)
    entry = ledger.get(request_id)
    store.refresh()
    if LedgerState.PURGED not in entry.next_states:
        raise LedgerError(f"request {request_id} is {entry.state.value}; only quarantined or unlearned "
                          "requests can be purged")
    present = set(store.episode_ids())
    remaining = [eid for eid in entry.matched_episode_ids if eid in present]
    report = None
    if remaining:
        try:
            report = store.delete_episodes(remaining, progress=progress)
        except SafeRuleError as err:
            ledger.transition(request_id, LedgerState.FAILED, error=f"purge failed: {err}")
            raise
    return ledger.transition(request_id, LedgerState.PURGED, dataset_hash_after=store.dataset_hash), report
