"""Taobao UserBehavior rows in numpy columns: the loader for ``UserBehavior.csv`` and the time split.

The format (Alibaba Tianchi dataset 649) is CSV without a header, one event per line::

    user_id,item_id,category_id,behavior_type,timestamp
    1,2268318,2520377,pv,1511544070

``behavior_type`` is ``pv`` (item page view, i.e. a click), ``cart``, ``fav`` or ``buy``; ``timestamp`` is Unix
seconds. Behaviours are stored as the numbers of ``FeedbackEvent.Behavior`` (``schemas/v1/feedback.proto``) so
rows can become feedback events without a second table.

A malformed line (wrong field count, an id that is not a positive integer, an unknown behaviour) is skipped
and counted; :class:`DataError` is raised only when a file cannot be used at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from training.errors import DataError

PV: Final = 2
CART: Final = 3
FAV: Final = 4
BUY: Final = 5
BEHAVIOR_CODES: Final[dict[str, int]] = {"pv": PV, "cart": CART, "fav": FAV, "buy": BUY}
BEHAVIOR_NAMES: Final[dict[int, str]] = {code: name for name, code in BEHAVIOR_CODES.items()}

MAX_MALFORMED_FRACTION: Final = 0.5  # above this the file is probably not UserBehavior.csv at all
_EXAMPLES: Final = 5
_FIELDS: Final = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Behaviors:
    """Events as parallel columns (one row per event), in the order they were given.

    ``behavior`` holds ``PV``/``CART``/``FAV``/``BUY`` codes (int8); ids and timestamps are int64.
    """

    user: IntArray
    item: IntArray
    category: IntArray
    behavior: npt.NDArray[np.int8]
    timestamp: IntArray

    def __post_init__(self) -> None:
        n = len(self.user)
        if any(len(c) != n for c in (self.item, self.category, self.behavior, self.timestamp)):
            raise ValueError("Behaviors columns must have the same length")

    def __len__(self) -> int:
        return len(self.user)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[int, int, int, str | int, int]]) -> Behaviors:
        """From ``(user, item, category, behavior, timestamp)`` tuples; ``behavior`` is a name or a code."""
        users, items, cats, codes, stamps = [], [], [], [], []
        for user, item, cat, behavior, ts in rows:
            users.append(user)
            items.append(item)
            cats.append(cat)
            codes.append(BEHAVIOR_CODES[behavior] if isinstance(behavior, str) else behavior)
            stamps.append(ts)
        return cls(
            user=np.asarray(users, dtype=np.int64),
            item=np.asarray(items, dtype=np.int64),
            category=np.asarray(cats, dtype=np.int64),
            behavior=np.asarray(codes, dtype=np.int8),
            timestamp=np.asarray(stamps, dtype=np.int64),
        )

    def take(self, index: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> Behaviors:
        """The rows selected by a boolean mask or an index array, in that order."""
        return Behaviors(
            user=self.user[index],
            item=self.item[index],
            category=self.category[index],
            behavior=self.behavior[index],
            timestamp=self.timestamp[index],
        )

    def sorted_by_time(self) -> Behaviors:
        """Rows in timestamp order; rows with equal timestamps keep their order."""
        return self.take(np.argsort(self.timestamp, kind="stable"))

    @classmethod
    def concat(cls, parts: Iterable[Behaviors]) -> Behaviors:
        """The rows of ``parts`` one after the other."""
        parts = list(parts)
        return cls(
            user=np.concatenate([p.user for p in parts]),
            item=np.concatenate([p.item for p in parts]),
            category=np.concatenate([p.category for p in parts]),
            behavior=np.concatenate([p.behavior for p in parts]),
            timestamp=np.concatenate([p.timestamp for p in parts]),
        )

    def catalog(self) -> tuple[IntArray, IntArray]:
        """``(items, categories)``: the distinct items, ascending, with the category of each item's first row."""
        items, first = np.unique(self.item, return_index=True)
        return items, self.category[first]


@dataclass(frozen=True)
class LoadResult:
    """What :func:`load_userbehavior` read: the rows in time order and what it had to skip."""

    behaviors: Behaviors
    lines: int  # non-empty lines read, over all files
    malformed: int  # lines skipped
    duplicates: int  # exact duplicate rows dropped (the public slices overlap)
    examples: tuple[str, ...]  # "path:line: reason" for the first few malformed lines


