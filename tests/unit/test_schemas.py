"""The wire contract: generated code is current, and adding a field keeps old readers and old messages working."""

from __future__ import annotations

import filecmp
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from schemas import InferenceEvent, topics
from schemas.generate import PROTO_DIR, generate, proto_files


def test_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    generate(tmp_path)
    for proto in proto_files():
        for suffix in ("_pb2.py", "_pb2.pyi"):
            name = proto.stem + suffix
            fresh = tmp_path / "schemas" / "v1" / name
            assert filecmp.cmp(fresh, PROTO_DIR / name, shallow=False), f"{name} is stale: run `make schemas`"


def _evolved_inference_event() -> Any:
    """InferenceEvent as a newer writer would have it: one more field (number 99), in its own pool."""
    file_proto = descriptor_pb2.FileDescriptorProto()
    InferenceEvent.DESCRIPTOR.file.CopyToProto(file_proto)
    message = next(m for m in file_proto.message_type if m.name == "InferenceEvent")
    message.field.add(
        name="shop_id",
        number=99,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("recwatch.v1.InferenceEvent"))


def _sample() -> InferenceEvent:
    event = InferenceEvent(event_id="e1", request_id="r1", model="ranker", version=3, received_us=1_700_000_000_000_000)
    event.latency.total_us = 1234
    event.item_ids.extend(["10", "11"])
    return event


def test_old_reader_reads_new_messages_and_keeps_the_unknown_field() -> None:
    evolved = _evolved_inference_event()
    new_message = evolved.FromString(_sample().SerializeToString())
    new_message.shop_id = "shop-7"

    old_view = InferenceEvent.FromString(new_message.SerializeToString())
    assert (old_view.event_id, old_view.model, old_view.version) == ("e1", "ranker", 3)
    assert old_view.latency.total_us == 1234
    assert list(old_view.item_ids) == ["10", "11"]
    # an old consumer that re-publishes the event (e.g. to a dead-letter topic) does not lose the new field
    assert evolved.FromString(old_view.SerializeToString()).shop_id == "shop-7"


def test_new_reader_reads_old_messages_with_the_new_field_defaulted() -> None:
    evolved = _evolved_inference_event()
    new_view = evolved.FromString(_sample().SerializeToString())
    assert new_view.shop_id == ""
    assert new_view.event_id == "e1"
    assert new_view.latency.total_us == 1234


def test_topic_names_are_versioned_and_unique() -> None:
    assert len(set(topics.ALL)) == len(topics.ALL)
    assert all(t.startswith("recwatch.") and t.endswith(".v1") for t in topics.ALL)
