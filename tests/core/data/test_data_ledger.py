from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from saferule_core.data import ledger as ledger_module
from saferule_core.data.dataset import OfflineDataset
from saferule_core.data.ledger import LEDGER_FILE, ForgetLedger, LedgerError, LedgerState, purge_forgotten, request_forget
from saferule_core.data.selectors import ForgetSelector
from saferule_core.data.store import DatasetStore
from saferule_core.errors import DatasetError
from saferule_core.limits import MAX_REASON_CHARS, MAX_REQUESTER_CHARS

SELECTOR = ForgetSelector(robot_ids=("robot-1",))


def record(ledger: ForgetLedger, request_id: str | None = None) -> str:
    entry = ledger.record_request(SELECTOR, ["ep-001", "ep-004"], 12, "hash-before", requester="ops",
                                  reason="tampered costs", request_id=request_id)
    return entry.request_id


def test_full_lifecycle_appends_one_line_per_state(tmp_path: Path) -> None:
    ledger = ForgetLedger(tmp_path)
    request_id = record(ledger)
    first_line = (tmp_path / LEDGER_FILE).read_text()
    ledger.transition(request_id, LedgerState.QUARANTINED)
    ledger.transition(request_id, "unlearning", note="job 7")
    ledger.transition(request_id, LedgerState.UNLEARNED, artifact_version="v3", metrics={"forget_cost": 1.5})
    entry = ledger.transition(request_id, LedgerState.PURGED, dataset_hash_after="hash-after")
    lines = (tmp_path / LEDGER_FILE).read_text().splitlines()
    assert len(lines) == 5 and lines[0] + "\n" == first_line
    assert [json.loads(line)["state"] for line in lines] == ["requested", "quarantined", "unlearning", "unlearned",
                                                             "purged"]
    assert entry.state is LedgerState.PURGED and not entry.pending
    assert [state for state, _ in entry.history] == ["requested", "quarantined", "unlearning", "unlearned", "purged"]
    folded = ForgetLedger(tmp_path / LEDGER_FILE).get(request_id)
    assert folded == entry
    assert folded.matched_episode_ids == ("ep-001", "ep-004") and folded.matched_transitions == 12
    assert folded.artifact_version == "v3" and folded.dataset_hash_after == "hash-after"
    assert folded.metrics == {"forget_cost": 1.5} and folded.note == "job 7"
    assert folded.forget_selector() == SELECTOR and folded.dataset_hash_before == "hash-before"


def test_failed_before_quarantine_keeps_its_error_and_is_final(tmp_path: Path) -> None:
    ledger = ForgetLedger(tmp_path)
    request_id = record(ledger)
    entry = ledger.transition(request_id, "failed", error="quarantine failed")
    assert entry.state is LedgerState.FAILED and entry.error == "quarantine failed"
    assert not entry.resumable and not entry.pending and entry.next_states == frozenset()
    lines_before = (tmp_path / LEDGER_FILE).read_text()
    for state in ("unlearning", "quarantined", "purged"):
        with pytest.raises(LedgerError, match=f"is failed; it cannot become {state} .*before its episodes were "
                                              "quarantined: final state"):
            ledger.transition(request_id, state, dataset_hash_after="h")
    assert (tmp_path / LEDGER_FILE).read_text() == lines_before
    with open(tmp_path / LEDGER_FILE, "a") as fh:                    # a hand-edited re-run is refused on read
        fh.write(json.dumps({"event": "transition", "request_id": request_id, "state": "unlearning",
                             "time": 2.0}) + "\n")
    with pytest.raises(LedgerError, match="line 3: request .* is failed; it cannot become unlearning"):
        ledger.entries()


@pytest.mark.parametrize("path", [["quarantined"], ["quarantined", "unlearning"],
                                  ["quarantined", "unlearning", "unlearned"]])
