from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from saferule_core.data.dataset import OfflineDataset
from saferule_core.data.selectors import MAX_SELECTOR_ENTRIES, ForgetSelector, mask_selector
from saferule_core.data.store import DatasetStore
from saferule_core.errors import SelectorError
from saferule_core.limits import MAX_SELECTOR_ID_CHARS

# The fixture dataset: 12 episodes "ep-000".., robot-{i%3}, bag-{i//4}.mcap, starts 100 s apart.


def matched(selector: ForgetSelector, dataset: OfflineDataset) -> list[int]:
    return np.flatnonzero(selector.select(dataset)).tolist()


def test_each_field_selects(small_dataset: OfflineDataset) -> None:
    t0 = small_dataset.episodes[0].start_time
    assert matched(ForgetSelector(episode_ids=("ep-004", "ep-001")), small_dataset) == [1, 4]
    assert matched(ForgetSelector(robot_ids=("robot-1",)), small_dataset) == [1, 4, 7, 10]
    assert matched(ForgetSelector(bag_names=("bag-2.mcap", "bag-0.mcap")), small_dataset) == [0, 1, 2, 3, 8, 9, 10, 11]
    assert matched(ForgetSelector(window_start=t0 + 900), small_dataset) == [9, 10, 11]
    assert matched(ForgetSelector(window_end=t0 + 100), small_dataset) == [0, 1]


def test_window_is_inclusive_on_both_ends(small_dataset: OfflineDataset) -> None:
    t0 = small_dataset.episodes[0].start_time
    assert matched(ForgetSelector(window_start=t0 + 300, window_end=t0 + 500), small_dataset) == [3, 4, 5]
    assert matched(ForgetSelector(window_start=t0 + 300, window_end=t0 + 300), small_dataset) == [3]


def test_fields_combine_with_and(small_dataset: OfflineDataset) -> None:
    t0 = small_dataset.episodes[0].start_time
    selector = ForgetSelector(robot_ids=("robot-1", "robot-2"), bag_names=("bag-1.mcap",), window_end=t0 + 600)
    assert matched(selector, small_dataset) == [4, 5]
    assert matched(ForgetSelector(episode_ids=("ep-004", "ep-005"), robot_ids=("robot-2",)), small_dataset) == [5]


def test_selects_from_episode_lists_and_stores(tmp_path: Path, small_dataset: OfflineDataset) -> None:
    selector = ForgetSelector(robot_ids=("robot-0",))
    assert np.flatnonzero(selector.select(small_dataset.episodes)).tolist() == [0, 3, 6, 9]
    store = DatasetStore.create(tmp_path / "ds", small_dataset)
    assert np.flatnonzero(selector.select(store)).tolist() == [0, 3, 6, 9]
    with pytest.raises(SelectorError, match="cannot select from int"):
        selector.select(5)  # type: ignore[arg-type]


def test_a_match_names_the_episodes_and_counts_their_transitions_in_datasets_and_stores(
        tmp_path: Path, small_dataset: OfflineDataset) -> None:
    selector = ForgetSelector(robot_ids=("robot-1",))
    store = DatasetStore.create(tmp_path / "ds", small_dataset)
    for source in (small_dataset, store):
        found = selector.match(source)
        assert found.episode_ids == ["ep-001", "ep-004", "ep-007", "ep-010"]
        assert found.transitions == int(small_dataset.episode_lengths[[1, 4, 7, 10]].sum())
        assert np.flatnonzero(found.mask).tolist() == [1, 4, 7, 10]
    with pytest.raises(SelectorError, match="matches none"):
        ForgetSelector(robot_ids=("robot-9",)).match(store)


def test_empty_selector_is_refused() -> None:
    with pytest.raises(SelectorError, match="sets no field"):
        ForgetSelector()
    with pytest.raises(SelectorError, match="sets no field"):
        ForgetSelector(episode_ids=(), robot_ids=())


def test_window_end_before_start_is_refused() -> None:
    with pytest.raises(SelectorError, match=r"window_end \(5.0\) is before window_start \(10.0\)"):
        ForgetSelector(window_start=10.0, window_end=5.0)


