"""Business metrics: shop feedback joined to the impressions of each prediction, per 1-minute window.

Pure logic, driven only by the event times it is given (no clock, no I/O). One :class:`Attribution` holds the
state of one Kafka partition: ``recwatch.inference.v1`` and ``recwatch.feedback.v1`` are both keyed by
``request_id`` with the same partition count, so a prediction and all of its feedback reach the same worker
(co-partitioned) and partitions never need each other's state. Rows of different partitions for the same window
are summed by the reader, so the table's key includes the partition (as in ``inference_metrics_10s_parts``).

Rules (deterministic given the input order):

- **Impressions.** A successful prediction (``status_code == 0``, non-empty ``item_ids``) makes each distinct
  ranked item one impression of ``(request_id, item)``, attributed to ``(model, version, label)``. If the shop sends
  ``IMPRESSION`` feedback for a request, only the items it reported (plus any item with attributed engagement:
  a click implies it was shown) count for that request from then on; otherwise every ranked item counts.
  The switch is per request and can lower an old window's impressions, which is fine for replacing rows.
- **Attribution.** Feedback is attributed to the live prediction with its ``request_id`` when the item is one of
  the ranked items and ``-max_clock_skew_s <= ts_us - received_us <= attribution_window_s`` (both ends included; the
  skew allowance exists because shop and server clocks differ, and an impression happens milliseconds after the
  response). ``clicks``/``carts``/``favs``/``buys`` count events; ``*_impressions`` count distinct
  ``(request_id, item)`` pairs, so ``ctr = clicked_impressions / impressions`` is at most 1.
- **Unattributed** feedback is counted in :attr:`Attribution.unattributed` by reason, checked in this order:
  ``invalid`` (missing ``event_id``/``request_id``/``item_id``, ``ts_us <= 0``, unspecified or unknown behaviour),
  ``duplicate`` (an ``event_id`` already seen for the request), ``item_not_shown`` (not among the ranked items),
  ``outside_window``, ``unknown_request`` (no live successful prediction with that ``request_id`` appeared in
  time: never logged, failed, evicted, or arrived too late). The first three that know the prediction are also
  counted in its window (``not_shown``, ``outside_window``, ``duplicates``).
- **Windows** are those of the *prediction's* event time: a click 20 minutes later still counts in the minute the
  model ranked the item, so canary and stable CTRs compare the same traffic. A window keeps changing until
  ``attribution_window_s + allowed_lateness_s`` after it ends; ``take_dirty()`` returns it again each time.
- **Out of order.** Feedback whose prediction has not arrived yet is held as pending (replayed through the same
  rules when the prediction comes, so the result does not depend on which topic was read first) until the
  predictions' watermark passes ``max(ts_us) + max_clock_skew_s + pending_grace_s`` of the request's feedback,
  or ``max_pending`` events are pending (the earliest deadline goes first); then it counts as ``unknown_request``.
  Feedback read after its prediction was evicted (its consumer lags the inference consumer by more than
  ``allowed_lateness_s`` past the attribution window) also counts as ``unknown_request``.
- **Watermark** = the largest ``received_us`` seen. Only server clocks drive it: shop timestamps are not trusted
  to move time (one shop with a clock in 2030 must not evict everything).

State bounds: a prediction is kept while ``watermark - received_us <= attribution_window_s + allowed_lateness_s``
(a prediction arriving later than that is skipped as ``late``), so the state holds about
``prediction rate x (attribution_window_s + allowed_lateness_s)`` predictions of 0.7-2.6 KB each with 32
candidates (measured; item ids are interned, so an item ranked for many requests is stored once): 35 minutes at
100 predictions/s is 210,000 predictions, 150-550 MB per partition; less on the ingest fast path, where a
prediction holds no item ids until feedback for it comes (:meth:`Attribution.add_predicted`). Add at most
``max_pending`` pending feedback events and the windows of the same span. Feedback ``event_id`` dedup lasts as
long as the prediction (or the pending entry) it belongs to.

Persistence: :meth:`Attribution.snapshot` is a JSON-able dict; store it with the consumed offsets of both topics
and :meth:`Attribution.restore` it after a restart, then replay from those offsets. Rows from :meth:`take_dirty`
are cumulative, so writing the same window again after a crash replaces the older row.

>>> from schemas import FeedbackEvent, InferenceEvent
>>> a = Attribution()
>>> a.add_prediction(InferenceEvent(event_id="e1", request_id="r1", model="m", version=1, label="canary",
...                                 received_us=120_000_000, item_ids=["a", "b", "c", "d"]))
>>> a.add_feedback(FeedbackEvent(event_id="f1", request_id="r1", item_id="b", behavior=FeedbackEvent.CLICK,
...                              ts_us=130_000_000))
>>> [w] = a.take_dirty()
>>> (w.window_start, w.label, w.impressions, w.clicks, w.ctr)
(120, 'canary', 4, 1, 0.25)
>>> a.take_dirty()
[]
"""