def test_failed_after_quarantine_can_be_rerun_and_history_is_kept(tmp_path: Path, path: list[str]) -> None:
    ledger = ForgetLedger(tmp_path)
    request_id = record(ledger)
    for state in path:
        ledger.transition(request_id, state, artifact_version="v1")
    failed = ledger.transition(request_id, "failed", error="diverged")
    assert failed.resumable and failed.pending and failed.next_states == frozenset({LedgerState.UNLEARNING})
    with pytest.raises(LedgerError, match="is failed; it cannot become purged \\(allowed next: unlearning\\)"):
        ledger.transition(request_id, "purged", dataset_hash_after="h")
    lines_before = (tmp_path / LEDGER_FILE).read_text()
    rerun = ledger.transition(request_id, "unlearning", note="re-run")
    assert (tmp_path / LEDGER_FILE).read_text().startswith(lines_before)          # append-only
    assert rerun.state is LedgerState.UNLEARNING and rerun.error is None and not rerun.resumable
    ledger.transition(request_id, "failed", error="diverged again")               # and it can fail again
    done = ledger.transition(ledger.transition(request_id, "unlearning").request_id, "unlearned",
                             artifact_version="v2")
    assert [state for state, _ in done.history] == ["requested", *path, "failed", "unlearning", "failed",
                                                    "unlearning", "unlearned"]
    assert ForgetLedger(tmp_path).get(request_id) == done                          # the file folds the same way


@pytest.mark.parametrize("path, new_state", [
    ([], "unlearning"),                           # requested -> unlearning skips the quarantine
    ([], "purged"),
    (["quarantined"], "unlearned"),
    (["quarantined", "unlearning"], "quarantined"),
])
def test_illegal_transitions_are_refused(tmp_path: Path, path: list[str], new_state: str) -> None:
    ledger = ForgetLedger(tmp_path)
    request_id = record(ledger)
    for state in path:
        ledger.transition(request_id, state)
    lines_before = (tmp_path / LEDGER_FILE).read_text()
    with pytest.raises(LedgerError, match=f"cannot become {new_state} \\(allowed next: "):
        ledger.transition(request_id, new_state, artifact_version="v1", dataset_hash_after="h")
    assert (tmp_path / LEDGER_FILE).read_text() == lines_before


def test_transition_fields_are_checked(tmp_path: Path) -> None:
    ledger = ForgetLedger(tmp_path)
    request_id = record(ledger)
    with pytest.raises(LedgerError, match="unknown ledger state 'done'"):
        ledger.transition(request_id, "done")
    with pytest.raises(LedgerError, match="unknown ledger fields colour"):
        ledger.transition(request_id, "quarantined", colour="red")
    with pytest.raises(LedgerError, match="needs error"):
        ledger.transition(request_id, "failed")
    with pytest.raises(LedgerError, match="must be str"):
        ledger.transition(request_id, "failed", error=3)
    with pytest.raises(LedgerError, match="no forget request 'nope'"):
        ledger.transition("nope", "quarantined")
    ledger.transition(request_id, "quarantined")
    ledger.transition(request_id, "unlearning")
    with pytest.raises(LedgerError, match="needs artifact_version"):
        ledger.transition(request_id, "unlearned")
    with pytest.raises(LedgerError, match="finite numbers"):
        ledger.transition(request_id, "unlearned", artifact_version="v1", metrics={"x": float("nan")})


def test_request_validation(tmp_path: Path) -> None:
    ledger = ForgetLedger(tmp_path)
    with pytest.raises(LedgerError, match="non-empty requester and reason"):
        ledger.record_request(SELECTOR, ["a"], 3, "h", requester=" ", reason="r")
    with pytest.raises(LedgerError, match="at least one episode"):
        ledger.record_request(SELECTOR, [], 0, "h", requester="x", reason="r")
    record(ledger, request_id="fixed-id")
    with pytest.raises(LedgerError, match="'fixed-id' already exists"):
        record(ledger, request_id="fixed-id")
    too_long = f"reason is {MAX_REASON_CHARS + 1} characters; the limit is {MAX_REASON_CHARS}"
    with pytest.raises(LedgerError, match=too_long):
        ledger.record_request(SELECTOR, ["a"], 3, "h", requester="x", reason="r" * (MAX_REASON_CHARS + 1))
    with pytest.raises(LedgerError, match=f"requester is 1048576 characters; the limit is {MAX_REQUESTER_CHARS}"):
        ledger.record_request(SELECTOR, ["a"], 3, "h", requester="x" * 2**20, reason="r")


