"""The main job, end to end on the embedded defaults (``make demo``).

infra up -> a DCN-v2 ranker and a SASRec recommender -> ``recwatch serve`` and ``recwatch worker`` as real
processes -> N Predict calls through the official tensorflow-serving-api client, while a simulated shop
publishes what shoppers did with the ranked items (clicks, carts, buys) to the feedback topic -> wait until the
store holds every event and every click -> print latency percentiles and CTR with SQL -> ``recwatch alerter``,
steady traffic, a 60 s latency fault, the alert in the store, Alertmanager and a signed webhook, its resolution
(``recwatch/demo_alerting.py``) -> the closed loop's two stories, drift -> retrain -> canary -> promotion and a bad
canary -> rollback, each with its timeline (``recwatch/demo_closed_loop.py``) -> stop everything.

``scenario``: ``all`` (the default, what ``make demo`` runs) or one story alone (``drift``, ``bad-canary``).
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from infra import processes, stack
from recwatch.settings import Settings
from store import open_store

MODEL = "ranker"
SEQ_MODEL = "seq"
GRPC_PORT = 8500


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


SCENARIOS = ("all", "drift", "bad-canary")


def run_demo(settings: Settings, *, requests: int = 200, keep: bool = False, scenario: str = "all") -> int:
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    _step("infra up")
    stack.up(settings)
    run_dir = settings.home / "demo"
    model_base = settings.home / "model_repository"
    started: list[Path] = []
    try:
        _step("models: a DCN-v2 CTR ranker and a SASRec sequence recommender (trained once, then reused)")
        for kind, name in (("ctr", MODEL), ("sasrec", SEQ_MODEL)):
            subprocess.run(
                [sys.executable, "-m", "training", "train", "--model", kind, "--data", "synthetic",
                 "--base-path", str(model_base), "--model-name", name, "--version", "1", "--reuse"],
                check=True,
            )  # fmt: skip
        config = run_dir / "models.config"
        run_dir.mkdir(parents=True, exist_ok=True)
        config.write_text(
            "model_config_list {\n"
            + "".join(
                f'  config {{ name: "{name}" base_path: "{model_base / name}" model_platform: "tensorflow" }}\n'
                for name in (MODEL, SEQ_MODEL)
            )
            + "}\n"
        )
        _step("recwatch worker" if scenario != "all" else "recwatch serve and recwatch worker")
        cli = [sys.executable, "-m", "recwatch.cli"]
        worker_pid = run_dir / "worker.pid"
        # windows are published once 5 s of lateness have passed (default 30 s), so the demo's alerts come sooner
        processes.spawn(
            [*cli, "worker", "--allowed-lateness", "5"], pid_file=worker_pid, log_file=run_dir / "worker.log"
        )
        started.append(worker_pid)
        ok = True
        if scenario == "all":
            ok = _basic_story(settings, cli, config, run_dir, requests, started)
        from recwatch.demo_closed_loop import closed_loop_stories

        stories = ("drift", "bad-canary") if scenario == "all" else (scenario,)
        ok = (
            closed_loop_stories(
                stories,
                cli=cli,
                run_dir=run_dir,
                stable_model_dir=model_base / MODEL / "1",
                bootstrap=stack.bootstrap_servers(settings),
                store_url=stack.store_url(settings),
                pid_files=started,
                step=_step,
                sql=_sql,
            )
            and ok
        )
        return 0 if ok else 1
    finally:
        _step("stopping")
        for pid_file in reversed(started):
            processes.stop(pid_file)
        if not keep:
            stack.down(settings)


def _basic_story(
    settings: Settings, cli: list[str], config: Path, run_dir: Path, requests: int, started: list[Path]
) -> bool:
    """Serve, N Predict calls, the store's aggregates, then the alerting story; the server is stopped after."""
    serve_pid = run_dir / "serve.pid"
    fault_file = run_dir / "faults.json"
    fault_file.write_text("{}\n")
    processes.spawn(
        [*cli, "serve", "--model_config_file", str(config), "--port", str(GRPC_PORT), "--replica", "demo-0",
         "--fault_file", str(fault_file)],
        pid_file=serve_pid, log_file=run_dir / "serve.log",
    )  # fmt: skip
    started.append(serve_pid)
    worker_pid = run_dir / "worker.pid"
    try:
        return _basic_traffic(settings, cli, run_dir, requests, started, serve_pid, worker_pid, fault_file)
    finally:
        processes.stop(serve_pid)
        started.remove(serve_pid)


