"""Feedback joined to predictions: window boundaries, out-of-order arrival, dedup, eviction, persistence, and
agreement with a brute-force join on random interleavings and on real Taobao behaviour."""

from __future__ import annotations

import doctest
import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stream_processors.attribution
from schemas import FeedbackEvent, InferenceEvent
from stream_processors.attribution import Attribution, BusinessWindow, WindowKey
from stream_processors.taobao_feedback import Replay, replay_from_rows, request_of

S = 1_000_000
T0_S = 28_333_333 * 60  # a minute boundary in 2023
ITEMS = ("a", "b", "c", "d")
IMPRESSION, CLICK, CART, FAV, BUY = (
    FeedbackEvent.IMPRESSION,
    FeedbackEvent.CLICK,
    FeedbackEvent.CART,
    FeedbackEvent.FAV,
    FeedbackEvent.BUY,
)
TAOBAO = Path("/work/shared/data/taobao-userbehavior")


def pred(
    rid: str,
    t_s: float = 0,
    items: Sequence[str] = ITEMS,
    *,
    label: str = "stable",
    version: int = 1,
    status: int = 0,
    event_id: str | None = None,
) -> InferenceEvent:
    return InferenceEvent(
        event_id=event_id or f"e-{rid}",
        request_id=rid,
        received_us=round((T0_S + t_s) * S),
        model="ranker",
        version=version,
        label=label,
        status_code=status,
        item_ids=list(items),
    )


def fb(eid: str, rid: str, item: str, behavior: int = CLICK, t_s: float = 10) -> FeedbackEvent:
    return FeedbackEvent(
        event_id=eid,
        request_id=rid,
        item_id=item,
        behavior=cast(FeedbackEvent.Behavior, behavior),
        ts_us=round((T0_S + t_s) * S),
    )


