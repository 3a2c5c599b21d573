"""infra.kafka against real Kafka processes: one node, a three-node quorum, and the missing-tool errors.

Free loopback ports (tests/ports.py) keep clear of a developer broker on 9092 and of other test runs. Every test stops
what it started in a fixture teardown. Jars come from the shared cache (RECWATCH_CACHE, ~/.cache/recwatch).
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer

from infra import kafka, processes
from infra.errors import MissingToolError
from recwatch.settings import Settings
from tests.ports import free_ports

SINGLE_PORT = free_ports(2)
TRIPLE_PORT = free_ports(6)


@pytest.fixture(scope="module")
def cache() -> Path:
    return Settings.from_env().cache


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "home"
    kafka.stop(tmp_path / "home")


def _deliver(producer: Producer, topic: str, value: bytes, timeout_s: float = 60) -> None:
    """Produce one message and wait for its delivery report; fail the test on error or timeout."""
    reports: list[KafkaError | None] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        reports.append(err)

    producer.produce(topic, value=value, on_delivery=on_delivery)
    deadline = time.monotonic() + timeout_s
    while not reports and time.monotonic() < deadline:
        producer.poll(0.5)
    assert reports == [None], f"delivery of {value!r} to {topic}: {reports or 'no report in time'}"


@pytest.mark.integration
def test_single_node_lifecycle(home: Path, cache: Path) -> None:
    started = time.monotonic()
    cluster = kafka.start(home, cache=cache, base_port=SINGLE_PORT, timeout_s=120)
    print(f"single node ready in {time.monotonic() - started:.1f}s")
    assert cluster.bootstrap == f"127.0.0.1:{SINGLE_PORT}"
    assert cluster.version == kafka.KAFKA_VERSION
    (node,) = cluster.nodes
    assert (node.node_id, node.port, node.controller_port) == (0, SINGLE_PORT, SINGLE_PORT + 1)
    assert node.pid is not None
    assert (home / "kafka" / "node-0" / "data" / "meta.properties").is_file()
    assert (home / "kafka" / "cluster.json").is_file()

    kafka.ensure_topics(cluster.bootstrap, {"events": 2})
    kafka.ensure_topics(cluster.bootstrap, {"events": 2})  # already there: no error, left as is
    producer = Producer({"bootstrap.servers": cluster.bootstrap})
    value = uuid.uuid4().hex.encode()
    _deliver(producer, "events", value)

    consumer = Consumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": "test-single",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe(["events"])
        received = None
        deadline = time.monotonic() + 60
        while received is None and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                received = msg.value()
        assert received == value
    finally:
        consumer.close()

    status = kafka.status(home)
    assert status is not None and status.nodes[0].pid == node.pid

    del producer  # closes it, so it does not log refused connections once the broker is gone
    again = kafka.start(home, cache=cache, base_port=SINGLE_PORT)
    assert again == cluster  # same pid: nothing was started

    assert kafka.stop(home) == 1
    stopped = kafka.status(home)
    assert stopped is not None and stopped.nodes[0].pid is None
    assert processes.read(home / "kafka" / "node-0" / "pid") is None
    assert kafka.stop(home) == 0


@pytest.mark.integration
def test_three_nodes_survive_losing_one(home: Path, cache: Path) -> None:
    started = time.monotonic()
    cluster = kafka.start(home, cache=cache, brokers=3, base_port=TRIPLE_PORT, timeout_s=180)
    print(f"three nodes ready in {time.monotonic() - started:.1f}s")
    assert [n.port for n in cluster.nodes] == [TRIPLE_PORT, TRIPLE_PORT + 2, TRIPLE_PORT + 4]
    assert all(n.pid is not None for n in cluster.nodes)

    kafka.ensure_topics(cluster.bootstrap, {"orders": 1}, replication=3, config={"min.insync.replicas": "2"})
    # recwatch's own topics on 3 brokers: 2 replicas in sync per write; the model-updates history kept
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin._config import ConfigResource

    from infra.stack import create_topics
    from schemas import topics

    create_topics(cluster.bootstrap, 2, replication=3)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    wanted = [ConfigResource("topic", topics.INFERENCE), ConfigResource("topic", topics.MODEL_UPDATES)]
    described = {r.name: f.result(timeout=30) for r, f in admin.describe_configs(wanted).items()}
    assert described[topics.INFERENCE]["min.insync.replicas"].value == "2"
    assert described[topics.MODEL_UPDATES]["min.insync.replicas"].value == "2"
    assert described[topics.MODEL_UPDATES]["retention.ms"].value == "-1"
    assert described[topics.INFERENCE]["retention.ms"].value != "-1"
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "message.timeout.ms": 90_000})
    _deliver(producer, "orders", b"before")

    # Stop the partition leader: the next write needs a new leader and a shrunk ISR (2 >= min.insync).
    metadata = producer.list_topics("orders", timeout=10)
    partition = metadata.topics["orders"].partitions[0]
    assert sorted(partition.replicas) == [0, 1, 2]
    victim = partition.leader
    assert processes.stop(home / "kafka" / f"node-{victim}" / "pid")
    status = kafka.status(home)
    assert status is not None
    assert [n.pid is None for n in status.nodes] == [n.node_id == victim for n in status.nodes]

    _deliver(producer, "orders", b"after", timeout_s=90)
    assert producer.flush(10) == 0

    del producer
    # start() brings back only the missing node.
    restarted = kafka.start(home, cache=cache, brokers=3, base_port=TRIPLE_PORT)
    for before, after in zip(cluster.nodes, restarted.nodes, strict=True):
        assert after.pid is not None
        assert (after.pid == before.pid) == (after.node_id != victim)

    assert kafka.stop(home) == 3


@pytest.mark.integration
def test_ensure_jars_reports_missing_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    real_java = shutil.which("java")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(MissingToolError, match="apt-get install") as no_java:
        kafka.ensure_jars(tmp_path / "cache")
    assert no_java.value.tool == "java"

    if real_java is None:
        pytest.skip("java is not installed, so the mvn check cannot be reached")
    java_only = tmp_path / "java-only-bin"
    java_only.mkdir()
    (java_only / "java").symlink_to(Path(real_java).resolve())
    monkeypatch.setenv("PATH", str(java_only))
    with pytest.raises(MissingToolError, match="maven") as no_mvn:
        kafka.ensure_jars(tmp_path / "cache")
    assert no_mvn.value.tool == "mvn"
    assert not (tmp_path / "cache" / f"kafka-{kafka.KAFKA_VERSION}" / "lib").exists()

    # A complete cached lib dir needs java only: mvn is not run again.
    monkeypatch.undo()
    lib = kafka.ensure_jars(cache)
    monkeypatch.setenv("PATH", str(java_only))
    assert kafka.ensure_jars(cache) == lib
    assert any(lib.glob(f"kafka_2.13-{kafka.KAFKA_VERSION}.jar"))
