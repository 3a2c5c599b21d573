"""The UserBehavior.csv loader (malformed lines counted and skipped, unusable files rejected) and the time split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.errors import DataError
from training.taobao import BUY, CART, PV, Behaviors, holdout_cutoff, load_userbehavior, split_by_time

GOOD = [
    "1,2268318,2520377,pv,1511544070",
    "1,2333346,2520771,cart,1511561733",
    "100,2576651,149192,buy,1511572885",
]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reads_rows_into_columns_sorted_by_time(tmp_path: Path) -> None:
    result = load_userbehavior(write(tmp_path / "u.csv", [GOOD[2], GOOD[0], GOOD[1]]))
    b = result.behaviors
    assert (result.lines, result.malformed, result.duplicates) == (3, 0, 0)
    assert b.user.tolist() == [1, 1, 100]
    assert b.item.tolist() == [2268318, 2333346, 2576651]
    assert b.category.tolist() == [2520377, 2520771, 149192]
    assert b.behavior.tolist() == [PV, CART, BUY]
    assert b.timestamp.tolist() == sorted(b.timestamp.tolist())
    assert b.user.dtype == np.int64 and b.behavior.dtype == np.int8


def test_malformed_lines_are_counted_and_skipped_with_their_reason(tmp_path: Path) -> None:
    bad = [
        "user_id,item_id,category_id,behavior_type,timestamp",  # a header the format does not have
        "1,2268318,2520377,pv",  # a field missing
        "1,2268318,2520377,click,1511544070",  # unknown behaviour
        "1,-5,2520377,pv,1511544070",  # not a positive id
        "1,22x,2520377,pv,1511544070",
    ]
    more = [f"2,{item},4,pv,1511544100" for item in range(100, 110)]
    result = load_userbehavior(write(tmp_path / "u.csv", [*bad, *GOOD, *more, "", *GOOD[:1]]))
    assert result.malformed == len(bad)
    assert len(result.behaviors) == 3 + len(more)  # the repeated good line is an exact duplicate
    assert result.duplicates == 1
    assert result.lines == len(GOOD) + len(more) + len(bad) + 1  # blank lines are not counted
    assert result.examples[0] == "u.csv:1: user_id 'user_id' is not an integer"
    assert any("expected 5 comma-separated fields, got 4" in e for e in result.examples)
    assert any("unknown behavior_type 'click'" in e for e in result.examples)


@pytest.mark.parametrize(
    ("lines", "reason"),
    [([], "empty file"), (["a,b,c", "x"], "no valid UserBehavior row"), ([*GOOD[:1], "x", "y"], "too many malformed")],
)
def test_unusable_files_raise_data_error(tmp_path: Path, lines: list[str], reason: str) -> None:
    path = tmp_path / "u.csv"
    path.write_text("\n".join(lines))
    with pytest.raises(DataError) as info:
        load_userbehavior(path)
    assert info.value.path == path
    assert reason in info.value.reason


def test_missing_path_and_empty_directory_raise(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        load_userbehavior(tmp_path / "absent.csv")
    with pytest.raises(DataError):
        load_userbehavior(tmp_path)


def test_a_directory_is_every_csv_in_it_without_rows_both_files_share(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", GOOD[:2])
    write(tmp_path / "b.csv", GOOD[1:])
    result = load_userbehavior(tmp_path)
    assert len(result.behaviors) == 3
    assert result.duplicates == 1


def behaviors_at(times: list[int]) -> Behaviors:
    return Behaviors.from_rows([(1, 10 + i, 7, "pv", t) for i, t in enumerate(times)])


def test_split_by_time_puts_events_at_the_cutoff_in_the_holdout() -> None:
    train, holdout = split_by_time(behaviors_at([5, 1, 9, 3, 7]), cutoff=5)
    assert train.timestamp.tolist() == [1, 3]
    assert holdout.timestamp.tolist() == [5, 9, 7]


def test_holdout_cutoff_leaves_the_last_fraction_of_events() -> None:
    b = behaviors_at(list(range(100, 110)))
    cutoff = holdout_cutoff(b, 0.2)
    train, holdout = split_by_time(b, cutoff)
    assert (len(train), len(holdout)) == (8, 2)
    assert train.timestamp.max() < holdout.timestamp.min()
    with pytest.raises(ValueError):
        holdout_cutoff(b, 1.0)


REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "taobao-userbehavior"


@pytest.mark.skipif(not REAL.is_dir(), reason=f"the real Taobao slice is not at {REAL}")
def test_the_real_slice_loads_completely() -> None:
    result = load_userbehavior(REAL)
    assert (result.lines, result.malformed) == (110_300 + 4_321, 0)  # the row counts SOURCE.md gives
    assert result.duplicates == 4  # rows both public slices hold
    b = result.behaviors
    assert len(b) == result.lines - result.duplicates
    assert (np.diff(b.timestamp) >= 0).all()
    items, first = np.unique(b.item, return_index=True)
    assert np.array_equal(b.category, b.category[first][np.searchsorted(items, b.item)])  # one category per item
