"""A behaviour log for retraining, read from the store: what shoppers did with one model's rankings.

:func:`store_behaviors` reads ``feedback_events`` of a time range and keeps the events whose ``request_id`` is a
prediction of the model in ``inference_events`` (the feedback on *that* model's rankings; an ``IN`` subquery over
one model's request ids, which ClickHouse 18.16 and chDB both run as a hash set). Shop behaviours map to the
training vocabulary of :mod:`training.taobao`: ``click`` is ``pv`` (an item page view), ``cart``, ``fav`` and
``buy`` keep their names. ``impression`` rows are not interactions and are left out: the CTR ranker learns
interactions against sampled negatives (:mod:`training.samples`), as offline, so a model retrained here is
measured the same way as one trained on ``UserBehavior.csv``.

Ids are strings in the store and int64 tensors in the models' signatures: a row whose user or item id is not a
positive integer is skipped and counted (``skipped``); an empty or non-numeric category becomes 0. A row seen
twice (``ReplacingMergeTree`` before a merge) counts once, by ``event_id``. Timestamps become Unix seconds, the
unit of :class:`training.taobao.Behaviors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from store.base import Store
from store.sql import string_literal
from training.errors import TrainingError
from training.taobao import BUY, CART, FAV, PV, Behaviors

BEHAVIORS: Final[dict[str, int]] = {"click": PV, "cart": CART, "fav": FAV, "buy": BUY}
PREDICTION_SLACK_S: Final = 3600  # feedback up to 30 min after its prediction: look at predictions this much earlier
MAX_ROWS: Final = 2_000_000


class InsufficientDataError(TrainingError):
    """Too few usable feedback events of the model in the period to train and evaluate a model."""

    def __init__(self, model: str, events: int, required: int, since_us: int, until_us: int) -> None:
        super().__init__(
            f"too little data for {model}: {events} usable feedback events between {since_us} and {until_us} µs, "
            f"need {required}"
        )
        self.model = model
        self.events = events
        self.required = required
        self.since_us = since_us
        self.until_us = until_us


@dataclass(frozen=True)
class StoreLog:
    """The behaviours read (time order) and the rows that could not be used."""

    behaviors: Behaviors
    rows: int  # rows the query returned
    skipped: int  # rows with an id that is not a positive integer


def store_behaviors(
    store: Store,
    model: str,
    since_us: int,
    until_us: int,
    *,
    min_events: int = 1,
    max_rows: int = MAX_ROWS,
    join_predictions: bool = True,
) -> StoreLog:
    """The interactions with ``model``'s rankings in ``[since_us, until_us)`` (the latest ``max_rows``), in time
    order. Raises :class:`InsufficientDataError` with fewer than ``min_events`` usable rows."""
    since_s, until_s = since_us // 1_000_000, until_us // 1_000_000 + 1
    kinds = ", ".join(string_literal(b) for b in BEHAVIORS)
    sql = (
        "SELECT event_id, user_id, item_id, category_id, behavior, ts_us FROM feedback_events "
        f"WHERE ts >= toDateTime({since_s}) AND ts <= toDateTime({until_s}) "
        f"AND ts_us >= {int(since_us)} AND ts_us < {int(until_us)} AND behavior IN ({kinds})"
    )
    if join_predictions:
        sql += (
            " AND request_id IN (SELECT request_id FROM inference_events "
            f"WHERE model = {string_literal(model)} AND event_time >= toDateTime({since_s - PREDICTION_SLACK_S}))"
        )
    rows = store.query(sql + f" ORDER BY ts_us DESC LIMIT {int(max_rows)}").rows
    seen: set[str] = set()
    kept: list[tuple[int, int, int, int, int]] = []
    skipped = 0
    for event_id, user, item, category, behavior, ts_us in rows:
        if event_id in seen:
            continue
        seen.add(event_id)
        user_id, item_id = _positive_int(user), _positive_int(item)
        if user_id is None or item_id is None:
            skipped += 1
            continue
        kept.append((user_id, item_id, _positive_int(category) or 0, BEHAVIORS[str(behavior)], int(ts_us) // 1_000_000))
    if len(kept) < min_events:
        raise InsufficientDataError(model, len(kept), min_events, since_us, until_us)
    return StoreLog(Behaviors.from_rows(kept).sorted_by_time(), len(rows), skipped)


def _positive_int(text: object) -> int | None:
    s = str(text)
    if not (s.isascii() and s.isdigit()):
        return None
    value = int(s)
    return value if 0 < value < 2**63 else None
