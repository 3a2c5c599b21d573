"""Both arms of a rollout, per closed window, from the store: what ``rollout.reconcile.Windows`` reads.

The arms are the traffic the model server routed to each label: requests without a version are split between
``stable`` and ``canary`` by the canary weight, and every event says which label served it. So per window the
controller compares the two labels of one model on the same minutes of traffic:

- requests, errors and latency from ``inference_metrics_10s_parts`` (the worker's partial rows, merged here
  exactly, sketches included — ``stream_processors.sketch``), 10 s rows gathered into ``window_s`` windows;
- impressions and clicked impressions from ``business_metrics_1m`` (feedback keeps arriving for 30 minutes,
  but both arms of a minute are equally incomplete, so their CTRs compare);
- ``canary_slower``: the canary's requests slower than ``latency_tolerance`` x stable's p99 of that window.

A window is returned once it is published (``metrics_emitted``: the worker's watermark passed it).
"""

from __future__ import annotations

from collections.abc import Sequence

from rollout.compare import ArmStats
from rollout.reconcile import WindowPair
from store.base import Store
from store.sql import string_literal
from stream_processors.window_rows import STATE_SELECT, WindowState, key_of_row, state_of_row

ARMS = ("stable", "canary")


class StoreWindows:
    def __init__(self, store: Store, *, window_s: int = 60, latency_tolerance: float = 1.2) -> None:
        if window_s % 10:
            raise ValueError("window_s must be a multiple of the worker's 10 s windows")
        self.store = store
        self.window_s = window_s
        self.latency_tolerance = latency_tolerance

    def since(self, model: str, canary: int, window_us: int) -> Sequence[WindowPair]:
        start_s = window_us // 1_000_000 // self.window_s * self.window_s
        published = self.store.query(
            "SELECT max(toUInt32(through)) FROM metrics_emitted WHERE stream = 'inference_10s'"
        ).scalar()
        last_s = (int(published or 0) + 10) // self.window_s * self.window_s - self.window_s  # whole windows only
        if last_s < start_s:
            return []
        rows = self.store.query(
            f"SELECT {', '.join(STATE_SELECT)} FROM inference_metrics_10s_parts FINAL "
            f"WHERE model = {string_literal(model)} AND label IN ('stable', 'canary') "
            f"AND toUInt32(window_start) >= {start_s} AND toUInt32(window_start) < {last_s + self.window_s}"
        ).rows
        arms: dict[tuple[int, str], WindowState] = {}
        for row in rows:
            start, _, version, label, _, _ = key_of_row(row)
            if label == "canary" and version != canary:
                continue  # an earlier canary's last requests
            key = (start // self.window_s * self.window_s, label)
            state = state_of_row(row)
            if key in arms:
                arms[key].merge(state)
            else:
                arms[key] = state
        feedback = self.store.query(
            "SELECT toUInt32(window_start), label, version, sum(impressions), sum(clicked_impressions) "
            f"FROM business_metrics_1m WHERE model = {string_literal(model)} AND label IN ('stable', 'canary') "
            f"AND toUInt32(window_start) >= {start_s} AND toUInt32(window_start) < {last_s + self.window_s} "
            "GROUP BY window_start, label, version"
        ).rows
        shown: dict[tuple[int, str], tuple[int, int]] = {}
        for minute, label, version, impressions, clicks in feedback:
            if label == "canary" and int(version) != canary:
                continue
            key = (int(minute) // self.window_s * self.window_s, str(label))
            old = shown.get(key, (0, 0))
            shown[key] = (old[0] + int(impressions), old[1] + int(clicks))
        pairs = []
        for start in range(start_s, last_s + 1, self.window_s):
            stable, canary_state = arms.get((start, "stable")), arms.get((start, "canary"))
            if stable is None or canary_state is None:
                continue
            p99 = stable.latency.quantile(0.99) if stable.latency.count else 0.0
            pairs.append(
                WindowPair(
                    start * 1_000_000,
                    _arm(stable, 0, shown.get((start, "stable"), (0, 0))),
                    _arm(
                        canary_state,
                        canary_state.latency.count_above(p99 * self.latency_tolerance),
                        shown.get((start, "canary"), (0, 0)),
                    ),
                )
            )
        return pairs


def _arm(state: WindowState, slower: int, feedback: tuple[int, int]) -> ArmStats:
    p99 = state.latency.quantile(0.99) if state.latency.count else 0.0
    return ArmStats(state.requests, state.errors, p99, slower, feedback[0], feedback[1])