def _basic_traffic(
    settings: Settings,
    cli: list[str],
    run_dir: Path,
    requests: int,
    started: list[Path],
    serve_pid: Path,
    worker_pid: Path,
    fault_file: Path,
) -> bool:
    print(f"logs: {run_dir}/serve.log, {run_dir}/worker.log, {run_dir}/alerter.log")

    _step(
        f"traffic: {requests} Predict calls to {MODEL} (1 user x 32 candidates) and {requests // 4} to {SEQ_MODEL} "
        "(a 20-item history x 32 candidates) through tensorflow-serving-api"
    )
    run_id = uuid.uuid4().hex[:8]
    shop = Shop(stack.bootstrap_servers(settings))
    sent = _send_traffic(requests, run_id, serve_pid, run_dir / "serve.log", shop)
    feedback = shop.close()
    print(f"sent {sent} requests with request ids demo-{run_id}-*")
    print(
        f"the shop reported {feedback['click']} clicks, {feedback['cart']} add-to-carts and {feedback['buy']} "
        f"purchases on the ranked items (topic recwatch.feedback.v1)"
    )

    _step("waiting until the store holds every event")
    store = open_store(stack.store_url(settings))
    store.connect()
    try:
        count_sql = f"SELECT count(DISTINCT event_id) FROM inference_events WHERE request_id LIKE 'demo-{run_id}-%'"
        deadline = time.monotonic() + 120
        seen = 0
        while time.monotonic() < deadline:
            seen = int(store.query(count_sql).scalar())
            if seen >= sent:
                break
            if processes.read(worker_pid) is None:
                print(f"the worker exited; see {run_dir / 'worker.log'}")
                return False
            time.sleep(0.5)
        print(f"{seen} of {sent} events in inference_events")
        clicks_sql = (
            f"SELECT count() FROM feedback_events WHERE request_id LIKE 'demo-{run_id}-%' AND behavior = 'click'"
        )
        while time.monotonic() < deadline and int(store.query(clicks_sql).scalar()) < feedback["click"]:
            time.sleep(0.5)
        print(f"{int(store.query(clicks_sql).scalar())} of {feedback['click']} clicks in feedback_events")
        _step("what the store says, while the worker keeps running (recwatch sql)")
        _sql(
            "SELECT window_start, model, version, requests, errors, round(latency_p50_us) AS p50_us, "
            "round(latency_p99_us) AS p99_us, latency_max_us AS max_us, round(score_mean, 3) AS score, "
            "late_events AS late FROM inference_metrics_1m "
            "WHERE window_start >= now() - INTERVAL 10 MINUTE ORDER BY window_start, model"
        )
        _sql(
            "SELECT model, version, sum(impressions) AS shown, sum(clicked_impressions) AS clicked, "
            "round(sum(clicked_impressions) / sum(impressions), 4) AS ctr, "
            "round(sum(bought_impressions) / sum(impressions), 4) AS conversion "
            "FROM business_metrics_1m WHERE window_start >= now() - INTERVAL 10 MINUTE GROUP BY model, version"
        )
        from recwatch.demo_alerting import alerting_story

        alerted = alerting_story(
            cli=cli,
            run_dir=run_dir,
            fault_file=fault_file,
            grpc_target=f"127.0.0.1:{GRPC_PORT}",
            bootstrap=stack.bootstrap_servers(settings),
            store=store,
            alertmanager_url=stack.alertmanager_url(settings),
            pid_files=started,
            step=_step,
            sql=_sql,
        )
    finally:
        store.close()
    return seen == sent and alerted


def _sql(query: str) -> None:
    """Run ``recwatch sql`` as a user would, in its own process, and show its output."""
    print(f'$ recwatch sql "{query}"', flush=True)
    subprocess.run([sys.executable, "-m", "recwatch.cli", "sql", query], check=True)


