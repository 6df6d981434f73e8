"""The forget requests of a data root: dataset names kept inside the root, previews that record
nothing, recording with an admission check, and finding a request by id in any dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from saferule_core.data.forget_requests import ForgetRequests
from saferule_core.data.ledger import LedgerState
from saferule_core.data.request_index import INDEX_FILE
from saferule_core.data.selectors import ForgetSelector
from saferule_core.data.store import DatasetStore
from saferule_core.errors import ForgetRequestError, SafeRuleError
from tests.core.data.conftest import make_dataset


@pytest.fixture
def root(tmp_path: Path) -> Path:
    DatasetStore.create(tmp_path / "site_a" / "fleet", make_dataset(id_prefix="a"))
    DatasetStore.create(tmp_path / "site_b", make_dataset(id_prefix="b"))
    return tmp_path


def test_dataset_names_stay_inside_the_root(root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    requests = ForgetRequests(root, default_dataset="site_b")
    assert requests.dataset_dir("") == (root / "site_b").resolve()
    assert requests.dataset_dir("site_a/fleet") == (root / "site_a" / "fleet").resolve()
    outside = tmp_path_factory.mktemp("outside")
    (root / "escape").symlink_to(outside)
    for name, message in (("../x", "'..' is not allowed"), (str(outside), "outside the data root"),
                          ("escape", "outside the data root"), ("nope", "no such dataset directory"),
                          ("a\x00b", "NUL byte")):
        with pytest.raises(ForgetRequestError, match=message):
            requests.dataset_dir(name)
    with pytest.raises(ForgetRequestError, match="no default_dataset"):
        ForgetRequests(root).dataset_dir(" ")


def test_preview_records_nothing_and_a_refused_admission_leaves_the_ledger_as_it_was(root: Path) -> None:
    requests = ForgetRequests(root)
    fleet = requests.dataset_dir("site_a/fleet")
    selector = ForgetSelector(robot_ids=("robot-1",))
    preview = requests.preview(fleet, selector)
    assert preview.episode_ids == ["a-001", "a-004", "a-007", "a-010"] and preview.transitions > 0
    assert requests.ledger(fleet).entries() == []

    def refuse(_store: DatasetStore, _selector: ForgetSelector) -> None:
        raise SafeRuleError("the model cannot be unlearned")

    with pytest.raises(SafeRuleError, match="cannot be unlearned"):
        requests.record(fleet, selector, "ops", "compromised", admit=refuse)
    assert requests.ledger(fleet).entries() == [] and DatasetStore.open(fleet).quarantined_ids() == ()
    with pytest.raises(ForgetRequestError, match="needs a reason"):
        requests.record(fleet, selector, "ops", "  ")


def test_a_recorded_request_is_found_by_id_with_or_without_the_index(root: Path) -> None:
    requests = ForgetRequests(root)
    site_b = requests.dataset_dir("site_b")
    entry = requests.record(site_b, ForgetSelector(robot_ids=("robot-2",)), " ", "compromised")
    assert entry.state == LedgerState.QUARANTINED and entry.requester == "ros"
    assert ForgetRequests(root).find(entry.request_id) == (site_b, entry)
    (root / INDEX_FILE).unlink()                                      # the index is only a shortcut
    assert ForgetRequests(root).find(entry.request_id)[0] == site_b
    for request_id, message in (("forget-0000", "unknown request id"), ("../x", "malformed request id"),
                                ("x" * 500, "request_id")):
        with pytest.raises(ForgetRequestError, match=message):
            requests.find(request_id)
