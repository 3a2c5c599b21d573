"""Whatever bytes arrive on the inference topic, decoding answers an event or a reason and never raises, and
the sink rejects bad messages (for the dead-letter topic) while storing the good ones of the same batch."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import InferenceEvent, topics
from store import Store
from stream_processors.decode import MAX_FUTURE_US, decode_inference
from stream_processors.inference_sink import InferenceSink
from stream_processors.records import Message
from tests.store_fixtures import chdb_store

__all__ = ["chdb_store"]

NOW_US = (int(time.time()) // 60) * 60 * 1_000_000 - 120_000_000


def _valid(i: int) -> bytes:
    return InferenceEvent(event_id=f"e{i}", model="ranker", received_us=NOW_US + i).SerializeToString()


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_decode_to_an_event_or_a_reason(value: bytes) -> None:
    decoded = decode_inference(value)
    assert isinstance(decoded, InferenceEvent | str)
    if isinstance(decoded, str):
        assert decoded and decoded.replace("_", "").isalpha()


@given(
    st.text(max_size=8),
    st.text(max_size=8),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_events_missing_what_the_aggregates_need_are_rejected(event_id: str, model: str, received_us: int) -> None:
    value = InferenceEvent(event_id=event_id, model=model, received_us=received_us).SerializeToString()
    decoded = decode_inference(value, now_us=NOW_US)
    plausible = 946_684_800_000_000 <= received_us <= NOW_US + MAX_FUTURE_US
    if event_id and model and plausible:
        assert isinstance(decoded, InferenceEvent) and decoded.event_id == event_id
    else:
        assert isinstance(decoded, str)


def test_a_clock_years_ahead_is_rejected_not_allowed_to_move_the_watermark() -> None:
    ahead = InferenceEvent(event_id="e", model="m", received_us=NOW_US + 10 * 365 * 86_400_000_000)
    assert decode_inference(ahead.SerializeToString(), now_us=NOW_US) == "received_us_in_future"
    old = InferenceEvent(event_id="e", model="m", received_us=1_000_000)  # seconds where µs were meant
    assert decode_inference(old.SerializeToString(), now_us=NOW_US) == "received_us_too_old"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=64), st.none()), min_size=1, max_size=20))
def test_the_sink_rejects_garbage_and_keeps_the_good_events_of_the_batch(
    chdb_store: Store, garbage: list[bytes | None]
) -> None:
    chdb_store.execute("TRUNCATE TABLE inference_events")
    chdb_store.execute("TRUNCATE TABLE inference_metrics_10s_parts")
    sink = InferenceSink(chdb_store, topic=topics.INFERENCE)
    values = [_valid(0), *garbage, _valid(1)]
    result = sink.write_batch([Message(0, offset, v) for offset, v in enumerate(values)])
    bad = sum(isinstance(decode_inference(v), str) for v in values)
    assert len(result.rejected) == bad
    assert all(r.reason for r in result.rejected)
    assert result.events_written == len(values) - bad
    assert chdb_store.query("SELECT count() FROM inference_events").scalar() == len(values) - bad