def test_pending_and_summary(tmp_path: Path) -> None:
    ledger = ForgetLedger(tmp_path)
    done, waiting, broken = record(ledger), record(ledger), record(ledger)
    ledger.transition(done, "quarantined")
    ledger.transition(done, "purged", dataset_hash_after="h2")
    ledger.transition(waiting, "quarantined")
    ledger.transition(broken, "failed", error="bad selector")
    retry = record(ledger)
    ledger.transition(retry, "quarantined")
    ledger.transition(retry, "failed", error="diverged")
    assert [e.request_id for e in ledger.pending()] == [waiting, retry]      # a resumable failure is not dead
    assert [e.request_id for e in ledger.entries()] == [done, waiting, broken, retry]
    assert ledger.summary() == {"purged": 1, "quarantined": 1, "failed": 2}
    with pytest.raises(LedgerError, match="no forget request"):
        ledger.get("missing")


def test_every_append_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = ledger_module.os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(ledger_module.os, "fsync", spy)
    ledger = ForgetLedger(tmp_path)
    request_id = record(ledger)
    count = len(synced)
    ledger.transition(request_id, "quarantined")
    assert count >= 1 and len(synced) > count


def test_torn_last_line_is_ignored_reported_and_cut_on_next_append(tmp_path: Path) -> None:
    ledger = ForgetLedger(tmp_path)
    request_id = record(ledger)
    file = tmp_path / LEDGER_FILE
    intact = file.read_bytes()
    with open(file, "ab") as fh:
        fh.write(b'{"event": "transition", "request_id": "' + request_id.encode() + b'", "sta')
    assert ledger.get(request_id).state is LedgerState.REQUESTED
    assert ledger.torn_tail is not None and '"sta' in ledger.torn_tail
    ledger.transition(request_id, "quarantined")
    assert ledger.torn_tail is not None
    text = file.read_bytes()
    assert text.startswith(intact) and text.count(b"\n") == 2 and b'"sta\n' not in text
    assert ForgetLedger(tmp_path).get(request_id).state is LedgerState.QUARANTINED
    reread = ForgetLedger(tmp_path)
    reread.entries()
    assert reread.torn_tail is None


def test_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    ledger = ForgetLedger(tmp_path)
    request_id = record(ledger)
    ledger.transition(request_id, "quarantined")
    file = tmp_path / LEDGER_FILE
    lines = file.read_text().splitlines(keepends=True)
    file.write_text(lines[0][:-10] + "\n" + lines[1])
    with pytest.raises(LedgerError, match="line 1 is not valid JSON"):
        ForgetLedger(tmp_path).entries()


def test_hand_edited_illegal_history_is_an_error(tmp_path: Path) -> None:
    ledger = ForgetLedger(tmp_path)
    request_id = record(ledger)
    with open(tmp_path / LEDGER_FILE, "a") as fh:
        fh.write(json.dumps({"event": "transition", "request_id": request_id, "state": "purged", "time": 1.0,
                             "dataset_hash_after": "h"}) + "\n")
    with pytest.raises(LedgerError, match="line 2: request .* is requested; it cannot become purged"):
        ledger.entries()


def test_an_append_reads_only_what_was_appended_since(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module.os, "fsync", lambda fd: None)   # speed only: reads are what is counted
    ledger = ForgetLedger(tmp_path)
    for _ in range(300):
        record(ledger)
    size = (tmp_path / LEDGER_FILE).stat().st_size
    read: list[int] = []
    real_pread = ledger_module.os.pread

    def counting_pread(fd: int, length: int, offset: int) -> bytes:
        data = real_pread(fd, length, offset)
        read.append(len(data))
        return data

    monkeypatch.setattr(ledger_module.os, "pread", counting_pread)
    request_id = record(ledger)
    ledger.transition(request_id, "quarantined")
    assert sum(read) <= 2, f"two appends read {sum(read)} bytes of a {size}-byte ledger"
    # Another writer's line is read, and only that.
    other = record(ForgetLedger(tmp_path))
    read.clear()
    assert ledger.transition(other, "quarantined").state is LedgerState.QUARANTINED
    line = (tmp_path / LEDGER_FILE).read_bytes().splitlines(keepends=True)[-2]
    assert sum(read) <= len(line) + 1 < size
    assert len(ledger.entries()) == 302 and ForgetLedger(tmp_path).entries() == ledger.entries()


