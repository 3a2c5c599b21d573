"""The ingest fast path: the store engine parses the inference events, stores them and aggregates them itself.

On the Python path (``InferenceSink`` with ClickHouse 18.16, or any store without ``InputStore``) every event is
decoded into a Protobuf object, turned into 31 column values and a window update, and converted to Arrow: ~50 µs
of Python per event. Here the worker only frames the Kafka message bytes (``frame``: the length-delimited
``InferenceEnvelope`` stream of ``schemas/v1/ingest.proto``, ~1 µs per event) and hands them to the engine in
one request (``store.base.InputStore.run_over_input``), which:

1. parses them into a staging table (``FORMAT Protobuf``) with a ``reason`` per row, the same rules as
   ``decode.decode_inference`` (invalid UTF-8 in a string field is ``undecodable`` there);
2. returns the rejected rows (partition, offset, reason) for the dead-letter topic (redelivered ones too);
3. inserts the valid rows above each partition's high-water into ``inference_events``;
4. computes each touched 10 s window's *delta* (the valid rows past each partition's window progress) as the
   columns of an ``inference_metrics_10s_parts`` row, the late flag from the partition's running maximum event
   time in offset order (seeded with the maximum already folded in), exactly as ``windows.Watermark`` decides,
   and each partition's latest event time folded in;
5. returns the fields the feedback join needs (``PredictionColumns``, Arrow).

The sink merges the deltas into its cumulative rows and writes them as on the Python path, so the bookkeeping
that makes redelivery harmless (``inference_sink``) is the same for both. Message bytes the engine cannot parse
fail step 1 (nothing is written); the sink then takes that batch through the Python path, which finds and
rejects the bad messages one by one (``ParseFailed``).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

import schemas
from store.base import InputStore, QueryError, Store
from stream_processors.decode import EARLIEST_US, MAX_FUTURE_US
from stream_processors.records import Record, replayed
from stream_processors.sketch import GAMMA, LatencySketch
from stream_processors.window_rows import EVENT_COLUMNS, SCORE_BINS, WindowKey, WindowState, key_of_row

_LOG_GAMMA: Final = math.log(GAMMA)
SCHEMA: Final = Path(schemas.__file__).resolve().parent / "v1" / "ingest.proto"

# The envelope as ClickHouse reads it (fields matched by name; those left out are skipped unparsed).
_STRUCTURE: Final = (
    "kafka_partition Int32, kafka_offset Int64, event Tuple(event_id String, request_id String, received_us Int64, "
    "sent_us Int64, model String, version Int64, label String, replica String, api String, signature String, "
    "status_code Int32, error String, latency Tuple(queue_us UInt32, batch_us UInt32, compute_us UInt32, "
    "total_us UInt32), batch_size UInt32, cache_hit UInt8, rows UInt32, "
    "inputs Nested(name String, dtype String, shape Array(Int64)), "
    "outputs Nested(name String, count UInt32, mean Float32, min Float32, max Float32, head Array(Float32)), "
    "user_id String, item_ids Array(String), producer Tuple(dropped UInt64, spooled UInt64), "
    "process_rss_bytes UInt64), replayed UInt8"
)

RAW_COLUMNS: Final = EVENT_COLUMNS  # inference_events columns, as the Python path writes them

_STRINGS_VALID: Final = " AND ".join(
    [
        *(
            f"isValidUTF8(event.{f})"
            for f in ("event_id", "request_id", "model", "label", "replica", "api", "signature", "error", "user_id")
        ),
        # NUL-separated: a character split across two strings is invalid there too
        *(
            f"isValidUTF8(arrayStringConcat(event.{f}, '\\0'))"
            for f in ("item_ids", "inputs.name", "inputs.dtype", "outputs.name")
        ),
    ]
)


def _staging_select(now_us: int) -> str:
    """The staging table's columns: the parsed envelope as it is (flattening here would copy every column once
    more: ~0.7 µs per event, measured) and the rejection reason, in the order of ``decode.decode_inference``."""
    e = "event"
    reason = (
        f"multiIf(NOT ({_STRINGS_VALID}), 'undecodable', "
        f"{e}.event_id = '', 'missing_event_id', "
        f"{e}.model = '', 'missing_model', "
        f"{e}.received_us <= 0, 'missing_received_us', "
        f"{e}.received_us < {EARLIEST_US}, 'received_us_too_old', "
        f"{e}.received_us > {now_us + MAX_FUTURE_US}, 'received_us_in_future', '')"
    )
    return f"kafka_partition, kafka_offset, event, replayed, {reason} AS reason"


# How each raw row column (and the extras the windows read) comes out of a staged envelope
_FIELDS: Final = {
    "received_us": "event.received_us",
    "sent_us": "event.sent_us",
    "event_id": "event.event_id",
    "request_id": "event.request_id",
    "model": "event.model",
    "version": "event.version",
    "label": "event.label",
    "replica": "event.replica",
    "api": "event.api",
    "signature": "event.signature",
    "status_code": "event.status_code",
    "error": "event.error",
    "queue_us": "event.latency.queue_us",
    "batch_us": "event.latency.batch_us",
    "compute_us": "event.latency.compute_us",
    "total_us": "event.latency.total_us",
    "batch_size": "event.batch_size",
    "cache_hit": "event.cache_hit",
    "rows": "event.rows",
    "input_names": "event.inputs.name",
    "input_shapes": "arrayMap(s -> arrayStringConcat(arrayMap(x -> toString(x), s), 'x'), event.inputs.shape)",
    "output_name": "event.outputs.name[1]",
    "score_count": "event.outputs.count[1]",
    "score_mean": "event.outputs.mean[1]",
    "score_min": "event.outputs.min[1]",
    "score_max": "event.outputs.max[1]",
    "scores": "event.outputs.head[1]",
    "user_id": "event.user_id",
    "item_ids": "event.item_ids",
    "kafka_partition": "kafka_partition",
    "kafka_offset": "kafka_offset",
    "producer_dropped": "event.producer.dropped",
    "producer_spooled": "event.producer.spooled",
    "process_rss": "event.process_rss_bytes",
}


def _flat(columns: Sequence[str]) -> str:
    """``expr AS name, ...``: those raw row columns read from the staging table."""
    return ", ".join(f"{_FIELDS[c]} AS {c}" if _FIELDS[c] != c else c for c in columns)


def sketch_key_sql(column: str) -> str:
    """``sketch.key_of`` in SQL, for an unsigned integer column (µs)."""
    return f"if({column} >= 1, toUInt16(ceil(log({column}) / {_LOG_GAMMA!r}) + 1), toUInt16(0))"


def score_bin_sql(x: str) -> str:
    """``WindowState``'s score histogram bin of a Float64 ``x`` in SQL (non-finite: +inf in the top bin, else 0)."""
    top = SCORE_BINS - 1
    return f"if(isFinite({x}), toUInt8(least({top}., greatest(0., {x} * {SCORE_BINS}))), if({x} > 0, {top}, 0))"


