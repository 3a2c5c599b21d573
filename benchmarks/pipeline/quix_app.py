"""The Quix Streams peer: the worker's aggregation written the way Quix Streams' docs write it.

Runs in its own venv (``quix_venv.py``) with the work tree on ``PYTHONPATH`` for ``schemas``. Each message is
parsed as an InferenceEvent (a custom Deserializer), reduced to the fields the aggregate needs, re-keyed by
``model/version/label/replica`` with ``group_by`` (Quix repartitions through an internal topic), and counted
in a 10 s tumbling event-time window (``received_us``; 1 s grace for the servers' jitter): requests, errors,
latency sum and max, in Quix's RocksDB state with changelog topics (its fault tolerance), closed windows
emitted with ``.final()``. Nothing is written to ClickHouse. Stops after ``--events`` events reached the
window; prints one JSON line: events and seconds from the first message to the last (start-up excluded).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--window-seconds", type=int, default=10)
    args = parser.parse_args()

    from quixstreams import Application
    from quixstreams.dataframe.windows import Count, Max, Sum
    from quixstreams.models.serializers import Deserializer

    from schemas import InferenceEvent

    parse = InferenceEvent.FromString

    class InferenceDeserializer(Deserializer):  # type: ignore[misc]  # quixstreams lives in its own venv
        def __call__(self, value: bytes, ctx: Any) -> dict[str, Any]:
            ev = parse(value)
            return {
                "model": ev.model,
                "version": ev.version,
                "label": ev.label,
                "replica": ev.replica,
                "error": int(ev.status_code != 0),
                "latency_us": ev.latency.total_us,
                "received_ms": ev.received_us // 1000,
            }

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        commit_interval=1.0,
        loglevel="WARNING",
    )
    source = app.topic(
        args.topic,
        key_deserializer="bytes",
        value_deserializer=InferenceDeserializer(),
        timestamp_extractor=lambda value, headers, ts, ts_type: int(value["received_ms"]),
    )
    progress = {"first": 0.0, "cpu_first": 0.0, "seen": 0, "events": 0, "end": 0.0, "cpu_end": 0.0, "windows": 0}

    def first_seen(value: dict[str, Any]) -> None:
        if not progress["seen"]:
            progress["first"], progress["cpu_first"] = time.perf_counter(), time.process_time()
        progress["seen"] += 1

    def counted(value: dict[str, Any]) -> None:
        progress["events"] += 1
        if progress["events"] == args.events:
            progress["end"], progress["cpu_end"] = time.perf_counter(), time.process_time()
            app.stop()

    def window_closed(value: dict[str, Any]) -> None:
        progress["windows"] += 1

    sdf = app.dataframe(source)
    sdf = sdf.update(first_seen)
    sdf = sdf.group_by(lambda v: f"{v['model']}/{v['version']}/{v['label']}/{v['replica']}", name="mvlr")
    sdf = sdf.update(counted)
    sdf = (
        sdf.tumbling_window(duration_ms=args.window_seconds * 1000, grace_ms=1000, on_late=lambda *a, **k: False)
        .agg(requests=Count(), errors=Sum("error"), latency_sum_us=Sum("latency_us"), latency_max_us=Max("latency_us"))
        .final()
    )
    sdf = sdf.update(window_closed)
    app.run(sdf)
    print(
        json.dumps(
            {
                "events": progress["events"],
                "seconds": progress["end"] - progress["first"],
                "cpu_s": progress["cpu_end"] - progress["cpu_first"],
                "windows_closed": progress["windows"],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