from __future__ import annotations

import heapq
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Final

from schemas import FeedbackEvent, InferenceEvent

if TYPE_CHECKING:
    from stream_processors.protobuf_ingest import PredictionColumns

WindowKey = tuple[int, str, int, str]  # window_start (s), model, version, label

_IMPRESSION: Final = FeedbackEvent.IMPRESSION
_BITS: Final[dict[int, int]] = {
    FeedbackEvent.CLICK: 1,
    FeedbackEvent.CART: 2,
    FeedbackEvent.FAV: 4,
    FeedbackEvent.BUY: 8,
}
_SNAPSHOT_VERSION: Final = 1


@dataclass
class BusinessWindow:
    """Cumulative counts of one (window, model, version, label); a newer one replaces an older one.

    ``window_start`` is in Unix seconds; the ``*_impressions`` fields count distinct ``(request_id, item)`` pairs.
    """

    window_start: int
    model: str
    version: int
    label: str
    impressions: int = 0
    clicks: int = 0
    carts: int = 0
    favs: int = 0
    buys: int = 0
    clicked_impressions: int = 0
    carted_impressions: int = 0
    faved_impressions: int = 0
    bought_impressions: int = 0
    not_shown: int = 0
    outside_window: int = 0
    duplicates: int = 0

    @property
    def key(self) -> WindowKey:
        return (self.window_start, self.model, self.version, self.label)

    @property
    def ctr(self) -> float:
        """Clicked impressions per impression (0.0 without impressions)."""
        return self.clicked_impressions / self.impressions if self.impressions else 0.0

    @property
    def add_to_cart_rate(self) -> float:
        return self.carted_impressions / self.impressions if self.impressions else 0.0

    @property
    def conversion_rate(self) -> float:
        return self.bought_impressions / self.impressions if self.impressions else 0.0


_COUNT_FIELDS: Final = tuple(f.name for f in fields(BusinessWindow))[4:]
# distinct-pair field and event-count field per behaviour bit
_BIT_FIELDS: Final[dict[int, tuple[str, str]]] = {
    1: ("clicked_impressions", "clicks"),
    2: ("carted_impressions", "carts"),
    4: ("faved_impressions", "favs"),
    8: ("bought_impressions", "buys"),
}


class _Prediction:
    __slots__ = ("actions", "event_id", "items", "received_us", "seen", "shown", "window")

    def __init__(self, event_id: str, received_us: int, window: BusinessWindow, items: tuple[str, ...] | None) -> None:
        self.event_id = event_id
        self.received_us = received_us
        self.window = window
        self.items = items  # None until resolved (see Attribution.unresolved)
        self.shown: set[str] | None = None  # None: every ranked item counts as shown
        self.actions: dict[str, int] | None = None  # item -> bits of attributed behaviours
        self.seen: set[str] | None = None  # feedback event ids

    def ranked(self) -> tuple[str, ...]:
        """The distinct ranked items."""
        if self.items is None:
            raise RuntimeError("the prediction's items were never resolved (Attribution.unresolved/resolve)")
        return self.items


class _Pending:
    __slots__ = ("deadline_us", "events")

    def __init__(self) -> None:
        self.deadline_us = 0
        self.events: list[FeedbackEvent] = []


