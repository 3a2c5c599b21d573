"""``recwatch update``: a command typed by a person is on recwatch.model-updates.v1, keyed by the model."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from recwatch.cli import main
from schemas import ModelUpdate, topics

pytestmark = pytest.mark.integration


def test_a_deploy_command_reaches_the_topic(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RECWATCH_KAFKA", kafka_bootstrap)
    monkeypatch.setenv("RECWATCH_HOME", str(tmp_path))
    model = f"ranker-{uuid.uuid4().hex[:8]}"
    assert main(["update", "deploy", model, "--version", "7", "--reason", "drift fixed"]) == 0
    update_id = capsys.readouterr().out.split("update_id ")[1].strip()
    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topics.MODEL_UPDATES])
    found = None
    deadline = time.monotonic() + 30
    try:
        while found is None and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            value = msg.value() if msg is not None and not msg.error() else None
            if msg is not None and value is not None and msg.key() == model.encode():
                found = ModelUpdate.FromString(value)
    finally:
        consumer.close()
    assert found is not None, "the command never arrived"
    assert (found.update_id, found.kind, found.version, found.reason) == (
        update_id, ModelUpdate.DEPLOY_REQUESTED, 7, "drift fixed",
    )  # fmt: skip
    assert main(["update", "deploy", model]) == 2  # no version: a configuration error, nothing published