# The raw row columns the deltas read
_DELTA_COLUMNS: Final = (
    "received_us",
    "model",
    "version",
    "label",
    "replica",
    "kafka_partition",
    "kafka_offset",
    "status_code",
    "total_us",
    "queue_us",
    "compute_us",
    "batch_size",
    "rows",
    "cache_hit",
    "scores",
    "producer_dropped",
    "producer_spooled",
    "process_rss",
)
# ... as the aggregates read them: the scores as Float64 (as Python adds them) and their histogram bins
_DELTA_INPUTS: Final = (
    *(c for c in _DELTA_COLUMNS if c != "scores"),
    "CAST(scores, 'Array(Float64)') AS s",
    f"arrayMap(x -> {score_bin_sql('x')}, s) AS bins",
)

# One delta row per window key; columns in this order (``_delta_state``).
_NOT_LATE: Final = "NOT late"
_DELTA_AGGREGATES: Final = (
    f"countIf({_NOT_LATE})",
    f"countIf({_NOT_LATE} AND status_code != 0)",
    f"sumIf(total_us, {_NOT_LATE})",
    f"maxIf(total_us, {_NOT_LATE})",
    "max(kafka_offset)",
    f"sumMapIf([status_code], [toUInt64(1)], {_NOT_LATE} AND status_code != 0)",
    f"sumMapIf([{sketch_key_sql('total_us')}], [toUInt64(1)], {_NOT_LATE})",
    f"sumIf(queue_us, {_NOT_LATE})",
    f"sumIf(compute_us, {_NOT_LATE})",
    f"sumIf(batch_size, {_NOT_LATE})",
    f"sumIf(rows, {_NOT_LATE})",
    f"sumIf(cache_hit, {_NOT_LATE})",
    f"sumIf(length(s), {_NOT_LATE})",
    f"sumIf(arraySum(s), {_NOT_LATE})",
    f"sumIf(dotProduct(s, s), {_NOT_LATE})",
    # per row, the count of each bin (countEqual: no lambda per bin), added up element-wise
    f"sumForEachIf([{', '.join(f'countEqual(bins, {b})' for b in range(SCORE_BINS))}], {_NOT_LATE})",
    "countIf(late)",
    f"maxIf(producer_dropped, {_NOT_LATE})",
    f"maxIf(producer_spooled, {_NOT_LATE})",
    f"maxIf(process_rss, {_NOT_LATE})",
    "max(received_us)",  # not a state column: the partition's latest event time folded in (late ones too)
)