class Shop:
    """Shoppers reacting to the ranked lists: the higher an item's score and rank, the likelier a click; some
    clicks become add-to-carts and purchases. Each reaction is a FeedbackEvent on the feedback topic, keyed
    by the prediction's request id (as a shop's frontend would send them).

    ``click_scale`` multiplies every click probability (0.5: CTR halves, a broken product page); it may be
    changed while the shop runs (``benchmarks/faults``).

    ``taste`` (a :class:`Taste`, None by default; may be set while the shop runs, as the drift story does) replaces
    the score's part: shoppers then click an item at a rank with ``taste.click_probability(item, rank)``, whatever
    the model scored it."""

    def __init__(self, bootstrap: str, seed: int = 11, *, click_scale: float = 1.0, taste: Taste | None = None) -> None:
        from confluent_kafka import Producer

        self._producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20})
        self._rng = random.Random(seed)
        self.click_scale = click_scale
        self.taste = taste
        self.counts = {"click": 0, "cart": 0, "buy": 0}

    def react(self, request_id: str, user_id: str, items: list[int], scores: list[float]) -> None:
        from schemas import FeedbackEvent, topics

        ranked = sorted(zip(scores, items, strict=True), reverse=True)
        now_us = time.time_ns() // 1000
        taste = self.taste
        for rank, (score, item) in enumerate(ranked[:10]):
            if taste is None:
                p = self.click_scale * 0.25 * max(min(score, 1.0), 0.05) / (1 + rank)
            else:
                p = self.click_scale * taste.click_probability(item, rank)
            if self._rng.random() >= p:
                continue
            behaviors = ["click"]
            if self._rng.random() < 0.3:
                behaviors.append("cart")
                if self._rng.random() < 0.5:
                    behaviors.append("buy")
            for i, behavior in enumerate(behaviors):
                event = FeedbackEvent(
                    event_id=uuid.uuid4().hex,
                    request_id=request_id,
                    user_id=user_id,
                    item_id=str(item),
                    behavior=behavior.upper(),  # the enum value by name
                    ts_us=now_us + (1 + rank + i) * 1_000_000,
                )
                self._producer.produce(topics.FEEDBACK, event.SerializeToString(), request_id.encode())
                self.counts[behavior] += 1
        self._producer.poll(0)

    def close(self) -> dict[str, int]:
        if self._producer.flush(30):
            raise SystemExit("the shop could not deliver its feedback to Kafka within 30 s")
        return dict(self.counts)


class Taste:
    """A preference of the shoppers that no model was trained on: a seeded ``share`` of ``items`` is *hot* (clicked
    with probability ``hot / (1 + rank)`` at rank 0, 1, …, whatever its score), every other item is clicked with
    ``cold / (1 + rank)``. A ranker retrained on the feedback can learn which items are hot (their ``item_id`` and
    popularity); one trained before cannot.

    >>> taste = Taste(range(100, 200), share=0.1, seed=1)
    >>> len(taste.hot_items), taste.hot_items == Taste(range(199, 99, -1), share=0.1, seed=1).hot_items
    (10, True)
    >>> item = min(taste.hot_items)
    >>> taste.click_probability(item, 0), taste.click_probability(item, 2)
    (0.9, 0.3)
    """

    def __init__(
        self, items: Iterable[int], *, share: float = 0.1, hot: float = 0.9, cold: float = 0.02, seed: int = 23
    ) -> None:
        pool = sorted({int(i) for i in items})
        if not pool or not 0.0 < share <= 1.0:
            raise ValueError(f"a taste needs items and a share in (0, 1], got {len(pool)} items, share {share}")
        self.hot_items = frozenset(random.Random(seed).sample(pool, max(1, round(share * len(pool)))))
        self.hot = hot
        self.cold = cold

    def click_probability(self, item: int, rank: int) -> float:
        return (self.hot if item in self.hot_items else self.cold) / (1 + rank)


