"""The demo's alerting story: steady traffic, ``recwatch alerter`` as users run it, a latency fault, the alert in
the store, in Prometheus Alertmanager and at a signed webhook, then its resolution.

Also the paced traffic generator (:class:`Pacer`) that ``benchmarks/faults`` uses for its runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from infra import processes
from recwatch.demo import Shop, Traffic

LATENCY_ALERT = "RecwatchLatencyP99High"


class Pacer:
    """Steady Predict traffic and shop feedback from a thread, asynchronously (a slow fault must not slow the
    offered rate); at most ``max_in_flight`` calls in flight, the rest counted as skipped."""

    def __init__(
        self, target: str, bootstrap: str, rate: float, max_in_flight: int = 64, *, traffic: Traffic | None = None
    ) -> None:
        self.traffic = traffic or Traffic(seed=7)
        self.shop = Shop(bootstrap, seed=11)
        self.target = target
        self.rate = rate
        self.max_in_flight = max_in_flight
        self.counts = {"sent": 0, "ok": 0, "failed": 0, "skipped": 0}
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-traffic", daemon=True)
        self.started_at = 0.0

    def start(self) -> None:
        import grpc

        channel = grpc.insecure_channel(self.target)
        try:
            grpc.channel_ready_future(channel).result(timeout=180)
        except grpc.FutureTimeoutError:
            channel.close()
            raise SystemExit("the model server did not come up (see serve.log)") from None
        self._channel = channel
        self.started_at = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        run_id = uuid.uuid4().hex[:8]
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        i = 0
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            next_at += interval
            with self._lock:
                if self._in_flight >= self.max_in_flight:
                    self.counts["skipped"] += 1
                    continue
                self._in_flight += 1
                self.counts["sent"] += 1
            request, user, candidates = self.traffic.next(i)
            request_id = f"paced-{run_id}-{i}"
            i += 1
            future = stub.Predict.future(request, timeout=10, metadata=[("x-request-id", request_id)])
            future.add_done_callback(lambda f, r=request_id, u=user, c=candidates: self._done(f, r, u, c))

    def _done(self, future: Any, request_id: str, user: str, candidates: list[int]) -> None:
        try:
            response = future.result()
        except Exception:  # grpc.RpcError: the injected errors (and any real one) are what the pipeline sees
            ok = False
        else:
            ok = True
            scores = list(next(iter(response.outputs.values())).float_val)
            if len(scores) == len(candidates):
                self.shop.react(request_id, user, candidates, scores)
        with self._lock:
            self._in_flight -= 1
            self.counts["ok" if ok else "failed"] += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        deadline = time.monotonic() + 15
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        if hasattr(self, "_channel"):
            self._channel.close()
        with contextlib.suppress(SystemExit):
            self.shop.close()


class WebhookReceiver:
    """A webhook endpoint on loopback that checks every request's signature as a receiver should
    (``alerting.webhook.verify``) and keeps what arrived."""

    def __init__(self, secret: bytes) -> None:
        from alerting.webhook import verify

        received: list[tuple[bool, dict[str, Any]]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ok = verify(secret, dict(self.headers.items()), body, now_s=time.time())
                received.append((ok, json.loads(body)))
                self.send_response(200 if ok else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-webhook", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def _clock() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


def _wait(condition: Callable[[], Any], deadline_s: float, check: Callable[[], None]) -> Any:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        check()
        time.sleep(1.0)
    return None


def alerting_story(
    *,
    cli: list[str],
    run_dir: Path,
    fault_file: Path,
    grpc_target: str,
    bootstrap: str,
    store: Any,
    alertmanager_url: str | None,
    pid_files: list[Path],
    step: Callable[[str], None],
    sql: Callable[[str], None],
    rate: float = 40.0,
) -> bool:
    """Run the story; True when the latency alert fired and reached its receivers."""
    from alerting.alertmanager import AlertmanagerClient, AlertmanagerError

    secret = secrets.token_hex(32)  # RECWATCH_ALERT_WEBHOOK_SECRET's UTF-8 bytes are the HMAC key
    hook = WebhookReceiver(secret.encode())
    alerter_pid = run_dir / "alerter.pid"
    env = {**os.environ, "RECWATCH_ALERT_WEBHOOK_URL": hook.url, "RECWATCH_ALERT_WEBHOOK_SECRET": secret}
    processes.spawn([*cli, "alerter"], pid_file=alerter_pid, log_file=run_dir / "alerter.log", env=env)
    pid_files.append(alerter_pid)
    pacer = Pacer(grpc_target, bootstrap, rate)
    pacer.start()
    started_us = time.time_ns() // 1000

    def alive() -> None:
        for pid in pid_files:
            if processes.read(pid) is None:
                raise SystemExit(f"{pid.stem} exited; see {run_dir / (pid.stem + '.log')}")

    try:
        step(
            f"alerting: `recwatch alerter` scores every series; {rate:g} Predict calls/s while its detectors warm up "
            "(8 windows of 10 s), alerts go to Alertmanager and to a signed webhook"
        )
        warm = _wait(lambda: _published_windows(store, started_us) >= 10, 300, alive)
        print(f"{_clock()} {_published_windows(store, started_us)} windows published since traffic started")
        if not warm:
            print("the windows did not reach the metrics topic in time; see worker.log")
            return False
        fault_us = time.time_ns() // 1000
        fault_file.write_text(json.dumps({"latency_factor": 5.0}) + "\n")
        print(f"{_clock()} fault on: every request 5x slower for 60 s (recwatch serve --fault_file {fault_file})")
        _wait(lambda: time.time_ns() // 1000 - fault_us >= 60_000_000, 61, alive)
        fault_file.write_text("{}\n")
        print(f"{_clock()} fault off")
        fired = _wait(lambda: _alert(store, LATENCY_ALERT, ("FIRING", "RESOLVED"), fault_us), 120, alive)
        if not fired:
            print("no latency alert fired within 3 minutes of the fault; see alerter.log")
            return False
        starts_at_us, summary = fired
        delay = starts_at_us // 10_000_000 - fault_us // 10_000_000
        print(f"{_clock()} FIRING {LATENCY_ALERT}: {summary}")
        print(f"  detection delay: {delay} window(s) after the 10 s window the fault started in")
        sql(
            "SELECT ts, metric, model, version, round(value) AS value, round(score, 3) AS score FROM anomalies "
            f"WHERE ts_us >= {fault_us - 10_000_000} ORDER BY ts, metric, model LIMIT 12"
        )
        if alertmanager_url:
            try:
                active = AlertmanagerClient(alertmanager_url).alerts(filters=[f"alertname={LATENCY_ALERT}"])
                print(f"Alertmanager ({alertmanager_url}): {len(active)} active {LATENCY_ALERT} alert(s)")
            except AlertmanagerError as exc:
                print(f"Alertmanager: {exc}")
        resolved = _wait(lambda: _alert(store, LATENCY_ALERT, ("RESOLVED",), fault_us), 180, alive)
        print(f"{_clock()} " + ("RESOLVED after 3 clean windows" if resolved else "not resolved within 3 minutes"))
        _wait(lambda: len(hook.received) >= 2 if resolved else hook.received, 30, alive)
        for ok, payload in hook.received:
            names = sorted({a["labels"].get("alertname", "") for a in payload["alerts"]})
            models = sorted({a["labels"].get("model", "") for a in payload["alerts"]})
            print(
                f"webhook: {payload['status']} {', '.join(names)} ({', '.join(models)}), signature "
                + ("verified" if ok else "INVALID")
            )
        return bool(hook.received) and all(ok for ok, _ in hook.received)
    finally:
        pacer.stop()
        fault_file.write_text("{}\n")
        processes.stop(alerter_pid)
        hook.close()
        print(f"traffic: {pacer.counts['sent']} calls, {pacer.counts['failed']} failed")


def _published_windows(store: Any, since_us: int) -> int:
    """10 s windows starting after ``since_us`` that are on the metrics topic (``metrics_emitted``)."""
    through = store.query("SELECT max(toUInt32(through)) FROM metrics_emitted WHERE stream = 'inference_10s'").scalar()
    start_s = since_us // 1_000_000
    return max(0, (int(through or 0) - start_s) // 10 + 1) if through else 0


def _alert(store: Any, alertname: str, statuses: tuple[str, ...], since_us: int) -> tuple[int, str] | None:
    """The first alert of ``alertname`` for the ranker since ``since_us`` whose latest state is one of ``statuses``:
    (its first anomalous window's start, its summary)."""
    rows = store.query(
        "SELECT starts_at_us, argMax(status, updated_us) AS state, "
        "argMax(annotation_values[indexOf(annotation_names, 'summary')], updated_us) AS summary FROM alerts "
        f"WHERE alertname = '{alertname}' AND model = 'ranker' AND starts_at_us >= {since_us - 10_000_000} "
        f"GROUP BY fingerprint, starts_at_us HAVING state IN ({', '.join(map(repr, statuses))}) "
        "ORDER BY starts_at_us LIMIT 1"
    ).rows
    return (int(rows[0][0]), str(rows[0][2])) if rows else None