@dataclass
class PredictionColumns:
    """What the feedback join needs of each valid event of a batch, column-wise, in (partition, offset) order."""

    partition: list[int] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)
    request_id: list[str] = field(default_factory=list)
    event_id: list[str] = field(default_factory=list)
    received_us: list[int] = field(default_factory=list)
    model: list[str] = field(default_factory=list)
    version: list[int] = field(default_factory=list)
    label: list[str] = field(default_factory=list)
    status_code: list[int] = field(default_factory=list)
    n_items: list[int] = field(default_factory=list)  # distinct item ids (the ids stay in the store until needed)

    def __len__(self) -> int:
        return len(self.offset)

    def partition_slices(self) -> dict[int, tuple[int, int]]:
        """Each partition's rows as an index range ``(start, end)``."""
        out = {}
        for p in set(self.partition):
            start = bisect.bisect_left(self.partition, p)
            out[p] = (start, bisect.bisect_right(self.partition, p, start))
        return out

    def first_after(self, start: int, end: int, offset: int) -> int:
        """The index of the first row in ``start:end`` (one partition's) past ``offset``."""
        return bisect.bisect_right(self.offset, offset, start, end)


_PREDICTION_SELECT: Final = (
    "kafka_partition, kafka_offset, event.request_id, event.event_id, event.received_us, event.model, "
    "event.version, event.label, event.status_code, arrayUniq(event.item_ids)"
)


@dataclass
class IngestResult:
    rejected: list[tuple[int, int, str]]  # (partition, offset, reason) of every rejected row, redelivered ones too
    written: int  # rows inserted into inference_events
    seen: int  # valid rows at or below the high-water (redelivered), and copies
    deltas: dict[WindowKey, WindowState]
    folded: dict[int, tuple[int, int]]  # partition -> (max event time, max offset) of the rows in the deltas
    predictions: PredictionColumns
    copies: int = 0  # later copies of an event (same event_id): neither stored nor counted again


class ParseFailed(Exception):
    """The engine could not parse the batch's bytes as envelopes (some message is not an InferenceEvent)."""


def frame(messages: Sequence[Record], replayed: set[tuple[int, int]] = frozenset()) -> bytes:  # type: ignore[assignment]
    """The length-delimited ``InferenceEnvelope`` stream around the messages' bytes (each must be non-empty).

    Per message: the envelope's length, the fixed-width partition and offset fields, the event field's tag and
    length, then the message bytes as they came from Kafka (~0.5 µs; nothing is decoded), and for the
    ``replayed`` (partition, offset) the flag field."""
    out = bytearray()
    pack = _HEAD.pack
    for m in messages:
        value = m.value
        assert value
        n = len(value)
        size = _varint(n)
        flag = _REPLAYED_FIELD if replayed and (m.partition, m.offset) in replayed else b""
        out += _varint(_HEAD.size + len(size) + n + len(flag))
        out += pack(0x0D, m.partition, 0x11, m.offset, 0x1A)  # field 1 fixed32, field 2 fixed64, field 3 bytes
        out += size
        out += value
        out += flag
    return bytes(out)


