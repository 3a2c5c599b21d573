"""A local Apache Kafka cluster (KRaft, combined broker+controller nodes) run from jars resolved by Maven.

Layout under ``home``::

    home/kafka/cluster.id              cluster id, generated once
    home/kafka/cluster.json            bootstrap, ports and version of the recorded cluster (read by status())
    home/kafka/node-<id>/server.properties
    home/kafka/node-<id>/data/         log.dirs (meta.properties appears once the node is formatted)
    home/kafka/node-<id>/logs/         server.log (log4j2) and stdout.log (process stdout/stderr)
    home/kafka/node-<id>/pid           see infra.processes

Guarantees:

* Node ``i`` (0-based) listens on ``127.0.0.1:base_port+2i`` (PLAINTEXT) and ``base_port+2i+1`` (CONTROLLER).
  Nothing binds to other interfaces.
* A single node forms a dynamic KRaft quorum (formatted with ``--standalone``); several nodes form a static
  quorum (``controller.quorum.voters``) and are formatted without it, all with the same cluster id.
* Storage is formatted only when ``meta.properties`` is absent, so data survives stop/start.
* :func:`start` returns only once every broker is registered and answers metadata requests; if it fails, the
  processes it spawned are stopped again and :class:`~infra.errors.StartupError` names the log file.
* Processes are tracked by pid files only (never found or killed by name). Concurrent ``start``/``stop``
  calls on the same home are serialised with a lock file, concurrent :func:`ensure_jars` calls on one cache
  too.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from infra import processes
from infra.errors import InfraError, MissingToolError, StartupError

_PACKAGE_DIR = Path(__file__).resolve().parent / "kafka"
POM = _PACKAGE_DIR / "pom.xml"
LOG4J2_CONFIG = _PACKAGE_DIR / "log4j2.properties"
MIN_JAVA = 17
JVM_OPTS: tuple[str, ...] = (
    "-Xms64m",
    "-Xmx384m",
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
_JAVA_HINT = f"Install Java >= {MIN_JAVA}, e.g. `apt-get install openjdk-17-jre-headless`."
_MVN_HINT = "Install Maven and Java, e.g. `apt-get install openjdk-17-jre-headless maven`."
_MARKER = ".recwatch-complete"
_LOG_TAIL_LINES = 40


def _read_kafka_version(pom: Path) -> str:
    root = ET.parse(pom).getroot()
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = root.find("m:properties/m:kafka.version", ns)
    if node is None or not (node.text or "").strip():
        raise InfraError(f"{pom} has no <kafka.version> property")
    return (node.text or "").strip()


KAFKA_VERSION: str = _read_kafka_version(POM)


@dataclass(frozen=True)
class KafkaNode:
    """One combined broker+controller node; ``pid`` is None when it is not running."""

    node_id: int
    port: int
    controller_port: int
    pid: int | None


@dataclass(frozen=True)
class KafkaCluster:
    """A recorded local cluster: ``bootstrap`` lists every node's PLAINTEXT address."""

    bootstrap: str
    nodes: tuple[KafkaNode, ...]
    version: str


# --------------------------------------------------------------------------------------------- jars


def ensure_jars(cache: Path) -> Path:
    """Return ``cache/kafka-<KAFKA_VERSION>/lib`` holding the broker jars, resolving them first if needed.

    Java (>= 17) is always checked. Maven runs (on a copy of the packaged pom, so the package directory is
    never written to) only when the lib dir is missing, lacks the completion marker, misses a jar the marker
    lists, or was resolved from a different pom. The new lib dir replaces the old one only after a successful
    copy.

    Raises MissingToolError when java or mvn is missing (or java is too old), InfraError when Maven fails.
    """
    _check_java()
    version_dir = cache / f"kafka-{KAFKA_VERSION}"
    lib = version_dir / "lib"
    pom_bytes = POM.read_bytes()
    pom_sha = hashlib.sha256(pom_bytes).hexdigest()
    if _lib_complete(lib, pom_sha):
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise MissingToolError("mvn", _MVN_HINT)
    version_dir.mkdir(parents=True, exist_ok=True)
    with _locked(version_dir / ".lock"):
        if _lib_complete(lib, pom_sha):  # another process resolved it while we waited
            return lib
        (version_dir / "pom.xml").write_bytes(pom_bytes)
        staging = version_dir / "lib.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        argv = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(version_dir / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        result = subprocess.run(argv, capture_output=True, text=True, cwd=version_dir, check=False)
        jars = sorted(p.name for p in staging.glob("*.jar")) if staging.is_dir() else []
        if result.returncode != 0 or not any(j.startswith(f"kafka_2.13-{KAFKA_VERSION}") for j in jars):
            output = (result.stdout + result.stderr).strip().splitlines()[-_LOG_TAIL_LINES:]
            shutil.rmtree(staging, ignore_errors=True)
            raise InfraError(
                f"resolving Kafka {KAFKA_VERSION} jars with `{' '.join(argv)}` failed "
                f"(rc={result.returncode}); Maven Central must be reachable on first use.\n" + "\n".join(output)
            )
        (staging / _MARKER).write_text(json.dumps({"pom_sha256": pom_sha, "jars": jars}, indent=1) + "\n")
        shutil.rmtree(lib, ignore_errors=True)
        staging.rename(lib)
    return lib


