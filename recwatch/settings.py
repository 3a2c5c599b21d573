"""Typed configuration, read from the environment only at the edge (the CLI).

Every variable recwatch reads is listed in ``ENV_VARS``; ``recwatch --help`` prints them and the README
documents them. Nothing else in the code base calls ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_VARS: dict[str, str] = {
    "RECWATCH_HOME": "state directory: pid files, logs, Kafka data, the default chDB store (default: ./.recwatch)",
    "RECWATCH_KAFKA": "bootstrap servers of an existing Kafka cluster; when set, `infra up` starts no broker",
    "RECWATCH_STORE": "store URL, chdb:///path or clickhouse://host:port/db; when set it overrides what "
    "`infra up` recorded",
    "RECWATCH_CACHE": "cache for resolved Kafka jars (default: ~/.cache/recwatch)",
    "RECWATCH_KAFKA_PORT": "first broker port of the local cluster (default 9092; broker i uses port+2i "
    "and port+2i+1 for its controller)",
    "RECWATCH_CLICKHOUSE_PORT": "native TCP port of the local ClickHouse server (default 19000; HTTP uses port+1)",
    "RECWATCH_ALERTMANAGER_PORT": "port of the local Prometheus Alertmanager `infra up` starts (default 19093)",
    "RECWATCH_ALERT_WEBHOOK_URL": "`recwatch alerter` also sends alerts to this webhook (Alertmanager's JSON, signed; "
    "docs/alerts.md)",
    "RECWATCH_ALERT_WEBHOOK_SECRET": "HMAC-SHA256 key of those webhook signatures (required with the URL)",
    "RECWATCH_TOPIC_PARTITIONS": "partitions of the topics `infra up` creates (default 6)",
    "RECWATCH_REPLICA": "replica id written into every inference event (default: <hostname>-<port>)",
    "RECWATCH_WORKER_METRICS_PORT": "loopback port of `recwatch worker`'s Prometheus /metrics (default 19110; "
    "0 or a port in use: any free port, logged and written to <home>/worker/<group>/metrics-<pid>.address)",
}


@dataclass(frozen=True)
class Settings:
    """Where recwatch keeps its state and how it reaches Kafka and the store."""

    home: Path
    kafka: str | None = None
    store: str | None = None
    cache: Path = field(default_factory=lambda: Path.home() / ".cache" / "recwatch")
    kafka_port: int = 9092
    clickhouse_port: int = 19000
    alertmanager_port: int = 19093
    topic_partitions: int = 6
    replica: str | None = None
    worker_metrics_port: int = 19110
    alert_webhook_url: str | None = None
    alert_webhook_secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("RECWATCH_HOME") or ".recwatch").absolute()
        cache = Path(env["RECWATCH_CACHE"]) if env.get("RECWATCH_CACHE") else Path.home() / ".cache" / "recwatch"
        return cls(
            home=home,
            kafka=env.get("RECWATCH_KAFKA") or None,
            store=env.get("RECWATCH_STORE") or None,
            cache=cache.absolute(),
            kafka_port=_int(env, "RECWATCH_KAFKA_PORT", 9092),
            clickhouse_port=_int(env, "RECWATCH_CLICKHOUSE_PORT", 19000),
            alertmanager_port=_int(env, "RECWATCH_ALERTMANAGER_PORT", 19093),
            topic_partitions=_int(env, "RECWATCH_TOPIC_PARTITIONS", 6),
            replica=env.get("RECWATCH_REPLICA") or None,
            worker_metrics_port=_int(env, "RECWATCH_WORKER_METRICS_PORT", 19110),
            alert_webhook_url=env.get("RECWATCH_ALERT_WEBHOOK_URL") or None,
            alert_webhook_secret=env.get("RECWATCH_ALERT_WEBHOOK_SECRET") or None,
        )

    @property
    def default_store_url(self) -> str:
        return f"chdb://{self.home / 'store' / 'chdb'}"


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