_REPLAYED_FIELD: Final = b"\x20\x01"  # field 4 (varint): true


_HEAD: Final = struct.Struct("<BiBqB")
_VARINTS: Final = [bytes([i]) if i < 0x80 else bytes([(i & 0x7F) | 0x80, i >> 7]) for i in range(1 << 14)]


def _varint(n: int) -> bytes:
    if n < 1 << 14:
        return _VARINTS[n]  # the length of every message up to 16 KB
    parts = bytearray()
    while n >= 0x80:
        parts.append((n & 0x7F) | 0x80)
        n >>= 7
    parts.append(n)
    return bytes(parts)


# A batch is a few thousand rows: starting threads for them costs more than it saves (measured: a GROUP BY over
# 10,000 staged rows takes 12 ms with the default threads, 2 ms with one).
_ONE_THREAD: Final = "SETTINGS max_threads = 1"
_names = (f"_ingest_{os.getpid()}_{i}" for i in itertools.count())


def ingest(
    store: InputStore,
    messages: Sequence[Record],
    *,
    high_water: dict[int, int],
    progress: dict[int, int],
    max_event_us: dict[int, int],
    window_s: int,
    allowed_lateness_s: int,
    now_us: int,
) -> IngestResult:
    """One batch through the engine (see the module docstring). ``high_water``/``progress``/``max_event_us``:
    per partition of the batch, the highest offset stored in ``inference_events``, the highest offset folded into
    window rows and the latest event time folded in (-1, -1, 0 when none)."""
    stg = next(_names)
    new = _per_partition("kafka_offset >", high_water, -1)
    unfolded = _per_partition("kafka_offset >", progress, -1)
    seed = _per_partition("", max_event_us, 0)
    suspects = replayed(messages)
    valid = "reason = ''"
    copy_statements: list[tuple[str, str]] = []
    if suspects:  # (a spool replay: nothing of this runs for live traffic)
        valid += f" AND (kafka_partition, kafka_offset) NOT IN (SELECT kafka_partition, kafka_offset FROM {stg}_c)"
        copy_statements = [*_copies_sql(stg), (f"SELECT count() FROM {stg}_c", "JSONCompact")]
    statements: list[tuple[str, str]] = [
        (
            f"CREATE TABLE {stg} ENGINE = Memory AS SELECT {_staging_select(now_us)} "
            f"FROM file('{{input}}', 'Protobuf', '{_STRUCTURE}') "
            f"SETTINGS format_schema = '{SCHEMA}:InferenceEnvelope'",
            "",
        ),
        *copy_statements,
        (
            f"SELECT kafka_partition, kafka_offset, reason FROM {stg} WHERE reason != '' "
            f"ORDER BY kafka_partition, kafka_offset {_ONE_THREAD}",
            "JSONCompact",
        ),
        (
            f"INSERT INTO inference_events ({', '.join(RAW_COLUMNS)}) SELECT {_flat(RAW_COLUMNS)} FROM {stg} "
            f"WHERE {valid} AND {new} SETTINGS optimize_on_insert = 0",
            "",
        ),
        (
            _delta_sql(
                f"(SELECT {_flat(_DELTA_COLUMNS)} FROM {stg} WHERE {valid} AND {unfolded})",
                "1",
                seed,
                window_s,
                allowed_lateness_s,
            ),
            "JSONCompact",
        ),
        (
            f"SELECT {_PREDICTION_SELECT} FROM {stg} WHERE {valid} ORDER BY kafka_partition, kafka_offset "
            f"{_ONE_THREAD}",
            "ArrowStream",
        ),
    ]
    cleanup = [f"DROP TABLE IF EXISTS {stg}{suffix}" for suffix in ("", "_s", "_c")[: 3 if suspects else 1]]
    try:
        out = store.run_over_input(frame(messages, suspects), statements, cleanup=cleanup)
    except QueryError as exc:
        if exc.sql.startswith(f"CREATE TABLE {stg} "):
            raise ParseFailed(str(exc)) from exc
        raise
    copies = int(_rows(out[len(copy_statements)])[0][0]) if suspects else 0
    out = out[1 + len(copy_statements) :]
    rejected = [(int(p), int(o), str(r)) for p, o, r in _rows(out[0])]
    deltas, folded = _deltas(_rows(out[2]))
    predictions = _predictions(out[3])
    written = sum(
        end - predictions.first_after(start, end, high_water[p])
        for p, (start, end) in predictions.partition_slices().items()
    )
    return IngestResult(rejected, written, len(predictions) - written + copies, deltas, folded, predictions, copies)


