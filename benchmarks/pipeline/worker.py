"""``python -m benchmarks.pipeline.worker``: ``recwatch worker`` with the source topic as an option.

The same calls as ``recwatch worker`` (recwatch/cli.py ``_worker``): open and migrate the store, then
``stream_processors.faust_adapter.run_worker`` — the unchanged Faust app and sink — except that ``source_topic`` names
the benchmark's fresh per-run topic (the CLI always reads ``recwatch.inference.v1``). Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline.worker", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--store", required=True, help="store URL, e.g. chdb:///tmp/x/chdb (its daemon running)")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from store import migrate, open_store
    from stream_processors.faust_adapter import run_worker
    from stream_processors.worker import WorkerSettings

    store = open_store(args.store)
    store.connect()
    migrate(store)
    feedback_topic = _feedback_topic_like(args.bootstrap, args.topic)
    settings = WorkerSettings(
        bootstrap=args.bootstrap,
        data_dir=args.data_dir,
        app_id=args.group,
        source_topic=args.topic,
        feedback_topic=feedback_topic,
    )
    try:
        run_worker(settings, store)
    finally:
        store.close()
    return 0


def _feedback_topic_like(bootstrap: str, topic: str) -> str:
    """An (empty) feedback topic co-partitioned with ``topic``, as ``recwatch infra up`` creates them."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic  # confluent_kafka.admin re-exports it, but not for mypy

    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = len(admin.list_topics(topic, timeout=30).topics[topic].partitions)
    name = f"{topic}.feedback"
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        try:
            future.result(timeout=30)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return name


if __name__ == "__main__":
    raise SystemExit(main())