def _lib_complete(lib: Path, pom_sha: str) -> bool:
    try:
        marker = json.loads((lib / _MARKER).read_text())
    except (FileNotFoundError, ValueError):
        return False
    jars = marker.get("jars") if isinstance(marker, dict) else None
    if not isinstance(jars, list) or not jars or marker.get("pom_sha256") != pom_sha:
        return False
    return all((lib / str(name)).is_file() for name in jars)


def _check_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise MissingToolError("java", _JAVA_HINT)
    major = _java_major(java)
    if major < MIN_JAVA:
        raise MissingToolError("java", f"{java} is Java {major}, recwatch needs >= {MIN_JAVA}. {_JAVA_HINT}")
    return java


@lru_cache(maxsize=8)
def _java_major(java: str) -> int:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MissingToolError("java", f"`{java} -version` failed ({exc}). {_JAVA_HINT}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        raise MissingToolError("java", f"cannot tell the version of {java}. {_JAVA_HINT}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0_x" is Java 8


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------- cluster


def start(
    home: Path,
    *,
    cache: Path,
    brokers: int = 1,
    base_port: int = 9092,
    timeout_s: float = 120,
) -> KafkaCluster:
    """Start (or find running) a ``brokers``-node cluster under ``home/kafka`` and wait until it serves.

    Idempotent: nodes already running are left alone and only missing ones are started; if all are running
    nothing is started. Returns once metadata requests list all ``brokers`` brokers. A home formatted for a
    different broker count or port is refused (stop the cluster and delete ``home/kafka`` to change it).

    Keep ``base_port`` below the ephemeral range (Linux: 32768+), where client sockets can grab the ports.

    Raises MissingToolError/InfraError from :func:`ensure_jars`, StartupError when a port is taken, a node
    exits early or the cluster is not ready within ``timeout_s`` (the nodes spawned by this call are stopped).
    """
    if brokers < 1:
        raise ValueError(f"brokers must be >= 1, got {brokers}")
    kdir = home.absolute() / "kafka"
    kdir.mkdir(parents=True, exist_ok=True)
    with _locked(kdir / ".lock"):
        _check_layout(kdir, brokers, base_port)
        nodes = [(i, base_port + 2 * i, base_port + 2 * i + 1) for i in range(brokers)]
        bootstrap = ",".join(f"127.0.0.1:{port}" for _, port, _ in nodes)
        to_start = [n for n in nodes if processes.read(_node_dir(kdir, n[0]) / "pid") is None]
        spawned: list[Path] = []
        if to_start:
            for _, port, cport in to_start:
                for p in (port, cport):
                    if not processes.port_free(p):
                        raise StartupError(f"port 127.0.0.1:{p} is already in use; cannot start Kafka on it")
            lib = ensure_jars(cache)
            java = _check_java()
            cluster_id = _cluster_id(kdir)
            _write_json(
                kdir / "cluster.json",
                {
                    "bootstrap": bootstrap,
                    "version": KAFKA_VERSION,
                    "brokers": brokers,
                    "base_port": base_port,
                    "cluster_id": cluster_id,
                    "nodes": [{"node_id": i, "port": p, "controller_port": c} for i, p, c in nodes],
                },
            )
            for node_id, _, _ in nodes:
                _write_server_properties(kdir, node_id, brokers, base_port)
            _format_missing(java, lib, kdir, cluster_id, [n[0] for n in to_start], standalone=brokers == 1)
            for node_id, _, _ in to_start:
                ndir = _node_dir(kdir, node_id)
                argv = [
                    java,
                    *JVM_OPTS,
                    f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
                    f"-Dkafka.logs.dir={ndir / 'logs'}",
                    "-cp",
                    f"{lib}/*",
                    "kafka.Kafka",
                    str(ndir / "server.properties"),
                ]
                processes.spawn(argv, pid_file=ndir / "pid", log_file=ndir / "logs" / "stdout.log", cwd=ndir)
                spawned.append(ndir)
        try:
            _wait_ready(kdir, bootstrap, brokers, [n[0] for n in nodes], timeout_s)
        except StartupError:
            for ndir in spawned:
                processes.stop(ndir / "pid", timeout_s=10)
            raise
    cluster = status(home)
    assert cluster is not None
    return cluster


def stop(home: Path) -> int:
    """Stop every node recorded under ``home/kafka`` (SIGTERM, then SIGKILL after 30 s), all in parallel.

    Returns how many were running. Data, logs and the cluster record are kept, so :func:`start` resumes.
    """
    kdir = home.absolute() / "kafka"
    if not kdir.is_dir():
        return 0
    with _locked(kdir / ".lock"):
        pid_files = sorted(kdir.glob("node-*/pid"))
        if not pid_files:
            return 0
        # In parallel: stopped one by one, the last nodes lose their controller quorum and shut down slowly.
        with ThreadPoolExecutor(max_workers=len(pid_files)) as pool:
            return sum(pool.map(processes.stop, pid_files))


def status(home: Path) -> KafkaCluster | None:
    """The cluster recorded under ``home/kafka`` with the pids of its live nodes, or None if never started."""
    kdir = home.absolute() / "kafka"
    try:
        record = json.loads((kdir / "cluster.json").read_text())
    except FileNotFoundError:
        return None
    nodes = []
    for node in record["nodes"]:
        running = processes.read(_node_dir(kdir, int(node["node_id"])) / "pid")
        nodes.append(
            KafkaNode(
                node_id=int(node["node_id"]),
                port=int(node["port"]),
                controller_port=int(node["controller_port"]),
                pid=running.pid if running is not None else None,
            )
        )
    return KafkaCluster(bootstrap=str(record["bootstrap"]), nodes=tuple(nodes), version=str(record["version"]))


def _node_dir(kdir: Path, node_id: int) -> Path:
    return kdir / f"node-{node_id}"


def _check_layout(kdir: Path, brokers: int, base_port: int) -> None:
    try:
        record = json.loads((kdir / "cluster.json").read_text())
    except FileNotFoundError:
        return
    if record.get("brokers") == brokers and record.get("base_port") == base_port:
        return
    formatted = any(kdir.glob("node-*/data/meta.properties"))
    running = any(processes.read(p) is not None for p in kdir.glob("node-*/pid"))
    if formatted or running:
        raise InfraError(
            f"{kdir} holds a {record.get('brokers')}-node Kafka cluster on port {record.get('base_port')}, "
            f"not {brokers} node(s) on port {base_port}; stop it and delete {kdir} to change the layout"
        )


def _cluster_id(kdir: Path) -> str:
    path = kdir / "cluster.id"
    if path.is_file():
        existing = path.read_text().strip()
        if existing:
            return existing
    while True:  # Kafka's own Uuid.randomUuid() also avoids ids starting with "-" (they parse as options)
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            break
    tmp = path.with_suffix(".tmp")
    tmp.write_text(cid + "\n")
    tmp.replace(path)
    return cid


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _write_server_properties(kdir: Path, node_id: int, brokers: int, base_port: int) -> None:
    ndir = _node_dir(kdir, node_id)
    (ndir / "data").mkdir(parents=True, exist_ok=True)
    (ndir / "logs").mkdir(parents=True, exist_ok=True)
    port = base_port + 2 * node_id
    replicas = min(brokers, 3)
    min_isr = min(brokers, 2)
    if brokers == 1:
        quorum = f"controller.quorum.bootstrap.servers=127.0.0.1:{port + 1}"
    else:
        voters = ",".join(f"{i}@127.0.0.1:{base_port + 2 * i + 1}" for i in range(brokers))
        quorum = f"controller.quorum.voters={voters}"
    lines = [
        "# Written by infra/kafka.py on every start; edits are overwritten.",
        "process.roles=broker,controller",
        f"node.id={node_id}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{port + 1}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{port + 1}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        quorum,
        f"log.dirs={ndir / 'data'}",
        f"default.replication.factor={replicas}",
        f"offsets.topic.replication.factor={replicas}",
        f"transaction.state.log.replication.factor={replicas}",
        f"transaction.state.log.min.isr={min_isr}",
        f"share.coordinator.state.topic.replication.factor={replicas}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
        "group.initial.rebalance.delay.ms=0",
        "num.network.threads=2",
        "num.io.threads=4",
        "",
    ]
    (ndir / "server.properties").write_text("\n".join(lines))


def _format_missing(
    java: str, lib: Path, kdir: Path, cluster_id: str, node_ids: list[int], *, standalone: bool
) -> None:
    """Format (in parallel) the storage of the given nodes that has no meta.properties yet."""
    jobs: list[tuple[Path, subprocess.Popen[bytes]]] = []
    for node_id in node_ids:
        ndir = _node_dir(kdir, node_id)
        if (ndir / "data" / "meta.properties").is_file():
            continue
        argv = [
            java,
            "-Xmx256m",
            "-XX:+UseSerialGC",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            f"-Dkafka.logs.dir={ndir / 'logs'}",
            "-cp",
            f"{lib}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(ndir / "server.properties"),
        ]
        if standalone:
            argv.append("--standalone")
        log_path = ndir / "logs" / "format.log"
        with open(log_path, "ab") as log:
            jobs.append((log_path, subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)))
    failures = []
    for log_path, proc in jobs:
        if proc.wait() != 0:
            failures.append(f"{log_path} (rc={proc.returncode}):\n{processes.log_tail(log_path)}")
    if failures:
        raise StartupError("formatting Kafka storage failed; see " + "\n".join(failures))


