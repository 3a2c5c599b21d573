"""TF Serving's REST API end to end: a ModelManager and Predictor over two real SavedModel versions, the
RestServer on a loopback port, requests as TF Serving's documentation writes them (curl and http.client)."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families

from schemas import InferenceEvent
from serving.config import ModelConfig, VersionPolicy
from serving.manager import ModelManager, synthesized_warmup
from serving.metrics import ServingMetrics
from serving.predict import Predictor
from serving.publisher import InMemoryPublisher
from serving.rest import RestServer

pytestmark = pytest.mark.integration

MODEL = "ranker"
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


@dataclass
class Rest:
    server: RestServer
    publisher: InMemoryPublisher
    base: Path

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)

    def call(
        self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        connection = self.connect()
        try:
            return _exchange(connection, method, path, body, headers)
        finally:
            connection.close()

    def only_event(self) -> InferenceEvent:
        events = self.publisher.events
        assert len(events) == 1, events
        return events[0]


def _exchange(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    data = body if isinstance(body, bytes | str) or body is None else json.dumps(body)
    connection.request(method, path, body=data, headers=headers or {})
    response = connection.getresponse()
    raw = response.read()
    parsed = json.loads(raw) if response.getheader("Content-Type", "").startswith("application/json") else raw
    return response.status, {k.lower(): v for k, v in response.getheaders()}, parsed


@pytest.fixture(scope="module")
def model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.tiny_model import export_tiny_ranker

    root = tmp_path_factory.mktemp("rest-models")
    export_tiny_ranker(root, model_name=MODEL, version=1, seed=0)
    export_tiny_ranker(root, model_name=MODEL, version=2, seed=1)
    return root / MODEL


@pytest.fixture(scope="module")
def reference(model_base: Path) -> Callable[[int, dict[str, np.ndarray]], np.ndarray]:
    """Scores of calling version ``v``'s serving_default signature directly, without the server."""
    import tensorflow as tf

    loaded = {v: tf.saved_model.load(str(model_base / str(v))) for v in (1, 2)}

    def scores(version: int, inputs: dict[str, np.ndarray]) -> np.ndarray:
        signature = loaded[version].signatures["serving_default"]
        return np.asarray(signature(**{k: tf.constant(v) for k, v in inputs.items()})["scores"])

    return scores


