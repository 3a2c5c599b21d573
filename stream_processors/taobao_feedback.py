"""Real shopper behaviour as a replay for :mod:`stream_processors.attribution`: Taobao UserBehavior rows ->
synthetic predictions plus the feedback events of the same rows.

The dataset has no requests, so this invents them with a rule simple enough to recompute by hand: each
``(user, 30-minute bucket of the timestamp)`` is one request, ranked at the bucket's start, whose candidates are
the items the user acted on in the bucket followed by filler items the user did not touch (other items of the
rows, chosen by a seeded generator) up to ``candidates`` (at least the touched items, at most 64 — the
``InferenceEvent.item_ids`` limit; touched items beyond 64 are not ranked). Every row becomes one
``FeedbackEvent`` of that request (``pv`` -> ``CLICK``; the codes of ``training.taobao`` are the enum's numbers),
between 0 and 30 minutes after its prediction. Users with ``user_id % canary_every == 0`` go to the canary.

Rows are ``(user_id, item_id, category_id, behavior_code, timestamp_s)``, e.g.
``zip(*(c.tolist() for c in (b.user, b.item, b.category, b.behavior, b.timestamp)))`` of a
``training.taobao.Behaviors``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, cast

from schemas import FeedbackEvent, InferenceEvent

BUCKET_S: Final = 1800
MAX_ITEMS: Final = 64

Row = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class Replay:
    predictions: list[InferenceEvent]  # in received_us order
    feedback: list[FeedbackEvent]  # in the rows' order

    def in_time_order(self) -> list[InferenceEvent | FeedbackEvent]:
        """Both streams merged by event time; at equal times a prediction comes first."""
        keyed: list[tuple[int, int, int, InferenceEvent | FeedbackEvent]] = [
            (p.received_us, 0, i, p) for i, p in enumerate(self.predictions)
        ]
        keyed += [(f.ts_us, 1, i, f) for i, f in enumerate(self.feedback)]
        keyed.sort(key=lambda k: k[:3])
        return [k[3] for k in keyed]


def request_of(user: int, ts_s: int) -> tuple[int, int]:
    """The (user, bucket start in seconds) that a row's request is made of."""
    return user, ts_s // BUCKET_S * BUCKET_S


def replay_from_rows(
    rows: Iterable[Row],
    *,
    candidates: int = 32,
    model: str = "ranker",
    stable_version: int = 1,
    canary_version: int = 2,
    canary_every: int = 10,
    seed: int = 0,
) -> Replay:
    """Predictions and feedback for ``rows`` (see the module docstring for the rules)."""
    if not 1 <= candidates <= MAX_ITEMS:
        raise ValueError(f"candidates must be in [1, {MAX_ITEMS}], got {candidates}")
    rows = list(rows)
    touched: dict[tuple[int, int], dict[int, None]] = {}
    feedback: list[FeedbackEvent] = []
    for n, (user, item, category, behavior, ts) in enumerate(rows):
        req = request_of(user, ts)
        touched.setdefault(req, {})[item] = None
        feedback.append(
            FeedbackEvent(
                event_id=f"tb{n}",
                request_id=_request_id(req),
                user_id=str(user),
                item_id=str(item),
                category_id=str(category),
                behavior=cast(FeedbackEvent.Behavior, behavior),
                ts_us=ts * 1_000_000,
            )
        )
    pool = sorted({row[1] for row in rows})
    rng = random.Random(seed)
    rng.shuffle(pool)
    predictions = []
    for n, req in enumerate(sorted(touched, key=lambda r: (r[1], r[0]))):
        own = list(touched[req])[:MAX_ITEMS]
        want = max(candidates, len(own))
        ranked = own + _fillers(rng, pool, set(own), want - len(own))
        canary = req[0] % canary_every == 0
        predictions.append(
            InferenceEvent(
                event_id=f"tbp{n}",
                request_id=_request_id(req),
                received_us=req[1] * 1_000_000,
                model=model,
                version=canary_version if canary else stable_version,
                label="canary" if canary else "stable",
                user_id=str(req[0]),
                item_ids=[str(i) for i in ranked],
                rows=len(ranked),
            )
        )
    return Replay(predictions, feedback)


def _request_id(req: tuple[int, int]) -> str:
    return f"tb-{req[0]}-{req[1]}"


def _fillers(rng: random.Random, pool: list[int], exclude: set[int], n: int) -> list[int]:
    """``n`` distinct items of the (shuffled) ``pool`` not in ``exclude``, from a random place in it."""
    want = min(len(pool), n + len(exclude))
    start = rng.randrange(len(pool))
    drawn = pool[start : start + want]
    drawn += pool[: want - len(drawn)]  # wrap around
    return [item for item in drawn if item not in exclude][:n]