def test_a_replaced_or_shortened_ledger_is_read_again(tmp_path: Path) -> None:
    ledger = ForgetLedger(tmp_path)
    kept, dropped = record(ledger), record(ledger)
    file = tmp_path / LEDGER_FILE
    first_line = file.read_bytes().splitlines(keepends=True)[0]
    file.write_bytes(first_line)                   # shortened in place
    assert [e.request_id for e in ledger.entries()] == [kept]
    replacement = tmp_path / "replacement.jsonl"
    replacement.write_bytes(first_line)
    ForgetLedger(replacement).transition(kept, "quarantined")
    replacement.replace(file)                      # a new file under the same name
    assert ledger.get(kept).state is LedgerState.QUARANTINED
    with pytest.raises(LedgerError, match="no forget request"):
        ledger.get(dropped)


def test_missing_ledger_reads_as_empty(tmp_path: Path) -> None:
    ledger = ForgetLedger(tmp_path)
    assert ledger.entries() == [] and ledger.pending() == [] and ledger.summary() == {}
    assert not (tmp_path / LEDGER_FILE).exists()


# ----- the forget workflow over a store --------------------------------------------------------

def test_request_then_purge(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    store = DatasetStore.create(tmp_path / "ds", small_dataset, episodes_per_shard=4)
    hash_before = store.dataset_hash
    entry = request_forget(store, SELECTOR, requester="monitor", reason="robot-1 was compromised")
    assert entry.state is LedgerState.QUARANTINED
    assert entry.matched_episode_ids == ("ep-001", "ep-004", "ep-007", "ep-010")
    assert entry.matched_transitions == int(small_dataset.episode_lengths[[1, 4, 7, 10]].sum())
    assert entry.dataset_hash_before == hash_before
    assert set(DatasetStore.open(tmp_path / "ds").quarantined_ids()) == set(entry.matched_episode_ids)
    purged, report = purge_forgotten(store, entry.request_id)
    assert report is not None and len(report.rewritten_shards) == 3
    assert purged.state is LedgerState.PURGED
    reopened = DatasetStore.open(tmp_path / "ds")
    assert purged.dataset_hash_after == reopened.dataset_hash != hash_before
    assert reopened.num_episodes == 8 and reopened.quarantined_ids() == ()
    keep = ~np.isin(np.arange(12), [1, 4, 7, 10])
    assert reopened.dataset_hash == small_dataset.subset_episodes(keep).with_content_hashes().dataset_hash()


def test_purge_is_rerunnable_after_a_crash(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    store = DatasetStore.create(tmp_path / "ds", small_dataset)
    entry = request_forget(store, ForgetSelector(episode_ids=("ep-003",)), requester="x", reason="y")
    store.delete_episodes(["ep-003"])            # the delete happened, the ledger line did not
    purged, report = purge_forgotten(store, entry.request_id)
    assert report is None and purged.state is LedgerState.PURGED
    assert purged.dataset_hash_after == store.dataset_hash


def test_purge_of_a_requested_entry_is_refused(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    store = DatasetStore.create(tmp_path / "ds", small_dataset)
    ledger = ForgetLedger(store.path)
    entry = ledger.record_request(SELECTOR, ["ep-001"], 5, store.dataset_hash, requester="a", reason="b")
    request_id = entry.request_id
    with pytest.raises(LedgerError, match="only quarantined or unlearned requests can be purged"):
        purge_forgotten(store, request_id)
    assert store.num_episodes == 12


def test_failed_purge_is_recorded(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    store = DatasetStore.create(tmp_path / "ds", small_dataset)
    entry = request_forget(store, ForgetSelector(window_start=0.0), requester="a", reason="everything")
    with pytest.raises(DatasetError, match="refusing to delete all"):
        purge_forgotten(store, entry.request_id)
    failed = ForgetLedger(store.path).get(entry.request_id)
    assert failed.state is LedgerState.FAILED and "refusing to delete all" in (failed.error or "")
    assert store.num_episodes == 12
