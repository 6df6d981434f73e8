"""The forget requests of every dataset under one data root, in one place: where a named dataset
lies (never outside the root), which ledger records a request id, what a selector would match (a
preview that records nothing), and recording a new request (quarantining its episodes).

The unlearning server answers Forget requests and Unlearn goals with it; it is thread-safe (one
request is recorded at a time; a ledger object per dataset is kept, so each reads only what was
appended since).
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from saferule_core.data.ledger import LEDGER_FILE, ForgetLedger, LedgerEntry, LedgerState, request_forget
from saferule_core.data.request_index import RequestIndex
from saferule_core.data.selectors import ForgetSelector
from saferule_core.data.store import DatasetStore
from saferule_core.errors import ForgetRequestError, SafeRuleError, UnlearningError
from saferule_core.limits import MAX_REQUEST_ID_CHARS, check_chars, check_dataset_name

MAX_DATASET_DEPTH = 3                       # how deep under the data root ledgers are looked for
REQUEST_ID_PATTERN = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_REQUEST_ID_CHARS - 1}}}$")

STARTABLE_STATES = frozenset({LedgerState.REQUESTED, LedgerState.QUARANTINED, LedgerState.UNLEARNING,
                              LedgerState.FAILED})

Admission = Callable[[DatasetStore, ForgetSelector], object]
"""Called with the dataset and selector before a request is recorded; raises SafeRuleError to refuse."""
Warn = Callable[[str], None]


def check_startable(entry: LedgerEntry) -> None:
    """Refuse requests that cannot (or can no longer) be unlearned, naming why."""
    if entry.state == LedgerState.PURGED:
        raise UnlearningError(f"request {entry.request_id}: its episodes are already forgotten (purged); "
                              "there is nothing left to unlearn")
    if entry.state == LedgerState.UNLEARNED:
        raise UnlearningError(f"request {entry.request_id} is already unlearned (policy {entry.artifact_version})")
    if entry.state == LedgerState.FAILED and LedgerState.UNLEARNING not in entry.next_states:
        raise UnlearningError(f"request {entry.request_id} failed before its episodes were quarantined "
                              f"({entry.error}), so it cannot be re-run; file a new forget request for the "
                              "same episodes")
    if entry.state not in STARTABLE_STATES:
        raise UnlearningError(f"request {entry.request_id} is {entry.state.value} and cannot be unlearned")


def within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def dataset_path(data_root: Path, name: str) -> Path:
    """Where dataset `name` lies under `data_root` (resolved, symlinks included), whether or not it
    exists yet. ForgetRequestError for `..` or a path that resolves outside the root."""
    root = data_root.resolve()
    check_dataset_name(name, ForgetRequestError)
    if "\x00" in name:
        raise ForgetRequestError("the dataset name contains a NUL byte")
    candidate = Path(name)
    if ".." in candidate.parts:
        raise ForgetRequestError(f"dataset {name!r}: '..' is not allowed; name a dataset under the data root {root}")
    try:
        path = (candidate if candidate.is_absolute() else root / candidate).resolve()
    except (OSError, RuntimeError) as err:   # RuntimeError: a symlink loop
        raise ForgetRequestError(f"dataset {name!r}: cannot resolve it under the data root {root} ({err})") from None
    if not within(path, root):
        raise ForgetRequestError(f"dataset {name!r} resolves to {path}, outside the data root {root}")
    return path


def resolve_dataset_dir(data_root: Path, name: str) -> Path:
    """`dataset_path`, which must also be a directory."""
    path = dataset_path(data_root, name)
    try:
        is_dir = path.is_dir()
    except OSError as err:
        raise ForgetRequestError(f"dataset {name!r}: {err.strerror}") from None
    if not is_dir:
        raise ForgetRequestError(f"dataset {name!r}: no such dataset directory under the data root "
                                 f"{data_root.resolve()}")
    return path


@dataclass(frozen=True)
class Preview:
    """What a selector matches in a dataset, recording nothing."""

    episode_ids: list[str]
    transitions: int


class ForgetRequests:
    def __init__(self, data_root: Path, default_dataset: str = "", warn: Warn | None = None) -> None:
        self.data_root = Path(data_root).expanduser().resolve()
        self.default_dataset = default_dataset
        self.index = RequestIndex(self.data_root)   # request id -> dataset, a lookup shortcut
        self._warn: Warn = warn or (lambda _message: None)
        self._record_lock = threading.Lock()         # one request recorded at a time
        self._ledgers: dict[Path, ForgetLedger] = {}
        self._ledgers_lock = threading.Lock()

    # ----- datasets and ledgers --------------------------------------------------------------
    def dataset_dir(self, name: str) -> Path:
        """The named dataset's directory, or the default dataset's when `name` is blank."""
        name = name.strip() or self.default_dataset
        if not name:
            raise ForgetRequestError("no dataset named and the server has no default_dataset")
        return resolve_dataset_dir(self.data_root, name)

    def relative(self, dataset_dir: Path) -> str:
        return dataset_dir.relative_to(self.data_root).as_posix()

    def ledger(self, dataset_dir: Path) -> ForgetLedger:
        with self._ledgers_lock:
            return self._ledgers.setdefault(dataset_dir, ForgetLedger(dataset_dir))

    def ledger_dirs(self) -> Iterator[Path]:
        """Dataset directories under the data root that hold a ledger (the default dataset first)."""
        if self.default_dataset:
            default = dataset_path(self.data_root, self.default_dataset)
            if (default / LEDGER_FILE).is_file():
                yield default
        for current, dirnames, filenames in os.walk(self.data_root, followlinks=False):
            here = Path(current)
            if LEDGER_FILE in filenames and within(here.resolve(), self.data_root):
                yield here.resolve()
            depth = len(here.relative_to(self.data_root).parts)
            dirnames[:] = [] if depth >= MAX_DATASET_DEPTH else sorted(
                d for d in dirnames if not d.startswith(".") and d != "shards")

    def find(self, request_id: str) -> tuple[Path, LedgerEntry]:
        """The dataset directory and ledger entry of a request (the index first, then the ledgers)."""
        check_chars("request_id", request_id, MAX_REQUEST_ID_CHARS, ForgetRequestError)
        if not REQUEST_ID_PATTERN.match(request_id):
            raise ForgetRequestError(f"malformed request id {request_id!r}")
        hinted = self.index.dataset_of(request_id)
        directories = self.ledger_dirs()
        if hinted is not None and (hinted / LEDGER_FILE).is_file():
            directories = itertools.chain([hinted], directories)
        for directory in directories:
            try:
                for entry in self.ledger(directory).entries():
                    if entry.request_id == request_id:
                        return directory, entry
            except SafeRuleError as err:
                self._warn(f"skipping the ledger of {directory}: {err}")
        raise ForgetRequestError(f"unknown request id {request_id!r}: no ledger under {self.data_root} records it "
                                 f"(send Forget first)")

    # ----- requests ----------------------------------------------------------------------------
    def preview(self, dataset_dir: Path, selector: ForgetSelector) -> Preview:
        found = selector.match(DatasetStore.open(dataset_dir))
        return Preview(found.episode_ids, found.transitions)

    def record(self, dataset_dir: Path, selector: ForgetSelector, requester: str, reason: str,
               admit: Admission | None = None) -> LedgerEntry:
        """Record and quarantine a new request; with `admit`, only if it lets the request through
        (so a request refused there leaves the ledger and the dataset as they were)."""
        if not reason.strip():
            raise ForgetRequestError("a forget request needs a reason (it is kept in the ledger)")
        with self._record_lock:
            store = DatasetStore.open(dataset_dir)
            if admit is not None:
                admit(store, selector)
            entry = request_forget(store, selector, requester=requester.strip() or "ros", reason=reason.strip(),
                                   ledger=self.ledger(dataset_dir))
        try:
            self.index.add(entry.request_id, dataset_dir)
        except OSError as err:   # only a lookup shortcut: find() falls back to the ledgers
            self._warn(f"request index {self.index.path}: {err}")
        return entry