def window_at(t_s: int, label: str = "stable", version: int = 1) -> WindowKey:
    return (T0_S + t_s // 60 * 60, "ranker", version, label)


def collect(a: Attribution, into: dict[WindowKey, BusinessWindow] | None = None) -> dict[WindowKey, BusinessWindow]:
    """Apply take_dirty() like a ReplacingMergeTree would: a newer row replaces an older one."""
    rows = {} if into is None else into
    for w in a.take_dirty():
        rows[w.key] = w
    return rows


def test_module_example_runs() -> None:
    result = doctest.testmod(stream_processors.attribution)
    assert result.attempted > 0 and result.failed == 0


def test_ctr_add_to_cart_and_conversion_count_distinct_impressions() -> None:
    a = Attribution()
    a.add_prediction(pred("r1", 5))
    for n, (item, behavior) in enumerate([("a", CLICK), ("a", CLICK), ("b", CLICK), ("a", CART), ("a", BUY)]):
        a.add_feedback(fb(f"f{n}", "r1", item, behavior, t_s=30 + n))
    a.add_feedback(fb("f9", "r1", "c", FAV))
    [w] = a.take_dirty()
    assert w.key == window_at(0)
    assert (w.impressions, w.clicks, w.carts, w.favs, w.buys) == (4, 3, 1, 1, 1)
    assert (w.clicked_impressions, w.carted_impressions, w.faved_impressions, w.bought_impressions) == (2, 1, 1, 1)
    assert (w.ctr, w.add_to_cart_rate, w.conversion_rate) == (0.5, 0.25, 0.25)
    assert a.unattributed == Counter()


@pytest.mark.parametrize(
    ("offset_us", "skew_s", "attributed"),
    [
        (0, 0, True),
        (1800 * S, 0, True),
        (1800 * S + 1, 0, False),
        (-1, 0, False),
        (-5 * S, 5, True),
        (-5 * S - 1, 5, False),
    ],
)
def test_attribution_window_boundaries(offset_us: int, skew_s: float, attributed: bool) -> None:
    a = Attribution(attribution_window_s=1800, max_clock_skew_s=skew_s)
    p = pred("r1", 30)
    a.add_prediction(p)
    a.add_feedback(
        FeedbackEvent(event_id="f", request_id="r1", item_id="a", behavior=CLICK, ts_us=p.received_us + offset_us)
    )
    [w] = a.take_dirty()
    assert w.clicks == int(attributed)
    assert w.outside_window == int(not attributed)
    assert a.unattributed == (Counter() if attributed else Counter(outside_window=1))


def test_item_not_among_the_ranked_items_is_not_shown() -> None:
    a = Attribution()
    a.add_prediction(pred("r1"))
    a.add_feedback(fb("f1", "r1", "zzz"))
    [w] = a.take_dirty()
    assert (w.clicks, w.not_shown) == (0, 1)
    assert a.unattributed == Counter(item_not_shown=1)


def test_invalid_feedback_is_counted_not_attributed() -> None:
    a = Attribution()
    a.add_prediction(pred("r1"))
    a.take_dirty()
    for bad in [
        fb("", "r1", "a"),
        fb("f1", "", "a"),
        fb("f2", "r1", ""),
        fb("f3", "r1", "a", behavior=0),
        fb("f4", "r1", "a", behavior=9),  # a behaviour this version does not know
        FeedbackEvent(event_id="f5", request_id="r1", item_id="a", behavior=CLICK),  # no ts_us
    ]:
        a.add_feedback(bad)
    assert a.unattributed == Counter(invalid=6)
    assert a.take_dirty() == []


def test_duplicate_event_ids_count_once() -> None:
    a = Attribution()
    a.add_prediction(pred("r1"))
    a.add_feedback(fb("f1", "r1", "a"))
    a.add_feedback(fb("f1", "r1", "a"))
    a.add_feedback(fb("f2", "r1", "a"))  # a second click on the same item: another click, the same impression
    [w] = a.take_dirty()
    assert (w.clicks, w.clicked_impressions, w.duplicates) == (2, 1, 1)
    assert a.unattributed == Counter(duplicate=1)


def test_feedback_before_its_prediction_waits_and_is_attributed() -> None:
    a = Attribution()
    a.add_feedback(fb("f1", "r1", "b", CLICK, t_s=20))
    a.add_feedback(fb("f1", "r1", "b", CLICK, t_s=20))  # redelivered while pending
    a.add_feedback(fb("f2", "r1", "b", CART, t_s=25))
    assert a.pending_feedback == 3 and a.take_dirty() == []
    a.add_prediction(pred("r1", 15))
    [w] = a.take_dirty()
    assert (w.clicks, w.carts, w.clicked_impressions, w.duplicates) == (1, 1, 1, 1)
    assert a.pending_feedback == 0
    assert a.unattributed == Counter(duplicate=1)


def test_pending_feedback_expires_as_unknown_request_once_predictions_pass_its_deadline() -> None:
    a = Attribution(pending_grace_s=60, max_clock_skew_s=5)
    a.add_feedback(fb("f2", "r1", "a", t_s=90))
    a.add_feedback(fb("f1", "r1", "a", t_s=100))  # a later event of the request: it waits longer
    a.add_feedback(fb("f1", "r1", "a", t_s=100))
    a.add_prediction(pred("other", 165))  # watermark == deadline (latest ts + skew + grace): still waiting
    assert a.pending_feedback == 3
    a.add_prediction(pred("other2", 165.000001))
    assert a.pending_feedback == 0
    assert a.unattributed == Counter(unknown_request=2, duplicate=1)
    a.add_prediction(pred("r1", 99))  # too late for its feedback: counted once, never again
    assert a.unattributed == Counter(unknown_request=2, duplicate=1)
    assert sum(w.clicks for w in a.take_dirty()) == 0


def test_pending_feedback_is_bounded_earliest_deadline_first() -> None:
    a = Attribution(max_pending=2)
    a.add_feedback(fb("f1", "late", "a", t_s=50))
    a.add_feedback(fb("f2", "early", "a", t_s=10))
    a.add_feedback(fb("f3", "mid", "a", t_s=30))
    assert a.pending_feedback == 2 and a.unattributed == Counter(unknown_request=1)
    a.add_prediction(pred("late", 40))
    a.add_prediction(pred("mid", 20))
    assert sum(w.clicks for w in a.take_dirty()) == 2


def test_failed_and_empty_predictions_make_no_impressions() -> None:
    a = Attribution()
    a.add_prediction(pred("r1", status=14))
    a.add_prediction(pred("r2", items=()))
    a.add_prediction(InferenceEvent(event_id="x", request_id="r3", model="ranker", item_ids=["a"]))  # no time
    assert a.take_dirty() == []
    a.add_feedback(fb("f1", "r1", "a"))
    a.flush_pending()
    assert a.unattributed == Counter(unknown_request=1)
    assert a.skipped_predictions == Counter(error=1, no_items=1, invalid=1)


def test_redelivered_prediction_counts_once_and_a_reused_request_id_keeps_the_first() -> None:
    a = Attribution()
    a.add_prediction(pred("r1", items=("a", "b", "a")))  # repeated candidates: one impression each
    a.add_prediction(pred("r1", items=("a", "b")))
    a.add_prediction(pred("r1", items=("x", "y", "z"), event_id="another"))
    [w] = a.take_dirty()
    assert w.impressions == 2
    assert a.skipped_predictions == Counter(duplicate=1, request_id_reused=1)


def test_canary_and_stable_are_separate_rows() -> None:
    a = Attribution()
    a.add_prediction(pred("s1", 1))
    a.add_prediction(pred("s2", 2))
    a.add_prediction(pred("c1", 3, label="canary", version=2))
    a.add_feedback(fb("f1", "s1", "a"))
    a.add_feedback(fb("f2", "c1", "a"))
    a.add_feedback(fb("f3", "c1", "b"))
    rows = collect(a)
    stable, canary = rows[window_at(0)], rows[window_at(0, "canary", 2)]
    assert (stable.impressions, stable.clicked_impressions, stable.ctr) == (8, 1, 0.125)
    assert (canary.impressions, canary.clicked_impressions, canary.ctr) == (4, 2, 0.5)


def test_late_feedback_updates_the_prediction_window_and_is_dirty_again() -> None:
    a = Attribution()
    a.add_prediction(pred("r1", 10))
    a.add_feedback(fb("f1", "r1", "a", t_s=20))
    [first] = a.take_dirty()
    assert first.key == window_at(0) and first.clicks == 1
    for minute in range(1, 25):
        a.add_prediction(pred(f"later{minute}", minute * 60))
    assert window_at(0) not in collect(a)
    a.add_feedback(fb("f2", "r1", "b", BUY, t_s=20 * 60))  # 20 minutes later: still the minute of the prediction
    [again] = a.take_dirty()
    assert again.key == window_at(0)
    assert (again.impressions, again.clicks, again.buys, again.bought_impressions) == (4, 1, 1, 1)


def test_explicit_impressions_replace_the_ranked_list_for_their_request() -> None:
    a = Attribution()
    a.add_prediction(pred("r1", items=("a", "b", "c", "d", "e", "f")))
    a.add_prediction(pred("r2"))
    a.add_feedback(fb("f1", "r1", "c", CLICK))
    assert collect(a)[window_at(0)].impressions == 10
    a.add_feedback(fb("f2", "r1", "a", IMPRESSION))
    a.add_feedback(fb("f3", "r1", "b", IMPRESSION))
    a.add_feedback(fb("f4", "r1", "b", IMPRESSION))  # shown twice: one impression
    a.add_feedback(fb("f5", "r1", "e", CART))  # engaged but not reported: it was shown
    w = collect(a)[window_at(0)]
    assert w.impressions == 4 + 4  # r1: a, b, c (clicked), e (carted); r2: all four ranked items
    assert (w.clicked_impressions, w.carted_impressions) == (1, 1)
    assert a.unattributed == Counter()


def test_memory_is_bounded_by_the_attribution_window_plus_lateness() -> None:
    a = Attribution(attribution_window_s=600, allowed_lateness_s=60)
    for t in range(3 * 3600):  # one prediction per second for three hours
        a.add_prediction(pred(f"r{t}", t))
        assert a.live_predictions <= 661
        if t % 600 == 0:
            a.take_dirty()
    assert a.live_predictions == 661
    assert len(a._windows) <= 12  # the windows of the retained 11 minutes (one may be partial)
    a.add_feedback(fb("f1", "r0", "a", t_s=10))  # its prediction is gone
    a.add_prediction(pred("old", 3 * 3600 - 700))  # behind the horizon: skipped, not a fresh partial window
    a.flush_pending()
    assert a.unattributed == Counter(unknown_request=1)
    assert a.skipped_predictions == Counter(late=1)
    assert all(w.window_start >= T0_S + 3 * 3600 - 720 for w in a.take_dirty())


def test_snapshot_round_trips_through_json_mid_stream() -> None:
    events = _random_stream(random.Random(7), n_predictions=40)
    whole = Attribution(pending_grace_s=30, attribution_window_s=300, allowed_lateness_s=30)
    rows_whole = _run(whole, events)
    first = Attribution(pending_grace_s=30, attribution_window_s=300, allowed_lateness_s=30)
    half = len(events) // 2
    rows = _run(first, events[:half], flush=False)
    second = Attribution(pending_grace_s=30, attribution_window_s=300, allowed_lateness_s=30)
    second.restore(json.loads(json.dumps(first.snapshot())))
    rows = _run(second, events[half:], into=rows)
    assert rows == rows_whole
    assert second.unattributed == whole.unattributed
    assert second.snapshot() == whole.snapshot()


def test_restore_rejects_an_unknown_snapshot_version() -> None:
    with pytest.raises(ValueError, match="version"):
        Attribution().restore({"version": 99})


# -- random interleavings against a brute-force join -------------------------------------------------------------


def _random_stream(rng: random.Random, n_predictions: int) -> list[InferenceEvent | FeedbackEvent]:
    events: list[InferenceEvent | FeedbackEvent] = []
    for i in range(n_predictions):
        t = i * 7.5
        events.append(pred(f"r{i}", t, rng.sample("abcdefgh", 4), label=rng.choice(["stable", "canary"])))
        for j in range(rng.randrange(4)):
            events.append(fb(f"f{i}.{j}", f"r{rng.randrange(i + 2)}", rng.choice("abcdefgh"), rng.randint(1, 5), t + j))
    return events


def _run(
    a: Attribution,
    events: Iterable[InferenceEvent | FeedbackEvent],
    *,
    flush: bool = True,
    into: dict[WindowKey, BusinessWindow] | None = None,
    take_every: int = 5,
) -> dict[WindowKey, BusinessWindow]:
    rows = {} if into is None else into
    for n, ev in enumerate(events):
        if isinstance(ev, InferenceEvent):
            a.add_prediction(ev)
        else:
            a.add_feedback(ev)
        if n % take_every == 0:
            collect(a, rows)
    if flush:
        a.flush_pending()
    return collect(a, rows)


@dataclass
class _RefRequest:
    ev: InferenceEvent
    seen: set[str]
    explicit: set[str] | None
    actions: dict[str, set[int]]


def reference(
    predictions: Sequence[InferenceEvent],
    feedback: Sequence[FeedbackEvent],
    *,
    window_us: int = 1800 * S,
    skew_us: int = 5 * S,
) -> tuple[dict[WindowKey, BusinessWindow], Counter[str]]:
    """All predictions first, then all feedback; impressions computed at the end from the final sets."""
    requests: dict[str, _RefRequest] = {}
    for ev in predictions:
        if ev.status_code == 0 and ev.item_ids and ev.request_id not in requests:
            requests[ev.request_id] = _RefRequest(ev, set(), None, {})
    unattributed: Counter[str] = Counter()
    windows: dict[WindowKey, BusinessWindow] = {}
    for r in requests.values():
        start = r.ev.received_us // S // 60 * 60
        key = (start, r.ev.model, r.ev.version, r.ev.label)
        windows.setdefault(key, BusinessWindow(*key))
    unknown_ids: dict[str, set[str]] = {}

    def window_of(r: _RefRequest) -> BusinessWindow:
        return windows[(r.ev.received_us // S // 60 * 60, r.ev.model, r.ev.version, r.ev.label)]

    for f in feedback:
        if not (f.event_id and f.request_id and f.item_id and f.ts_us > 0 and f.behavior in (1, 2, 3, 4, 5)):
            unattributed["invalid"] += 1
            continue
        req = requests.get(f.request_id)
        if req is None:
            ids = unknown_ids.setdefault(f.request_id, set())
            unattributed["duplicate" if f.event_id in ids else "unknown_request"] += 1
            ids.add(f.event_id)
            continue
        r = req
        w = window_of(r)
        if f.event_id in r.seen:
            unattributed["duplicate"] += 1
            w.duplicates += 1
            continue
        r.seen.add(f.event_id)
        if f.item_id not in r.ev.item_ids:
            unattributed["item_not_shown"] += 1
            w.not_shown += 1
        elif not -skew_us <= f.ts_us - r.ev.received_us <= window_us:
            unattributed["outside_window"] += 1
            w.outside_window += 1
        elif f.behavior == IMPRESSION:
            r.explicit = (r.explicit or set()) | {f.item_id}
        else:
            r.actions.setdefault(f.item_id, set()).add(f.behavior)
            name = {CLICK: "clicks", CART: "carts", FAV: "favs", BUY: "buys"}[f.behavior]
            setattr(w, name, getattr(w, name) + 1)
    for r in requests.values():
        w = window_of(r)
        ranked = set(r.ev.item_ids)
        w.impressions += len(ranked) if r.explicit is None else len(r.explicit | set(r.actions))
        for behaviour, name in [(CLICK, "clicked"), (CART, "carted"), (FAV, "faved"), (BUY, "bought")]:
            field = f"{name}_impressions"
            setattr(w, field, getattr(w, field) + sum(behaviour in b for b in r.actions.values()))
    return windows, unattributed


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[InferenceEvent], list[FeedbackEvent], list[InferenceEvent | FeedbackEvent]]:
    n = draw(st.integers(1, 6))
    predictions = []
    for i in range(n):
        items = draw(st.lists(st.sampled_from("abcdef"), max_size=5))
        label = draw(st.sampled_from(["stable", "canary"]))
        status = draw(st.sampled_from([0, 0, 0, 13]))
        predictions.append(
            pred(f"r{i}", draw(st.integers(0, 300)), items, label=label, version=len(label), status=status)
        )
    predictions += draw(st.lists(st.sampled_from(predictions), max_size=3))  # redeliveries
    feedback = []
    for j in range(draw(st.integers(0, 25))):
        rid = f"r{draw(st.integers(0, n + 1))}"  # r{n} and r{n+1} were never predicted
        item = draw(st.sampled_from("abcdefg"))
        behavior = draw(st.sampled_from([0, 1, 2, 2, 2, 3, 4, 5]))
        t = draw(st.sampled_from([-6, -5, 0, 30, 600, 1805, 1806, 2000, 2200]))
        feedback.append(fb(f"f{j}", rid, item, behavior, t))
    if feedback:
        feedback += draw(st.lists(st.sampled_from(feedback), max_size=5))  # redeliveries
    merged: list[InferenceEvent | FeedbackEvent] = [*predictions, *feedback]
    order = draw(st.permutations(range(len(merged))))
    return predictions, feedback, [merged[k] for k in order]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.integers(1, 7))
def test_any_interleaving_matches_the_brute_force_join(
    case: tuple[list[InferenceEvent], list[FeedbackEvent], list[InferenceEvent | FeedbackEvent]], take_every: int
) -> None:
    predictions, feedback, interleaved = case
    a = Attribution(pending_grace_s=10**6, allowed_lateness_s=10**6)  # nothing expires or is evicted
    rows = _run(a, interleaved, take_every=take_every)
    expected_rows, expected_unattributed = reference(predictions, feedback)
    assert rows == expected_rows
    assert a.unattributed == expected_unattributed
    assert a.pending_feedback == 0


# -- real shopper behaviour ----------------------------------------------------------------------------------------


Rows = list[tuple[int, int, int, int, int]]


@pytest.fixture(scope="module")
def taobao() -> tuple[Rows, Replay]:
    if not TAOBAO.is_dir():
        pytest.skip(f"Taobao UserBehavior slice not found at {TAOBAO}")
    from training.taobao import load_userbehavior

    b = load_userbehavior(TAOBAO / "UserBehavior_timeslice.csv").behaviors
    rows = list(zip(*(c.tolist() for c in (b.user, b.item, b.category, b.behavior, b.timestamp)), strict=True))
    return rows, replay_from_rows(rows, candidates=32)


@pytest.mark.parametrize("order", ["event_time", "feedback_topic_first"])
def test_taobao_ctr_matches_the_hand_computed_ratio(order: str, taobao: tuple[Rows, Replay]) -> None:
    rows, replay = taobao
    # feedback_topic_first: the inference consumer lags far behind, so every feedback event waits as pending
    events: list[InferenceEvent | FeedbackEvent] = [*replay.feedback, *replay.predictions]
    if order == "event_time":
        events = replay.in_time_order()
    a = Attribution(max_pending=len(rows))
    totals: dict[str, Counter[str]] = {"stable": Counter(), "canary": Counter()}
    for w in _run(a, events, take_every=1000).values():
        totals[w.label].update(impressions=w.impressions, clicks=w.clicks, clicked=w.clicked_impressions)
        totals[w.label].update(carted=w.carted_impressions, bought=w.bought_impressions)
    assert a.unattributed == Counter()

    by_request: dict[str, dict[tuple[int, int], set[int]]] = {"stable": {}, "canary": {}}
    expected = {label: Counter[str]() for label in by_request}
    distinct: set[tuple[tuple[int, int], int, int]] = set()
    for user, item, _, behavior, ts in rows:
        label = "canary" if user % 10 == 0 else "stable"
        req = request_of(user, ts)
        by_request[label].setdefault(req, set()).add(item)
        expected[label]["clicks"] += behavior == CLICK
        distinct.add((req, item, behavior))
    for req, _item, behavior in distinct:
        label = "canary" if req[0] % 10 == 0 else "stable"
        name = {int(CLICK): "clicked", int(CART): "carted", int(BUY): "bought"}.get(behavior)
        if name:
            expected[label][name] += 1
    for label, requests in by_request.items():
        assert max(len(items) for items in requests.values()) <= 32  # so every request ranks exactly 32 items
        expected[label]["impressions"] = 32 * len(requests)
        assert totals[label] == expected[label]
        ctr = totals[label]["clicked"] / totals[label]["impressions"]
        assert ctr == expected[label]["clicked"] / (32 * len(requests))
        assert 0.0 < ctr < 1.0
