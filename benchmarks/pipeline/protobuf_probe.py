"""Can ClickHouse parse the inference events itself? ``python -m benchmarks.pipeline.protobuf_probe [--events N]``

The worker spends ~22 µs of Python per event turning decoded ``InferenceEvent`` objects into the columns of
``inference_events`` (``stream_processors.inference_sink._event_columns`` and the Arrow conversion): a third of
its per-event cost, and the first thing the 50k events/s target (issue 4) must move out of Python. This probe
measures the alternative on the same synthetic events the pipeline benchmark produces: each Kafka message
wrapped in a ``{kafka_partition, kafka_offset, event}`` envelope (a few bytes of framing around the message
bytes, no decoding), the length-delimited stream handed to chDB, and chDB's ``Protobuf`` input format parsing
the nested message — latency, status, outputs, inputs, item ids — into columns. Prints µs per event of each
part and checks that chDB read the same totals as Python did.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from benchmarks.pipeline.events import synthetic_events

_ENVELOPE_PROTO = """syntax = "proto3";
package recwatch.v1;
import "inference.proto";
message Envelope { int32 kafka_partition = 1; int64 kafka_offset = 2; InferenceEvent event = 3; }
"""

_STRUCTURE = (
    "kafka_partition Int32, kafka_offset Int64, event Tuple(event_id String, request_id String, received_us Int64, "
    "model String, version Int64, status_code Int32, latency Tuple(total_us UInt32, queue_us UInt32), "
    "inputs Nested(name String, shape Array(Int64)), outputs Nested(name String, head Array(Float32)), "
    "item_ids Array(String))"
)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def envelope_stream(values: Sequence[bytes], partition: int, first_offset: int) -> bytes:
    """Length-delimited ``Envelope`` messages around already-serialized InferenceEvents (no decoding)."""
    head = b"\x08" + _varint(partition) + b"\x10"
    parts = []
    for i, value in enumerate(values):
        body = head + _varint(first_offset + i) + b"\x1a" + _varint(len(value)) + value
        parts.append(_varint(len(body)) + body)
    return b"".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline.protobuf_probe", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args(argv)

    import chdb

    from schemas import InferenceEvent
    from stream_processors.inference_sink import _event_columns
    from stream_processors.records import Message

    values = [value for _, value in synthetic_events(args.events)]
    t0 = time.perf_counter()
    decoded = [(Message(0, i, v), InferenceEvent.FromString(v)) for i, v in enumerate(values)]
    t1 = time.perf_counter()
    columns = _event_columns(decoded)
    t2 = time.perf_counter()
    stream = envelope_stream(values, partition=0, first_offset=0)
    t3 = time.perf_counter()

    workdir = Path(tempfile.mkdtemp(prefix="recwatch-pb-probe-"))
    try:
        shutil.copy(Path(__file__).resolve().parents[2] / "schemas" / "v1" / "inference.proto", workdir)
        (workdir / "envelope.proto").write_text(_ENVELOPE_PROTO)
        data = workdir / "events.bin"
        data.write_bytes(stream)
        query = (
            "SELECT count(), sum(event.latency.total_us), countIf(event.status_code != 0), "
            "sum(length(event.item_ids)), max(kafka_offset) "
            f"FROM file('{data}', 'Protobuf', '{_STRUCTURE}') "
            f"SETTINGS format_schema = '{workdir / 'envelope.proto'}:Envelope'"
        )
        t4 = time.perf_counter()
        run_query: Any = chdb.query  # chdb ships no type hints
        row = str(run_query(query, "CSV")).strip().split(",")
        t5 = time.perf_counter()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    n = len(values)
    totals = cast(list[int], columns["total_us"])
    codes = cast(list[int], columns["status_code"])
    item_ids = cast(list[list[str]], columns["item_ids"])
    python = (n, sum(totals), sum(1 for c in codes if c), sum(len(ids) for ids in item_ids))
    parsed = tuple(int(x) for x in row[:4])
    print(f"{n:,} events, {len(stream) / 1e6:.1f} MB as envelopes")
    print(f"  Python: decode {1e6 * (t1 - t0) / n:6.2f} us/event + columns {1e6 * (t2 - t1) / n:6.2f} us/event")
    print(f"  chDB:   envelope {1e6 * (t3 - t2) / n:6.2f} us/event + parse {1e6 * (t5 - t4) / n:6.2f} us/event")
    print(f"  same totals (events, latency sum, errors, item ids): {parsed == python}  {parsed} vs {python}")
    return 0 if parsed == python else 1


if __name__ == "__main__":
    raise SystemExit(main())