def _copies_sql(stg: str) -> list[tuple[str, str]]:
    """Two statements: ``{stg}_c`` = (partition, offset) of the staged events that are a later copy of an event:
    the same ``event_id`` in the same partition at a lower offset, stored or staged. A model server that lost
    Kafka's acknowledgement of an event it had sent (a broker killed mid-request) spools it and sends it again
    (``producers.replay``, with the ``recwatch-replayed`` header): a copy at a new offset, which offsets alone
    cannot tell from a new event. Only the replayed events are looked up, within their time range."""
    suspects = (
        f"CREATE TABLE {stg}_s ENGINE = Memory AS SELECT kafka_partition, kafka_offset, event.event_id AS id, "
        f"event.model AS m, event.received_us AS t FROM {stg} WHERE reason = '' AND replayed {_ONE_THREAD}"
    )
    firsts = (
        "SELECT id, p, min(o) AS first FROM ("
        "SELECT event_id AS id, kafka_partition AS p, kafka_offset AS o FROM inference_events "
        f"WHERE model IN (SELECT m FROM {stg}_s) "
        f"AND event_time >= toDateTime(intDiv((SELECT min(t) FROM {stg}_s), 1000000)) "
        f"AND event_time <= toDateTime(intDiv((SELECT max(t) FROM {stg}_s), 1000000)) "
        f"AND event_id IN (SELECT id FROM {stg}_s) "
        "UNION ALL "
        f"SELECT event.event_id AS id, kafka_partition AS p, kafka_offset AS o FROM {stg} "
        f"WHERE reason = '' AND event.event_id IN (SELECT id FROM {stg}_s)"
        ") GROUP BY id, p"
    )
    copies = (
        f"CREATE TABLE {stg}_c ENGINE = Memory AS SELECT s.kafka_partition AS kafka_partition, "
        f"s.kafka_offset AS kafka_offset FROM {stg}_s AS s INNER JOIN ({firsts}) AS f "
        "ON s.id = f.id AND s.kafka_partition = f.p WHERE s.kafka_offset > f.first"
    )
    return [(suspects, ""), (copies, "")]


def rebuild_deltas(
    store: Store,
    ranges: dict[int, tuple[int, int]],
    *,
    max_event_us: dict[int, int],
    window_s: int,
    allowed_lateness_s: int,
) -> tuple[dict[WindowKey, WindowState], dict[int, tuple[int, int]]]:
    """The window deltas of stored raw rows: per partition, the offsets in ``(folded, stored]`` of ``ranges``
    (``inference_events`` rows not yet in window rows: the worker stopped after storing a batch, before writing its
    window rows, and Kafka will not deliver those offsets again). Same rules as a batch's deltas; a raw row the
    table's background merges have already collapsed with a duplicate (same event id, another offset) counts once.
    """
    cases = ", ".join(
        f"kafka_partition = {int(p)}, kafka_offset > {int(lo)} AND kafka_offset <= {int(hi)}"
        for p, (lo, hi) in sorted(ranges.items())
    )
    where = f"kafka_partition IN ({', '.join(str(int(p)) for p in sorted(ranges))}) AND multiIf({cases}, 0)"
    seed = _per_partition("", max_event_us, 0)
    return _deltas(store.query(_delta_sql("inference_events", where, seed, window_s, allowed_lateness_s)).rows)


