"""The request id -> dataset index of a data root: appended lines, the last one wins, damage ignored."""

from __future__ import annotations

from pathlib import Path

from saferule_core.data.request_index import INDEX_FILE, RequestIndex


def test_the_index_finds_the_dataset_a_request_was_recorded_in(tmp_path: Path) -> None:
    (tmp_path / "site_a" / "fleet").mkdir(parents=True)
    (tmp_path / "site_b").mkdir()
    index = RequestIndex(tmp_path)
    assert index.dataset_of("forget-1") is None                      # no file yet
    index.add("forget-1", tmp_path / "site_a" / "fleet")
    index.add("forget-2", tmp_path / "site_b")
    assert index.dataset_of("forget-1") == (tmp_path / "site_a" / "fleet").resolve()
    assert index.dataset_of("forget-2") == (tmp_path / "site_b").resolve()
    assert index.dataset_of("forget-3") is None
    # a torn last line, garbage, and a line pointing out of the root are ignored
    with open(tmp_path / INDEX_FILE, "a") as handle:
        handle.write('{"request_id": "forget-2", "dataset": "../../etc"}\nnot json\n{"request_id": "forget-1", "data')
    assert index.dataset_of("forget-2") == (tmp_path / "site_b").resolve()
    assert index.dataset_of("forget-1") == (tmp_path / "site_a" / "fleet").resolve()
    assert RequestIndex(tmp_path).dataset_of("forget-1") == (tmp_path / "site_a" / "fleet").resolve()
    index.add("forget-4", tmp_path / "site_b")                        # after the torn line, on a line of its own
    assert index.dataset_of("forget-4") == (tmp_path / "site_b").resolve()