def load_userbehavior(path: Path | str, *, max_malformed_fraction: float = MAX_MALFORMED_FRACTION) -> LoadResult:
    """Read one ``UserBehavior.csv``-format file, or every ``*.csv`` file in a directory.

    Malformed lines are skipped and counted. Raises :class:`DataError` when the path is missing or unreadable,
    a file has no valid row, or more than ``max_malformed_fraction`` of a file's lines are malformed.
    Exact duplicate rows are dropped; the result is sorted by timestamp (stable).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise DataError(path, "no *.csv file in this directory")
    else:
        files = [path]
    columns: list[list[int]] = [[], [], [], [], []]
    lines = malformed = 0
    examples: list[str] = []
    for file in files:
        file_examples: list[str] = []
        file_lines, file_bad = _read_file(file, columns, file_examples)
        if file_bad > max_malformed_fraction * file_lines:
            what = "no valid UserBehavior row" if file_bad == file_lines else "too many malformed lines"
            raise DataError(file, f"{what}: {file_bad} of {file_lines} lines are malformed; first: {file_examples[0]}")
        examples.extend(file_examples[: _EXAMPLES - len(examples)])
        lines += file_lines
        malformed += file_bad
    table = np.asarray(columns, dtype=np.int64).T
    _, first = np.unique(table, axis=0, return_index=True)
    keep = np.sort(first)
    table = table[keep]
    behaviors = Behaviors(
        user=table[:, 0].copy(),
        item=table[:, 1].copy(),
        category=table[:, 2].copy(),
        behavior=table[:, 3].astype(np.int8),
        timestamp=table[:, 4].copy(),
    ).sorted_by_time()
    return LoadResult(behaviors, lines, malformed, len(columns[0]) - len(keep), tuple(examples))


def _read_file(file: Path, columns: list[list[int]], examples: list[str]) -> tuple[int, int]:
    lines = bad = 0
    try:
        with file.open("r", encoding="utf-8", errors="replace", newline="") as f:
            for number, raw in enumerate(f, start=1):
                line = raw.strip()
                if not line:
                    continue
                lines += 1
                reason = _parse(line, columns)
                if reason:
                    bad += 1
                    if len(examples) < _EXAMPLES:
                        examples.append(f"{file.name}:{number}: {reason}")
    except OSError as exc:
        raise DataError(file, f"cannot read: {exc.strerror or exc}") from exc
    if lines == 0:
        raise DataError(file, "empty file")
    return lines, bad


def _parse(line: str, columns: list[list[int]]) -> str:
    """Append one row to ``columns``; return why the line is malformed ("" if it is not)."""
    fields = line.split(",")
    if len(fields) != 5:
        return f"expected 5 comma-separated fields, got {len(fields)}"
    row = []
    for position, (name, text) in enumerate(zip(_FIELDS, fields, strict=True)):
        if position == 3:
            code = BEHAVIOR_CODES.get(text.strip())
            if code is None:
                return f"unknown behavior_type {text!r} (expected pv, cart, fav or buy)"
            row.append(code)
            continue
        try:
            value = int(text)
        except ValueError:
            return f"{name} {text!r} is not an integer"
        if value <= 0:
            return f"{name} {value} is not positive"
        row.append(value)
    for column, value in zip(columns, row, strict=True):
        column.append(value)
    return ""


def holdout_cutoff(behaviors: Behaviors, holdout_fraction: float = 0.2) -> int:
    """The timestamp at which the last ``holdout_fraction`` of events begins (events at or after it are holdout)."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if len(behaviors) == 0:
        raise ValueError("no events to split")
    stamps = np.sort(behaviors.timestamp)
    return int(stamps[min(len(stamps) - 1, int(len(stamps) * (1.0 - holdout_fraction)))])


def split_by_time(behaviors: Behaviors, cutoff: int) -> tuple[Behaviors, Behaviors]:
    """``(train, holdout)``: events strictly before ``cutoff`` and events at or after it, order kept."""
    before = behaviors.timestamp < cutoff
    return behaviors.take(before), behaviors.take(~before)
