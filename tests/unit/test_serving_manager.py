"""Routing and version bookkeeping of the model manager, with a stand-in loader (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serving.config import ConfigFileError, ModelConfig, VersionPolicy, parse_canary_weights, parse_model_server_config
from serving.errors import ModelLoadError, ModelNotFoundError
from serving.manager import AVAILABLE, END, ModelManager, route_fraction
from serving.model_repository import LoadedModel


def _version_dir(base: Path, version: int) -> None:
    (base / str(version)).mkdir(parents=True, exist_ok=True)
    (base / str(version) / "saved_model.pb").write_bytes(b"")


def _fake_loader(loaded: list[tuple[str, int]]) -> Any:
    def load(path: Path, name: str) -> LoadedModel:
        if (path / "broken").exists():
            raise ModelLoadError(str(path), "broken on purpose")
        loaded.append((name, int(path.name)))
        return LoadedModel(name, int(path.name), path, {}, {}, _root=None)

    return load


@pytest.fixture
def base(tmp_path: Path) -> Path:
    b = tmp_path / "ranker"
    _version_dir(b, 1)
    return b


def test_latest_version_is_served_and_a_new_one_replaces_it(base: Path) -> None:
    loaded: list[tuple[str, int]] = []
    unloaded: list[tuple[str, int]] = []
    m = ModelManager(
        [ModelConfig("ranker", base)], loader=_fake_loader(loaded), on_unload=lambda n, v: unloaded.append((n, v))
    )
    m.poll_once()
    held = m.resolve("ranker")  # an in-flight request holds this version
    assert held.model.version == 1
    _version_dir(base, 2)
    assert m.poll_once() == ["ranker: version 2 loaded", "ranker: version 1 unloaded"]
    assert m.resolve("ranker").model.version == 2
    assert held.model.version == 1  # the in-flight request still has its model object
    assert unloaded == [("ranker", 1)]
    assert [(v, s) for v, s, _ in m.version_status("ranker")] == [(1, END), (2, AVAILABLE)]
    with pytest.raises(ModelNotFoundError):
        m.resolve("ranker", version=1)
    assert m.poll_once() == []  # nothing new: nothing reloaded
    assert loaded == [("ranker", 1), ("ranker", 2)]


def test_a_broken_version_is_reported_and_the_old_one_keeps_serving(base: Path) -> None:
    m = ModelManager([ModelConfig("ranker", base)], loader=_fake_loader([]))
    m.poll_once()
    _version_dir(base, 2)
    (base / "2" / "broken").touch()
    m.poll_once()
    assert m.resolve("ranker").model.version == 1
    (row,) = m.version_status("ranker", 2)
    assert row[1] == END and "broken on purpose" in row[2]


def test_policies_select_versions() -> None:
    assert VersionPolicy().select([3, 1, 2]) == [3]
    assert VersionPolicy("latest", num_versions=2).select([3, 1, 2]) == [2, 3]
    assert VersionPolicy("all").select([3, 1]) == [1, 3]
    assert VersionPolicy("specific", versions=(1, 5)).select([1, 2, 3]) == [1]


def _labelled(base: Path) -> ModelManager:
    _version_dir(base, 2)
    config = ModelConfig("ranker", base, VersionPolicy("all"), {"stable": 1, "canary": 2})
    m = ModelManager([config], loader=_fake_loader([]))
    m.poll_once()
    return m


def test_labels_and_explicit_versions_route_exactly(base: Path) -> None:
    m = _labelled(base)
    assert m.resolve("ranker", label="canary").model.version == 2
    assert m.resolve("ranker", label="stable").label == "stable"
    assert m.resolve("ranker", version=1).label == ""
    with pytest.raises(ModelNotFoundError, match="shadow"):
        m.resolve("ranker", label="shadow")
    with pytest.raises(ModelNotFoundError):
        m.resolve("nope")


def test_unversioned_requests_split_by_the_canary_weight(base: Path) -> None:
    m = _labelled(base)
    ids = [f"req-{i}" for i in range(20_000)]
    assert {m.resolve("ranker", request_id=r).label for r in ids[:100]} == {"stable"}  # weight 0: all stable
    m.set_canary_weight("ranker", 0.1)
    arms = [m.resolve("ranker", request_id=r).label for r in ids]
    share = arms.count("canary") / len(arms)
    assert 0.09 < share < 0.11
    # sticky: the same request id always lands on the same arm
    assert [m.resolve("ranker", request_id=r).label for r in ids[:500]] == arms[:500]
    m.set_canary_weight("ranker", 1.0)
    assert {m.resolve("ranker", request_id=r).label for r in ids[:100]} == {"canary"}
    with pytest.raises(ValueError):
        m.set_canary_weight("ranker", 1.5)


def test_route_fraction_is_uniform_for_sequential_ids() -> None:
    values = [route_fraction(str(i)) for i in range(10_000)]
    for lo in (0.0, 0.25, 0.5, 0.75):
        share = sum(lo <= v < lo + 0.25 for v in values) / len(values)
        assert 0.23 < share < 0.27


def test_reload_config_adds_and_removes_models(base: Path, tmp_path: Path) -> None:
    other = tmp_path / "seq"
    _version_dir(other, 7)
    m = ModelManager([ModelConfig("ranker", base)], loader=_fake_loader([]))
    m.poll_once()
    m.reload_config([ModelConfig("seq", other)])
    assert m.resolve("seq").model.version == 7
    with pytest.raises(ModelNotFoundError):
        m.resolve("ranker")


def test_tf_serving_config_file_format(tmp_path: Path) -> None:
    text = """
    model_config_list {
      config { name: "ranker" base_path: "models/ranker" model_platform: "tensorflow"
               model_version_policy { specific { versions: 1 versions: 2 } }
               version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } }
      config { name: "seq" base_path: "/abs/seq" model_version_policy { latest { num_versions: 2 } } }
    }"""
    ranker, seq = parse_model_server_config(text, relative_to=tmp_path)
    assert ranker.base_path == tmp_path / "models/ranker"
    assert ranker.policy == VersionPolicy("specific", versions=(1, 2))
    assert dict(ranker.labels) == {"stable": 1, "canary": 2}
    assert seq.policy == VersionPolicy("latest", num_versions=2)
    with pytest.raises(ConfigFileError):
        parse_model_server_config("model_config_list { config { name: 'x' } }")
    with pytest.raises(ConfigFileError):
        parse_model_server_config("this is not a config")


def test_canary_weights_formats() -> None:
    assert parse_canary_weights('{"ranker": 0.25}') == {"ranker": 0.25}
    assert parse_canary_weights("ranker=0.1, seq=1") == {"ranker": 0.1, "seq": 1.0}
    for bad in ("ranker", "ranker=2", "ranker=x", "{not json"):
        with pytest.raises(ConfigFileError):
            parse_canary_weights(bad)