def _delta_sql(table: str, where: str, seed: str, window_s: int, allowed_lateness_s: int) -> str:
    """One row per window key of the rows of ``table`` matching ``where``: ``_DELTA_AGGREGATES``, an event late
    when its window ended ``allowed_lateness_s`` before the partition's running maximum event time (in offset
    order, from ``seed``), as ``windows.Watermark`` decides."""
    w, lateness_us = window_s, allowed_lateness_s * 1_000_000
    return (
        f"SELECT window_start, model, version, label, replica, kafka_partition, {', '.join(_DELTA_AGGREGATES)} "
        f"FROM (SELECT {', '.join(_DELTA_INPUTS)}, "
        f"intDiv(intDiv(received_us, 1000000), {w}) * {w} AS window_start, "
        f"(window_start + {w}) * 1000000 + {lateness_us} <= greatest({seed}, max(received_us) OVER "
        "(PARTITION BY kafka_partition ORDER BY kafka_offset ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) "
        f"AS late FROM {table} WHERE {where}) "
        f"GROUP BY window_start, model, version, label, replica, kafka_partition {_ONE_THREAD}"
    )


def _deltas(rows: Sequence[Sequence[Any]]) -> tuple[dict[WindowKey, WindowState], dict[int, tuple[int, int]]]:
    """Delta rows -> states, and per partition the latest event time and offset they fold in."""
    deltas: dict[WindowKey, WindowState] = {}
    folded: dict[int, tuple[int, int]] = {}
    for r in rows:
        key, state = key_of_row(r), _delta_state(r)
        deltas[key] = state
        event_us, offset = folded.get(key[5], (0, -1))
        folded[key[5]] = (max(event_us, int(r[-1])), max(offset, state.last_offset))
    return deltas, folded


def _per_partition(prefix: str, values: dict[int, int], default: int) -> str:
    """``multiIf(kafka_partition = p, <prefix> v, ...)``: a per-partition constant (or condition) in SQL."""
    cases = ", ".join(f"kafka_partition = {int(p)}, {prefix} {int(v)}" for p, v in sorted(values.items()))
    fallback = f"{prefix} {int(default)}"
    return f"multiIf({cases}, {fallback})" if cases else fallback


def _rows(raw: bytes) -> list[list[Any]]:
    return list(json.loads(raw)["data"]) if raw else []


def _delta_state(r: Sequence[Any]) -> WindowState:
    (
        requests,
        errors,
        latency_sum,
        latency_max,
        last_offset,
        (codes, code_counts),
        (keys, key_counts),
        queue_sum,
        compute_sum,
        batch_size_sum,
        rows_sum,
        cache_hits,
        score_count,
        score_sum,
        score_sumsq,
        bin_counts,
        late,
        dropped,
        spooled,
        rss,
        _,
    ) = r[6:]
    hist = [int(n) for n in bin_counts] or [0] * SCORE_BINS  # [] when every row of the key was late
    return WindowState(
        requests=int(requests),
        errors=int(errors),
        latency_sum_us=int(latency_sum),
        latency_max_us=int(latency_max),
        last_offset=int(last_offset),
        errors_by_code={int(c): int(n) for c, n in zip(codes, code_counts, strict=True)},
        latency=LatencySketch.from_arrays([int(k) for k in keys], [int(n) for n in key_counts])
        if keys
        else LatencySketch(),
        queue_sum_us=int(queue_sum),
        compute_sum_us=int(compute_sum),
        batch_size_sum=int(batch_size_sum),
        rows_sum=int(rows_sum),
        cache_hits=int(cache_hits),
        score_count=int(score_count),
        score_sum=_float(score_sum),
        score_sumsq=_float(score_sumsq),
        score_hist=hist,
        late_events=int(late),
        producer_dropped=int(dropped),
        producer_spooled=int(spooled),
        process_rss_max_bytes=int(rss),
    )


def _float(x: Any) -> float:
    return math.nan if x is None else float(x)  # JSON has no NaN: ClickHouse writes null


def _predictions(raw: bytes) -> PredictionColumns:
    if not raw:
        return PredictionColumns()
    table = pa.ipc.open_stream(raw).read_all()
    return PredictionColumns(*(column.to_pylist() for column in table.columns))