def _wait_ready(kdir: Path, bootstrap: str, brokers: int, node_ids: list[int], timeout_s: float) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout_s
    # log_level 0: refused connections while the JVMs boot are expected; failures surface as StartupError.
    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "log_level": 0,
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": 500,
        }
    )
    seen: set[int] = set()
    last_error = "no metadata response yet"
    while True:
        for node_id in node_ids:
            ndir = _node_dir(kdir, node_id)
            if processes.read(ndir / "pid") is None:
                log = ndir / "logs" / "stdout.log"
                tail = processes.log_tail(log)
                raise StartupError(f"Kafka node {node_id} exited during startup; see {log} and server.log:\n{tail}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log = _node_dir(kdir, node_ids[0]) / "logs" / "stdout.log"
            raise StartupError(
                f"Kafka at {bootstrap} not ready after {timeout_s:.0f}s ({last_error}; brokers seen: "
                f"{sorted(seen)} of {brokers}); see {log} and server.log next to it:\n{processes.log_tail(log)}"
            )
        try:
            metadata = admin.list_topics(timeout=max(0.1, min(remaining, 2.0)))
        except KafkaException as exc:
            last_error = str(exc)
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            continue
        seen = set(metadata.brokers)
        if len(seen) >= brokers:
            return
        last_error = f"{len(seen)} broker(s) registered"
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


# ----------------------------------------------------------------------------------------------- topics


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    replication: int = 1,
    timeout_s: float = 30,
    config: Mapping[str, str] | None = None,
) -> None:
    """Create the missing topics (name -> partitions) with ``replication`` replicas and topic ``config``.

    Existing topics are left as they are (partitions and config untouched), including ones another client
    creates concurrently. On return every named topic exists and each of its partitions has a leader.
    Raises InfraError when creation fails or the topics are not ready within ``timeout_s``.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic  # confluent_kafka.admin re-exports it, but not for mypy

    deadline = time.monotonic() + timeout_s
    admin = AdminClient({"bootstrap.servers": bootstrap})

    def remaining() -> float:
        return max(0.1, deadline - time.monotonic())

    try:
        existing = set(admin.list_topics(timeout=remaining()).topics)
    except KafkaException as exc:
        raise InfraError(f"cannot reach Kafka at {bootstrap} to create topics: {exc}") from exc
    missing = [
        NewTopic(name, num_partitions=partitions, replication_factor=replication, config=dict(config or {}))
        for name, partitions in topics.items()
        if name not in existing
    ]
    if missing:
        futures = admin.create_topics(missing, operation_timeout=remaining(), request_timeout=remaining())
        for name, future in futures.items():
            try:
                future.result(timeout=remaining())
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise InfraError(f"creating topic {name!r} on {bootstrap} failed: {exc}") from exc
            except Exception as exc:  # concurrent.futures.TimeoutError and friends
                raise InfraError(f"creating topic {name!r} on {bootstrap} failed: {exc!r}") from exc
    while True:
        try:
            metadata = admin.list_topics(timeout=remaining())
        except KafkaException as exc:
            raise InfraError(f"cannot read topic metadata from {bootstrap}: {exc}") from exc
        pending = [
            name
            for name in topics
            if name not in metadata.topics
            or metadata.topics[name].error is not None
            or not metadata.topics[name].partitions
            or any(p.leader < 0 for p in metadata.topics[name].partitions.values())
        ]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise InfraError(f"topics {pending} on {bootstrap} have no leader after {timeout_s:.0f}s")
        time.sleep(0.1)
