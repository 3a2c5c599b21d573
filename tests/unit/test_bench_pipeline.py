"""Pure parts of ``recwatch bench pipeline``: the synthetic events, the rate and lag math, the table."""

from __future__ import annotations

import math

import pytest

from benchmarks.pipeline.events import CANDIDATES, ROUTES, Sent, synthetic_events
from benchmarks.pipeline.stats import Row, format_table, percentile, visibility_lags
from schemas import InferenceEvent


def test_synthetic_events_decode_with_the_server_shape() -> None:
    end_us = 1_800_000_000_000_000
    pairs = list(synthetic_events(2000, seed=3, end_us=end_us, span_s=60))
    events = [InferenceEvent.FromString(value) for _, value in pairs]
    assert [key for key, _ in pairs] == [e.request_id.encode() for e in events]
    assert len({e.event_id for e in events}) == 2000
    ok = [e for e in events if e.status_code == 0]
    assert 1900 < len(ok) < 2000  # ~0.5 % errors
    for e in ok:
        assert e.rows == CANDIDATES and len(e.item_ids) == CANDIDATES
        (out,) = e.outputs
        assert out.count == CANDIDATES and len(out.head) == CANDIDATES
        assert out.min <= out.mean <= out.max
        assert e.latency.total_us >= e.latency.compute_us > 0 and e.sent_us == e.received_us + e.latency.total_us
    assert all(e.error and not e.outputs for e in events if e.status_code != 0)
    assert {(e.model, e.version, e.label) for e in events} == {(r.model, r.version, r.label) for r in ROUTES}
    assert len({e.replica for e in events}) > 1
    received = [e.received_us for e in events]
    assert end_us - 61_000_000 < min(received) and max(received) <= end_us
    assert pairs == list(synthetic_events(2000, seed=3, end_us=end_us, span_s=60))  # deterministic per seed


def test_visibility_lags_take_the_first_poll_covering_each_offset() -> None:
    sent = [Sent(0, 0, 10.0), Sent(0, 1, 10.1), Sent(1, 0, 10.2), Sent(1, 5, 10.3)]
    polls = [(10.05, {0: 0}), (10.5, {0: 1, 1: 0}), (11.0, {0: 1, 1: 4})]
    lags = visibility_lags(sent, polls)
    assert lags == pytest.approx([0.05, 0.4, 0.3])  # partition 1 offset 5 never seen: left out


def test_percentile_interpolates_and_handles_empty() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def test_table_shows_ratios_against_raw_and_target() -> None:
    rows = [Row("raw consume", 100_000, 0.5, "limit", cpu_s=0.4), Row("recwatch worker", 100_000, 4.0, "sink")]
    lines = format_table(rows).splitlines()
    assert lines[0].split()[:6] == ["consumer", "events", "seconds", "events/s", "vs", "raw"]
    raw, worker = lines[2], lines[3]
    assert "200,000" in raw and "1.00x" in raw and "4.00x" in raw and "250,000" in raw
    assert "25,000" in worker and "0.12x" in worker and "0.50x" in worker and worker.split()[-2] == "-"
