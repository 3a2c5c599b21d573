"""``recwatch infra up | down | status``: the whole local stack, recorded in ``$RECWATCH_HOME/infra.json``.

Other commands resolve Kafka and the store through ``bootstrap_servers`` and ``store_url``: the environment
(``RECWATCH_KAFKA``, ``RECWATCH_STORE``) wins, then what ``up`` recorded, then the embedded default. The
Alertmanager that ``up`` starts is found through ``alertmanager_url``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from infra import alertmanager, clickhouse_server, kafka, processes
from infra.errors import InfraError, MissingToolError, StartupError
from recwatch.settings import Settings
from schemas import topics
from store import migrate, open_store, parse_store_url
from store.daemon import find_daemon

StoreKind = Literal["embedded", "server"]


@dataclass(frozen=True)
class StackRecord:
    kafka_bootstrap: str
    kafka_managed: bool  # False when RECWATCH_KAFKA named an existing cluster
    brokers: int
    store_url: str
    store_kind: str  # "chdb-daemon", "clickhouse-server" (started by us) or "external"
    alertmanager_url: str = ""  # "" when none was started (and in infra.json files from before Alertmanager)


def _record_path(settings: Settings) -> Path:
    return settings.home / "infra.json"


def read_record(settings: Settings) -> StackRecord | None:
    try:
        return StackRecord(**json.loads(_record_path(settings).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def bootstrap_servers(settings: Settings) -> str:
    if settings.kafka:
        return settings.kafka
    record = read_record(settings)
    if record is None:
        raise InfraError(
            f"no Kafka: run `recwatch infra up` (state in {settings.home}) or set RECWATCH_KAFKA=host:port"
        )
    return record.kafka_bootstrap


def store_url(settings: Settings) -> str:
    if settings.store:
        return settings.store
    record = read_record(settings)
    return record.store_url if record is not None else settings.default_store_url


def alertmanager_url(settings: Settings) -> str | None:
    """The Alertmanager ``up`` started (``http://127.0.0.1:<port>``), or None if it started none."""
    record = read_record(settings)
    if record is None or not record.alertmanager_url:
        return None
    return record.alertmanager_url


def ensure_recwatch_topics(settings: Settings, bootstrap: str) -> None:
    """Create recwatch's topics where missing, replicated over up to 3 of the cluster's brokers.

    Every process that reads or writes them calls this first: a topic that a producer auto-created would get
    the broker's default of one partition, and a consumer group that started before its topic existed would
    not be assigned its partitions.
    """
    from confluent_kafka.admin import AdminClient

    try:
        brokers = len(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).brokers)
    except Exception as exc:
        raise InfraError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    create_topics(bootstrap, settings.topic_partitions, replication=max(1, min(brokers, 3)))


def topic_configs(replication: int) -> dict[str, dict[str, str]]:
    """Each recwatch topic's config: with 3 replicas a write needs 2 in sync (acks=all then survives one broker
    lost); the model-updates topic keeps its history (the controller, the trainer and the alerter's retrain rules
    rebuild their state by replaying it: time-based deletion would lose deployments)."""
    configs: dict[str, dict[str, str]] = {}
    for name in topics.ALL:
        config = {"min.insync.replicas": "2"} if replication >= 3 else {}
        if name == topics.MODEL_UPDATES:
            config["retention.ms"] = "-1"
        configs[name] = config
    return configs


def create_topics(bootstrap: str, partitions: int, *, replication: int) -> None:
    """The missing recwatch topics, with ``topic_configs``."""
    by_config: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for name, config in topic_configs(replication).items():
        by_config.setdefault(tuple(sorted(config.items())), []).append(name)
    for config_items, names in by_config.items():
        kafka.ensure_topics(
            bootstrap, dict.fromkeys(names, partitions), replication=replication, config=dict(config_items)
        )


def _daemon_pid_file(settings: Settings) -> Path:
    return settings.home / "store" / "daemon.pid"