class Attribution:
    """Joins feedback to predictions of one partition; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        window_s: int = 60,
        attribution_window_s: float = 1800,
        pending_grace_s: float = 120,
        allowed_lateness_s: float = 300,
        max_clock_skew_s: float = 5,
        max_pending: int = 100_000,
    ) -> None:
        if window_s <= 0 or attribution_window_s < 0 or pending_grace_s < 0 or allowed_lateness_s < 0:
            raise ValueError("window_s must be positive and the other durations non-negative")
        if max_clock_skew_s < 0 or max_pending < 1:
            raise ValueError("max_clock_skew_s must be non-negative and max_pending positive")
        self.window_s = window_s
        self._window_us = round(attribution_window_s * 1e6)
        self._grace_us = round(pending_grace_s * 1e6)
        self._keep_us = self._window_us + round(allowed_lateness_s * 1e6)
        self._skew_us = round(max_clock_skew_s * 1e6)
        self.max_pending = max_pending
        self.unattributed: Counter[str] = Counter()
        self.skipped_predictions: Counter[str] = Counter()  # error, invalid, no_items, late, duplicate, ...
        self.watermark_us = 0
        self._predictions: dict[str, _Prediction] = {}
        self._by_time: list[tuple[int, str]] = []  # heap of (received_us, request_id) of live predictions
        self._pending: dict[str, _Pending] = {}
        self._pending_heap: list[tuple[int, str]] = []  # (deadline_us, request_id); stale entries skipped
        self._pending_count = 0
        self._windows: dict[WindowKey, BusinessWindow] = {}
        self._dirty: dict[WindowKey, BusinessWindow] = {}

    @property
    def live_predictions(self) -> int:
        return len(self._predictions)

    @property
    def pending_feedback(self) -> int:
        return self._pending_count

    # -- input ---------------------------------------------------------------------------------------------------

    def add_prediction(self, ev: InferenceEvent) -> None:
        """Count the impressions of a prediction, resolve its pending feedback, advance the watermark."""
        items = tuple(dict.fromkeys(map(sys.intern, ev.item_ids)))
        self.add_predicted(
            ev.request_id,
            ev.event_id,
            ev.received_us,
            ev.model,
            ev.version,
            ev.label,
            ev.status_code,
            items,
            len(items),
        )

    def add_predicted(
        self,
        request_id: str,
        event_id: str,
        received: int,
        model: str,
        version: int,
        label: str,
        status_code: int,
        items: tuple[str, ...] | None,
        n_items: int,
    ) -> None:
        """:meth:`add_prediction` from the fields it reads: ``items``, the distinct ranked items (``n_items`` of
        them), may be None when no feedback for the request is pending: the caller then resolves them
        (:meth:`unresolved`, :meth:`resolve`) before feeding feedback for it, which most predictions never get. The
        ingest fast path does that: the items stay in the store until needed."""
        if received <= 0 or not request_id or not model:
            self.skipped_predictions["invalid"] += 1
            return
        if received > self.watermark_us:
            self.watermark_us = received
        if status_code != 0:
            self.skipped_predictions["error"] += 1
        elif not n_items:
            self.skipped_predictions["no_items"] += 1
        elif received < self.watermark_us - self._keep_us:
            self.skipped_predictions["late"] += 1
        elif (known := self._predictions.get(request_id)) is not None:
            self.skipped_predictions["duplicate" if known.event_id == event_id else "request_id_reused"] += 1
        else:
            self._add(request_id, event_id, received, model, version, label, items, n_items)
        self._advance()

    def add_predictions(
        self, columns: PredictionColumns, start: int, end: int, items: dict[str, tuple[str, ...]] | None = None
    ) -> None:
        """:meth:`add_predicted` for rows ``start:end`` of the ingest fast path's columns; ``items`` must hold the
        items of every request among them with pending feedback (:meth:`pending_requests`)."""
        c, add, known = columns, self.add_predicted, items or {}
        for request_id, event_id, received, model, version, label, status, n_items in zip(
            c.request_id[start:end],
            c.event_id[start:end],
            c.received_us[start:end],
            c.model[start:end],
            c.version[start:end],
            c.label[start:end],
            c.status_code[start:end],
            c.n_items[start:end],
            strict=True,
        ):
            add(request_id, event_id, received, model, version, label, status, known.get(request_id), n_items)

    def pending_requests(self) -> set[str]:
        """Request ids with feedback waiting for their prediction (its items are needed when it arrives)."""
        return set(self._pending)

    def unresolved(self, request_ids: Iterable[str]) -> list[tuple[str, tuple[str, int, str, int]]]:
        """``(request_id, (model, version, event_id, received_us))`` of the live predictions among ``request_ids``
        whose items are not known yet (see :meth:`add_predicted`)."""
        out = []
        for rid in set(request_ids):
            p = self._predictions.get(rid)
            if p is not None and p.items is None:
                out.append((rid, (p.window.model, p.window.version, p.event_id, p.received_us)))
        return out

    def resolve(self, request_id: str, items: Iterable[str]) -> None:
        """Set a prediction's ranked items (from the store: ``()`` if it no longer has them)."""
        p = self._predictions.get(request_id)
        if p is not None and p.items is None:
            p.items = tuple(dict.fromkeys(map(sys.intern, items)))

    def _add(
        self,
        request_id: str,
        event_id: str,
        received: int,
        model: str,
        version: int,
        label: str,
        items: tuple[str, ...] | None,
        n_items: int,
    ) -> None:
        start = received // 1_000_000 // self.window_s * self.window_s
        key = (start, model, version, label)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = BusinessWindow(start, model, version, label)
        p = self._predictions[request_id] = _Prediction(event_id, received, window, items)
        heapq.heappush(self._by_time, (received, request_id))
        window.impressions += n_items
        self._dirty[key] = window
        pending = self._pending.pop(request_id, None)
        if pending is not None:
            self._pending_count -= len(pending.events)
            for fb in pending.events:
                self._attribute(p, fb)

    def add_feedback(self, fb: FeedbackEvent) -> None:
        """Attribute one feedback event, or count why not, or hold it until its prediction arrives."""
        if not fb.event_id or not fb.request_id or not fb.item_id or fb.ts_us <= 0:
            self.unattributed["invalid"] += 1
            return
        if fb.behavior != _IMPRESSION and fb.behavior not in _BITS:
            self.unattributed["invalid"] += 1
            return
        p = self._predictions.get(fb.request_id)
        if p is not None:
            self._attribute(p, fb)
            return
        pending = self._pending.get(fb.request_id)
        if pending is None:
            pending = self._pending[fb.request_id] = _Pending()
        pending.events.append(fb)
        self._pending_count += 1
        deadline = fb.ts_us + self._skew_us + self._grace_us
        if deadline > pending.deadline_us:
            pending.deadline_us = deadline
            heapq.heappush(self._pending_heap, (deadline, fb.request_id))
        while self._pending_count > self.max_pending:
            self._expire_first()

    def flush_pending(self) -> None:
        """Count every pending feedback event as ``unknown_request`` (at the end of a replay)."""
        while self._pending_heap:
            self._expire_first()

    # -- output --------------------------------------------------------------------------------------------------

    def take_dirty(self) -> list[BusinessWindow]:
        """Copies of the windows changed since the last call, with their full current counts, in key order."""
        dirty, self._dirty = self._dirty, {}
        return [replace(dirty[k]) for k in sorted(dirty)]

    # -- internals -----------------------------------------------------------------------------------------------

    def _attribute(self, p: _Prediction, fb: FeedbackEvent) -> None:
        w = p.window
        if p.seen is None:
            p.seen = {fb.event_id}
        elif fb.event_id in p.seen:
            self.unattributed["duplicate"] += 1
            w.duplicates += 1
            self._dirty[w.key] = w
            return
        else:
            p.seen.add(fb.event_id)
        item = fb.item_id
        if item not in p.ranked():
            self.unattributed["item_not_shown"] += 1
            w.not_shown += 1
        elif not -self._skew_us <= fb.ts_us - p.received_us <= self._window_us:
            self.unattributed["outside_window"] += 1
            w.outside_window += 1
        elif fb.behavior == _IMPRESSION:
            if p.shown is None:  # the shop reports impressions: count only those (and engaged items) from now on
                p.shown = set(p.actions or ())
                p.shown.add(item)
                w.impressions += len(p.shown) - len(p.ranked())
            elif item not in p.shown:
                p.shown.add(item)
                w.impressions += 1
        else:
            bit = _BITS[fb.behavior]
            distinct_field, count_field = _BIT_FIELDS[bit]
            setattr(w, count_field, getattr(w, count_field) + 1)
            if p.actions is None:
                p.actions = {}
            bits = p.actions.get(item, 0)
            if not bits & bit:
                p.actions[item] = bits | bit
                setattr(w, distinct_field, getattr(w, distinct_field) + 1)
            if p.shown is not None and item not in p.shown:
                p.shown.add(item)
                w.impressions += 1
        self._dirty[w.key] = w

    def _advance(self) -> None:
        """Evict predictions and windows behind the horizon; expire pending feedback past its deadline."""
        horizon = self.watermark_us - self._keep_us
        by_time = self._by_time
        if by_time and by_time[0][0] < horizon:
            while by_time and by_time[0][0] < horizon:
                _, request_id = heapq.heappop(by_time)
                del self._predictions[request_id]
            # a window ending at or before the horizon holds no live prediction and takes no late one
            for key in [k for k in self._windows if (k[0] + self.window_s) * 1_000_000 <= horizon]:
                del self._windows[key]  # a dirty copy stays in self._dirty until taken
        heap = self._pending_heap
        while heap and heap[0][0] < self.watermark_us:
            self._expire_first()

    def _expire_first(self) -> None:
        deadline, request_id = heapq.heappop(self._pending_heap)
        pending = self._pending.get(request_id)
        if pending is None or pending.deadline_us != deadline:
            return  # resolved, or its deadline moved later
        del self._pending[request_id]
        self._pending_count -= len(pending.events)
        seen: set[str] = set()
        for fb in pending.events:
            self.unattributed["duplicate" if fb.event_id in seen else "unknown_request"] += 1
            seen.add(fb.event_id)

    # -- persistence ---------------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain lists, dicts, strings and ints (JSON-able)."""
        return {
            "version": _SNAPSHOT_VERSION,
            "watermark_us": self.watermark_us,
            "unattributed": dict(self.unattributed),
            "skipped_predictions": dict(self.skipped_predictions),
            "windows": [[*k, *(getattr(w, f) for f in _COUNT_FIELDS)] for k, w in self._windows.items()],
            "dirty": [[*k, *(getattr(w, f) for f in _COUNT_FIELDS)] for k, w in self._dirty.items()],
            "predictions": [
                [
                    rid,
                    p.event_id,
                    p.received_us,
                    list(p.window.key),
                    None if p.items is None else list(p.items),
                    None if p.shown is None else sorted(p.shown),
                    p.actions,
                    None if p.seen is None else sorted(p.seen),
                ]
                for rid, p in self._predictions.items()
            ],
            "pending": [
                [
                    rid,
                    pe.deadline_us,
                    [[f.event_id, f.user_id, f.item_id, f.category_id, f.behavior, f.ts_us] for f in pe.events],
                ]
                for rid, pe in self._pending.items()
            ],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the state with one from :meth:`snapshot` (of an instance with the same configuration)."""
        if state.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"unsupported attribution snapshot version {state.get('version')!r}")
        self.watermark_us = int(state["watermark_us"])
        self.unattributed = Counter(state["unattributed"])
        self.skipped_predictions = Counter(state["skipped_predictions"])
        self._windows = {w.key: w for w in map(_window_from_row, state["windows"])}
        self._dirty = {}
        for row in state["dirty"]:
            w = _window_from_row(row)
            self._dirty[w.key] = self._windows.get(w.key, w)  # still live: the same object keeps counting
        self._predictions = {}
        for rid, event_id, received, key, items, shown, actions, seen in state["predictions"]:
            start, model, version, label = key
            window = self._windows[(start, model, version, label)]
            p = _Prediction(event_id, received, window, None if items is None else tuple(items))
            p.shown = None if shown is None else set(shown)
            p.actions = actions
            p.seen = None if seen is None else set(seen)
            self._predictions[rid] = p
        self._by_time = [(p.received_us, rid) for rid, p in self._predictions.items()]
        heapq.heapify(self._by_time)
        self._pending = {}
        self._pending_count = 0
        for rid, deadline, events in state["pending"]:
            pe = self._pending[rid] = _Pending()
            pe.deadline_us = deadline
            pe.events = [
                FeedbackEvent(event_id=e, request_id=rid, user_id=u, item_id=i, category_id=c, behavior=b, ts_us=t)
                for e, u, i, c, b, t in events
            ]
            self._pending_count += len(pe.events)
        self._pending_heap = [(pe.deadline_us, rid) for rid, pe in self._pending.items()]
        heapq.heapify(self._pending_heap)


def _window_from_row(row: list[Any]) -> BusinessWindow:
    start, model, version, label, *counts = row
    return BusinessWindow(start, model, version, label, **dict(zip(_COUNT_FIELDS, counts, strict=True)))
