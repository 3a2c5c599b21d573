"""The demo's closed-loop timeline: rows from model updates and alerts, in time order with wall clock and elapsed
seconds; the lineage from an alert to the promoted version; the number of windows until a rollback."""

from __future__ import annotations

from datetime import UTC, datetime

from recwatch.demo_closed_loop import AlertRow, Entry, alert_entry, lineage, timeline_lines, update_entry, windows_until
from schemas import ModelUpdate

T0 = datetime(2026, 1, 2, 12, 0, 0, tzinfo=UTC).timestamp()
US = 1_000_000


def _u(kind: int, uid: str, caused_by: str, actor: str, **kw: object) -> ModelUpdate:
    return ModelUpdate(update_id=uid, model="ranker", kind=kind, caused_by=caused_by, actor=actor, **kw)  # type: ignore[arg-type]


UPDATES = [
    _u(ModelUpdate.RETRAIN_REQUESTED, "r" * 24, "f" * 16, "rules", parent_version=1),
    _u(ModelUpdate.EVALUATED, "e" * 24, "r" * 24, "trainer", version=2, parent_version=1,
       metrics={"auc": 0.71, "stable_auc": 0.7, "accepted": 1.0}),
    _u(ModelUpdate.DEPLOY_REQUESTED, "d" * 24, "r" * 24, "trainer", version=2),
    _u(ModelUpdate.CANARY_DEPLOYED, "c" * 24, "d" * 24, "controller", version=2, canary_weight=0.25),
    _u(ModelUpdate.PROMOTED, "p" * 24, "d" * 24, "controller", version=2, ts_us=int(T0 + 300) * US,
       reason="1 healthy windows at the last step (weight 0.5)"),
]  # fmt: skip


def test_rows_are_in_time_order_with_clock_and_elapsed_seconds() -> None:
    alert = AlertRow("f" * 16, "RecwatchScoreMeanDrift", "ranker", 1, "stable", int(T0 + 20) * US, int(T0 + 45) * US,
                     "mean prediction score of ranker v1 (stable) is 0.32")  # fmt: skip
    entries = [update_entry(u, T0 + 100 + 60 * i) for i, u in enumerate(UPDATES)]
    entries += [alert_entry(alert), Entry(T0, "demo", "drift on")]

    lines = timeline_lines(reversed(entries), T0)

    assert lines[0] == "12:00:00     +0.0s  demo        drift on"
    assert lines[1].startswith("12:00:45    +45.0s  alerter     FIRING RecwatchScoreMeanDrift ranker v1 (stable), ")
    assert "first anomalous window 12:00:20" in lines[1]
    assert lines[2] == (
        "12:01:40   +100.0s  rules       RETRAIN_REQUESTED of v1, id rrrrrrrr, caused by alert ffffffff"
    )
    assert lines[3].endswith("EVALUATED v2 AUC 0.710 vs stable v1 0.700: accepted")
    assert lines[5].endswith("CANARY_DEPLOYED v2 weight 0.25 id cccccccc")
    assert lines[6] == (
        "12:05:40   +340.0s  controller  PROMOTED v2 (window 12:05:00: 1 healthy windows at the last step (weight 0.5))"
    )


def test_lineage_follows_caused_by_from_the_alert_to_the_promotion() -> None:
    assert lineage(UPDATES, "f" * 16) == [
        "alert ffffffff", "RETRAIN_REQUESTED rrrrrrrr", "DEPLOY_REQUESTED dddddddd (v2)", "CANARY_DEPLOYED v2",
        "PROMOTED v2",
    ]  # fmt: skip
    assert lineage(UPDATES, "0" * 16) == ["alert 00000000"]


def test_windows_until_a_rollback_count_from_the_first_whole_window_of_the_canary() -> None:
    live = int(T0 + 12) * US  # canary at 12:00:12: the first judged 30 s window starts 12:00:30
    assert windows_until(live, int(T0 + 30) * US, 30) == 1
    assert windows_until(live, int(T0 + 90) * US, 30) == 3
    assert windows_until(int(T0) * US, int(T0) * US, 30) == 1