def up(settings: Settings, *, brokers: int = 1, store_kind: StoreKind = "embedded", log: Any = print) -> StackRecord:
    """Start what is not running yet (idempotent) and create topics and tables."""
    settings.home.mkdir(parents=True, exist_ok=True)
    if settings.kafka:
        bootstrap, managed = settings.kafka, False
        log(f"kafka: using existing cluster {bootstrap} (RECWATCH_KAFKA)")
    else:
        started = time.monotonic()
        cluster = kafka.start(settings.home, cache=settings.cache, brokers=brokers, base_port=settings.kafka_port)
        bootstrap, managed = cluster.bootstrap, True
        log(f"kafka {cluster.version}: {bootstrap} ({brokers} broker(s), {time.monotonic() - started:.1f} s)")
    create_topics(bootstrap, settings.topic_partitions, replication=min(brokers, 3))

    if store_kind == "server":
        server = clickhouse_server.start(settings.home, port=settings.clickhouse_port)
        url, kind = server.url, "clickhouse-server"
        log(f"clickhouse-server {server.version}: {url} (pid {server.pid})")
    else:
        url = settings.store or settings.default_store_url
        if parse_store_url(url).scheme == "chdb":
            _start_chdb_daemon(settings, url)
            kind = "chdb-daemon"
            log(f"store: {url} (chDB daemon, pid file {_daemon_pid_file(settings)})")
        else:
            kind = "external"
            log(f"store: {url} (RECWATCH_STORE)")
    store = open_store(url)
    store.connect()
    try:
        applied = migrate(store)
    finally:
        store.close()
    if applied:
        log(f"store: applied migrations {applied}")

    try:
        manager = alertmanager.start(settings.home, settings.alertmanager_port)
        am_url = manager.url
        log(f"alertmanager {manager.version}: {am_url} (pid {manager.pid})")
    except MissingToolError as exc:  # no root to install it: the rest of the stack still works
        am_url = ""
        log(f"alertmanager: not started: {exc}")
    record = StackRecord(bootstrap, managed, brokers, url, kind, am_url)
    _record_path(settings).write_text(json.dumps(asdict(record), indent=2) + "\n")
    return record


def _start_chdb_daemon(settings: Settings, url: str, timeout_s: float = 30.0) -> None:
    path = parse_store_url(url).path
    assert path is not None
    if processes.read(_daemon_pid_file(settings)) is not None and find_daemon(path) is not None:
        return
    log_file = settings.home / "store" / "daemon.log"
    processes.spawn(
        [
            sys.executable,
            "-m",
            "store.daemon",
            "--path",
            str(path),
            "--database",
            parse_store_url(url).database,
        ],
        pid_file=_daemon_pid_file(settings),
        log_file=log_file,
    )
    deadline = time.monotonic() + timeout_s
    while find_daemon(path) is None:
        if processes.read(_daemon_pid_file(settings)) is None:
            raise StartupError(f"the chDB store daemon exited; see {log_file}:\n{processes.log_tail(log_file)}")
        if time.monotonic() > deadline:
            raise StartupError(f"the chDB store daemon did not start within {timeout_s:.0f} s; see {log_file}")
        time.sleep(0.05)


def down(settings: Settings, log: Any = print) -> None:
    """Stop what ``up`` started (by pid file), never anything else. Data stays in ``$RECWATCH_HOME``."""
    if alertmanager.stop(settings.home):
        log("alertmanager stopped")
    if processes.stop(_daemon_pid_file(settings)):
        log("store: chDB daemon stopped")
    if clickhouse_server.stop(settings.home):
        log("clickhouse-server stopped")
    n = kafka.stop(settings.home)
    if n:
        log(f"kafka: {n} broker(s) stopped")
    _record_path(settings).unlink(missing_ok=True)


def status(settings: Settings) -> dict[str, Any]:
    record = read_record(settings)
    cluster = kafka.status(settings.home)
    server = clickhouse_server.status(settings.home)
    daemon = processes.read(_daemon_pid_file(settings))
    manager = alertmanager.status(settings.home)
    return {
        "home": str(settings.home),
        "kafka": {
            "bootstrap": settings.kafka or (record.kafka_bootstrap if record else None),
            "version": kafka.KAFKA_VERSION,
            "managed": record.kafka_managed if record else None,
            "brokers": [
                {"node_id": n.node_id, "port": n.port, "pid": n.pid} for n in (cluster.nodes if cluster else ())
            ],
        },
        "store": {
            "url": store_url(settings),
            "kind": record.store_kind if record else None,
            "chdb_daemon_pid": daemon.pid if daemon else None,
            "clickhouse_server": (
                {"pid": server.pid, "version": server.version, "port": server.port} if server else None
            ),
        },
        "alertmanager": (
            {"url": manager.url, "pid": manager.pid, "version": manager.version, "port": manager.port}
            if manager
            else None
        ),
    }