class Traffic:
    """The demo's Predict requests: four of five rank 32 random candidates for a user with the DCN-v2 ranker
    (``item_id`` 1..5000, ``category_id`` = item mod 97), the fifth asks the SASRec model to rank 32 candidates
    after a 20-item history.

    ``drift`` (0..1, may change while traffic runs) is the share of ranker candidates drawn instead from the
    catalog the ranker was trained on (the items of ``python -m training train --data synthetic``, seed 0): a
    shifted input distribution. Measured on the demo's ranker (`docs/faults.md`): score mean 0.195 -> 0.259 at
    drift 0.5, 0.323 at 1.0.

    ``drift_items``: draw the drifted candidates from that many items of the catalog only (a seeded sample; None,
    the default: all ~30,000), so that within minutes shoppers see each item several times (the drift story).

    ``model`` / ``seq_model`` name the two models in requests; ``seq_model=None`` sends every request to ``model``.
    """

    def __init__(
        self,
        seed: int = 7,
        *,
        drift: float = 0.0,
        model: str = MODEL,
        seq_model: str | None = SEQ_MODEL,
        drift_items: int | None = None,
    ) -> None:
        import numpy as np

        self._rng = np.random.default_rng(seed)
        self.drift = drift
        self.model = model
        self.seq_model = seq_model
        self.drift_items = drift_items
        self._catalog: Any = None

    def next(self, i: int) -> tuple[Any, str, list[int]]:
        """The i-th request, its user id and its candidates."""
        import numpy as np
        from tensorflow_serving.apis import predict_pb2

        from serving.tensors import to_tensor_proto

        rng = self._rng
        request = predict_pb2.PredictRequest()
        candidates = rng.integers(1, 5_000, size=32, dtype=np.int64)
        user = str(rng.integers(1, 10_000))
        if self.seq_model and i % 5 == 4:  # every fifth call: the sequence model ranks after a user's history
            request.model_spec.name = self.seq_model
            request.inputs["history"].CopyFrom(to_tensor_proto(rng.integers(1, 5_000, size=(1, 20), dtype=np.int64)))
            request.inputs["item_id"].CopyFrom(to_tensor_proto(candidates.reshape(1, 32)))
        else:
            if self.drift > 0:
                shifted = rng.random(32) < self.drift
                candidates = np.where(shifted, rng.choice(self.catalog(), size=32), candidates)
            request.model_spec.name = self.model
            request.inputs["user_id"].CopyFrom(to_tensor_proto(np.full(32, int(user), dtype=np.int64)))
            request.inputs["item_id"].CopyFrom(to_tensor_proto(candidates))
            request.inputs["category_id"].CopyFrom(to_tensor_proto(candidates % 97))
        return request, user, [int(c) for c in candidates]

    def catalog(self) -> Any:
        """Item ids of the synthetic training log (generated once, ~0.2 s), or ``drift_items`` of them."""
        if self._catalog is None:
            import numpy as np

            from training.synthetic import generate

            catalog = np.unique(generate(20_000, seed=0).item)  # the trainer's --data synthetic defaults
            if self.drift_items is not None and self.drift_items < len(catalog):
                sample = np.random.default_rng(5).choice(catalog, size=self.drift_items, replace=False)
                catalog = np.sort(sample)
            self._catalog = catalog
        return self._catalog


def _send_traffic(n: int, run_id: str, serve_pid: Path, serve_log: Path, shop: Shop, *, drift: float = 0.0) -> int:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}")
    try:
        grpc.channel_ready_future(channel).result(timeout=120)
    except grpc.FutureTimeoutError:
        raise SystemExit(f"the model server did not come up; see {serve_log}") from None
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    traffic = Traffic(drift=drift)
    sent = 0
    for i in range(n + n // 4):
        request, user, candidates = traffic.next(i)
        request_id = f"demo-{run_id}-{i}"
        response = stub.Predict(request, timeout=10, metadata=[("x-request-id", request_id)])
        scores = list(next(iter(response.outputs.values())).float_val)
        if len(scores) == len(candidates):
            shop.react(request_id, user, candidates, scores)
        sent += 1
    channel.close()
    return sent