def test_unknown_episode_ids_are_counted_and_named(small_dataset: OfflineDataset) -> None:
    ids = ("ep-001", *(f"ghost-{i}" for i in range(7)))
    with pytest.raises(SelectorError, match=r"7 of 8 episode ids are not in the dataset: 'ghost-0', .*\(2 more\)"):
        ForgetSelector(episode_ids=ids).select(small_dataset)


def test_matching_nothing_is_refused_unless_allowed(small_dataset: OfflineDataset) -> None:
    selector = ForgetSelector(robot_ids=("robot-0",), bag_names=("bag-9.mcap",))
    with pytest.raises(SelectorError, match="matches none of the 12 episodes"):
        selector.select(small_dataset)
    assert not selector.select(small_dataset, require_match=False).any()


def test_too_long_lists_are_refused() -> None:
    ForgetSelector(episode_ids=tuple(f"e{i}" for i in range(MAX_SELECTOR_ENTRIES)))
    with pytest.raises(SelectorError, match=f"at most {MAX_SELECTOR_ENTRIES}"):
        ForgetSelector(robot_ids=tuple(f"r{i}" for i in range(MAX_SELECTOR_ENTRIES + 1)))


def test_too_long_ids_are_refused() -> None:
    ForgetSelector(bag_names=("b" * MAX_SELECTOR_ID_CHARS,))
    too_long = rf"robot_ids\[1\] is 1048576 characters; the limit is {MAX_SELECTOR_ID_CHARS}"
    with pytest.raises(SelectorError, match=too_long):
        ForgetSelector(robot_ids=("robot-1", "r" * 2**20))


@pytest.mark.parametrize("kwargs, problem", [
    ({"robot_ids": "robot-1"}, "robot_ids must be a list of strings"),
    ({"bag_names": ("ok", "")}, "bag_names must hold non-empty strings"),
    ({"episode_ids": (3,)}, "episode_ids must hold non-empty strings"),
    ({"window_start": float("nan")}, "window_start must be a finite number"),
    ({"window_end": True}, "window_end must be a finite number"),
    ({"window_end": "yesterday"}, "window_end must be a finite number"),
])
def test_field_types_are_checked(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(SelectorError, match=problem):
        ForgetSelector(**kwargs)


def test_duplicates_collapse_and_lists_become_tuples() -> None:
    selector = ForgetSelector(robot_ids=["a", "b", "a"])  # type: ignore[arg-type]
    assert selector.robot_ids == ("a", "b")


def test_dict_round_trip_through_json() -> None:
    selector = ForgetSelector(episode_ids=("e1",), robot_ids=("r1", "r2"), window_start=1.5)
    text = json.dumps(selector.to_dict())
    assert ForgetSelector.from_dict(json.loads(text)) == selector
    assert ForgetSelector.from_dict({"bag_names": ["b.mcap"]}) == ForgetSelector(bag_names=("b.mcap",))


@pytest.mark.parametrize("obj, problem", [
    ({"robot_ids": ["r"], "robot": ["x"]}, "unknown selector keys: robot"),
    ({"robot_ids": "r"}, "robot_ids must be a list of strings, got str"),
    ({"window_start": "1"}, "window_start must be a finite number"),
    (["robot_ids"], "must be a JSON object"),
    ({}, "sets no field"),
])
def test_from_dict_validates(obj: Any, problem: str) -> None:
    with pytest.raises(SelectorError, match=problem):
        ForgetSelector.from_dict(obj)


def test_mask_selector_names_exactly_the_masked_episodes(small_dataset: OfflineDataset) -> None:
    mask = np.zeros(12, dtype=bool)
    mask[[2, 9]] = True
    selector = mask_selector(small_dataset, mask)
    assert selector.episode_ids == ("ep-002", "ep-009")
    np.testing.assert_array_equal(selector.select(small_dataset), mask)


@pytest.mark.parametrize("mask, problem", [
    (np.zeros(12, dtype=bool), "selects no episode"),
    (np.ones(5, dtype=bool), r"shape \(5,\) but there are 12 episodes"),
    (np.ones(12, dtype=int), "must be boolean"),
])
def test_mask_selector_validates(small_dataset: OfflineDataset, mask: np.ndarray, problem: str) -> None:
    with pytest.raises(SelectorError, match=problem):
        mask_selector(small_dataset, mask)