@pytest.fixture(scope="module")
def _module_rest(model_base: Path) -> Iterator[Rest]:
    threads_before = set(threading.enumerate())
    config = ModelConfig(MODEL, model_base, VersionPolicy("all"), labels={"stable": 1, "canary": 2})
    manager = ModelManager([config], warmup=synthesized_warmup)
    manager.poll_once()
    publisher = InMemoryPublisher()
    metrics = ServingMetrics()
    predictor = Predictor(manager, publisher, replica="rest-test", observers=[metrics])
    server = RestServer(predictor, port=0, metrics=metrics)
    server.start()
    try:
        yield Rest(server, publisher, model_base)
    finally:
        server.stop(grace_s=2.0)
    leftover = [t.name for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    assert not leftover, f"threads left running after stop: {leftover}"


@pytest.fixture
def rest(_module_rest: Rest) -> Rest:
    _module_rest.publisher.clear()
    return _module_rest


def _inputs(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "user_id": np.full(rows, rng.integers(0, 10**9), dtype=np.int64),
        "item_id": rng.integers(0, 10**12, size=rows, dtype=np.int64),
        "features": rng.normal(size=(rows, 8)).astype(np.float32),
    }


def _instances(inputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    rows = len(inputs["item_id"])
    return [{name: array[i].tolist() for name, array in inputs.items()} for i in range(rows)]


def _columns(inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    return {name: array.tolist() for name, array in inputs.items()}


# -- predict ----------------------------------------------------------------------------------------------------


@needs_curl
def test_curl_row_format_from_the_docs_matches_a_direct_signature_call(rest, reference):
    inputs = _inputs(32, seed=1)
    body = json.dumps({"signature_name": "serving_default", "instances": _instances(inputs)})

    # As TF Serving's documentation does it (curl sends Expect: 100-continue for large bodies, too)
    result = subprocess.run(
        ["curl", "-sS", "-d", body, "-X", "POST", f"http://127.0.0.1:{rest.server.port}/v1/models/{MODEL}:predict"],
        capture_output=True,
        check=True,
        timeout=60,
    )

    predictions = json.loads(result.stdout)["predictions"]
    scores = np.array(predictions, np.float32)
    assert scores.shape == (32,)
    np.testing.assert_allclose(scores, reference(1, inputs), rtol=1e-6, atol=1e-7)


@needs_curl
def test_curl_error_answer_is_tf_serving_json_with_the_status(rest):
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-i",
            "-d",
            '{"instances": [1.0,5.0]}',
            "-X",
            "POST",
            f"http://127.0.0.1:{rest.server.port}/v1/models/half:predict",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )

    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 Not Found")
    assert b"Content-Type: application/json" in head
    assert "half" in json.loads(body)["error"]


def test_columnar_format_answers_outputs(rest, reference):
    inputs = _inputs(32, seed=2)

    status, _, answer = rest.call("POST", f"/v1/models/{MODEL}:predict", {"inputs": _columns(inputs)})

    assert status == 200
    np.testing.assert_allclose(np.array(answer["outputs"], np.float32), reference(1, inputs), rtol=1e-6, atol=1e-7)


def test_columnar_inputs_may_broadcast_one_user_over_the_items(rest, reference):
    inputs = _inputs(5, seed=3)
    columns = {**_columns(inputs), "user_id": [int(inputs["user_id"][0])]}

    status, _, answer = rest.call("POST", f"/v1/models/{MODEL}:predict", {"inputs": columns})

    assert status == 200
    np.testing.assert_allclose(np.array(answer["outputs"], np.float32), reference(1, inputs), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("path", "version", "label"),
    [
        ("/versions/1", 1, ""),
        ("/versions/2", 2, ""),
        ("/labels/stable", 1, "stable"),
        ("/labels/canary", 2, "canary"),
        ("", 1, "stable"),  # no canary weight: unversioned requests go to the stable label
    ],
)
def test_version_and_label_urls_select_the_version(rest, reference, path, version, label):
    inputs = _inputs(8, seed=4)

    status, _, answer = rest.call("POST", f"/v1/models/{MODEL}{path}:predict", {"instances": _instances(inputs)})

    assert status == 200
    np.testing.assert_allclose(
        np.array(answer["predictions"], np.float32), reference(version, inputs), rtol=1e-6, atol=1e-7
    )
    event = rest.only_event()
    assert (event.version, event.label) == (version, label)


def test_each_predict_publishes_one_event_with_the_request_id_echoed(rest):
    inputs = _inputs(6, seed=5)

    status, headers, _ = rest.call(
        "POST", f"/v1/models/{MODEL}:predict", {"instances": _instances(inputs)}, {"X-Request-Id": "req-42"}
    )

    assert status == 200 and headers["x-request-id"] == "req-42"
    event = rest.only_event()
    assert (event.request_id, event.api, event.status_code, event.rows) == ("req-42", "predict", 0, 6)
    # the same input summaries as the gRPC front end reports
    assert [(t.name, t.dtype, list(t.shape)) for t in event.inputs] == [
        ("features", "float32", [6, 8]),
        ("item_id", "int64", [6]),
        ("user_id", "int64", [6]),
    ]
    assert list(event.item_ids) == [str(v) for v in inputs["item_id"]]


def test_a_request_id_is_generated_when_absent(rest):
    status, headers, _ = rest.call("POST", f"/v1/models/{MODEL}:predict", {"instances": _instances(_inputs(1))})

    assert status == 200 and len(headers["x-request-id"]) == 32
    assert rest.only_event().request_id == headers["x-request-id"]


def test_unknown_model_is_404_with_an_error_json_and_an_event(rest):
    status, headers, answer = rest.call("POST", "/v1/models/no-such-model:predict", {"instances": [1.0]})

    assert status == 404 and headers["content-type"] == "application/json"
    assert "no-such-model" in answer["error"]
    assert rest.only_event().status_code == 5  # NOT_FOUND


def test_unknown_version_and_label_are_404(rest):
    body = {"instances": _instances(_inputs(1))}
    assert rest.call("POST", f"/v1/models/{MODEL}/versions/9:predict", body)[0] == 404
    assert rest.call("POST", f"/v1/models/{MODEL}/labels/nope:predict", body)[0] == 404
    assert rest.call("GET", f"/v1/models/{MODEL}/versions/9")[0] == 404


def test_bad_input_is_400_naming_the_input(rest):
    instances = _instances(_inputs(3))
    instances[1]["features"] = instances[1]["features"][:7]

    status, _, answer = rest.call("POST", f"/v1/models/{MODEL}:predict", {"instances": instances})

    assert status == 400
    assert "'features'" in answer["error"]
    event = rest.only_event()
    assert event.status_code == 3 and "'features'" in event.error  # INVALID_ARGUMENT
    assert [t.name for t in event.inputs] == ["features", "item_id", "user_id"]  # as the JSON declared them


def test_an_unknown_signature_is_400(rest):
    body = {"signature_name": "nope", "instances": _instances(_inputs(1))}

    status, _, answer = rest.call("POST", f"/v1/models/{MODEL}:predict", body)

    assert status == 400 and "nope" in answer["error"]


def test_classify_and_regress_are_not_implemented(rest):
    assert rest.call("POST", f"/v1/models/{MODEL}:classify", {"examples": [{}]})[0] == 501
    assert rest.publisher.events == []


# -- status and metadata ------------------------------------------------------------------------------------------


def test_model_status_is_tf_serving_json(rest):
    status, _, answer = rest.call("GET", f"/v1/models/{MODEL}")

    assert status == 200
    assert answer == {
        "model_version_status": [
            {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for v in ("1", "2")
        ]
    }
    assert rest.call("GET", f"/v1/models/{MODEL}/versions/2")[2]["model_version_status"][0]["version"] == "2"
    assert rest.call("GET", f"/v1/models/{MODEL}/labels/canary")[2]["model_version_status"][0]["version"] == "2"
    assert rest.publisher.events == []  # status calls are not predictions


def test_metadata_is_the_saved_models_signature_defs(rest):
    from tensorflow.core.protobuf import saved_model_pb2

    status, _, answer = rest.call("GET", f"/v1/models/{MODEL}/labels/canary/metadata")

    assert status == 200
    assert answer["model_spec"] == {"name": MODEL, "version": "2", "signature_name": ""}
    saved = saved_model_pb2.SavedModel.FromString((rest.base / "2" / "saved_model.pb").read_bytes())
    expected = json_format.MessageToDict(
        saved.meta_graphs[0].signature_def["serving_default"],
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
    )
    served = answer["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert served == expected
    features = served["inputs"]["features"]
    assert features["dtype"] == "DT_FLOAT" and [d["size"] for d in features["tensor_shape"]["dim"]] == ["-1", "8"]


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/models"), ("GET", "/v2/models/ranker"), ("PUT", f"/v1/models/{MODEL}")]
)
def test_malformed_urls_are_400_json(rest, method, path):
    status, _, answer = rest.call(method, path)

    assert status == 400 and "error" in answer


# -- connections and metrics ----------------------------------------------------------------------------------------


def test_many_requests_share_one_keep_alive_connection_and_a_malformed_one_does_not_break_it(rest):
    connection = rest.connect()
    body = {"instances": _instances(_inputs(4))}
    try:
        _exchange(connection, "GET", f"/v1/models/{MODEL}")
        local = connection.sock.getsockname()
        for i in range(60):
            if i % 10 == 5:
                status, headers, _ = _exchange(connection, "POST", f"/v1/models/{MODEL}:predict", b"{not json")
                assert status == 400 and "connection" not in headers
            else:
                assert _exchange(connection, "POST", f"/v1/models/{MODEL}:predict", body)[0] == 200
            assert connection.sock is not None and connection.sock.getsockname() == local
    finally:
        connection.close()
    assert len(rest.publisher.events) == 60


def test_concurrent_clients_all_get_answers(rest, reference):
    inputs = _inputs(16, seed=9)
    expected = reference(1, inputs)
    failures: list[str] = []

    def client() -> None:
        connection = rest.connect()
        try:
            for _ in range(15):
                status, _, answer = _exchange(
                    connection, "POST", f"/v1/models/{MODEL}:predict", {"inputs": _columns(inputs)}
                )
                if status != 200 or not np.allclose(np.array(answer["outputs"], np.float32), expected, rtol=1e-6):
                    failures.append(f"{status} {answer}")
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    assert failures == []
    assert len(rest.publisher.events) == 90


def _request_counts(rest: Rest) -> dict[tuple[str, str, str], float]:
    status, headers, body = rest.call("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "recwatch_requests_total":
                labels = sample.labels
                key = (labels["model"], labels["version"], labels["status"])
                counts[key] = counts.get(key, 0) + sample.value  # summed over labels and APIs
    return counts


def test_metrics_count_every_request_by_status(rest):
    before = _request_counts(rest)
    good = {"instances": _instances(_inputs(4))}
    bad = {"instances": [{"user_id": 1, "item_id": "x", "features": [0.0] * 8}]}
    for _ in range(7):
        rest.call("POST", f"/v1/models/{MODEL}/versions/2:predict", good)
    for _ in range(3):
        rest.call("POST", f"/v1/models/{MODEL}/versions/2:predict", bad)
    rest.call("POST", "/v1/models/missing:predict", good)

    after = _request_counts(rest)

    def delta(key: tuple[str, str, str]) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert delta((MODEL, "2", "OK")) == 7
    assert delta((MODEL, "2", "INVALID_ARGUMENT")) == 3
    assert delta(("missing", "0", "NOT_FOUND")) == 1
    _, _, body = rest.call("GET", "/metrics")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"recwatch_request_duration_seconds", "recwatch_batch_size", "process_resident_memory_bytes"} <= names
