"""``python -m benchmarks.faults``: inject faults into the live pipeline and time their detection.

A private stack in a temporary ``RECWATCH_HOME`` (Kafka and the chDB store daemon on free loopback ports, through
``infra.stack``), the demo's two models, ``recwatch serve --fault_file F`` (one replica) and ``recwatch worker``
as processes, the alerter (``AlertService`` in this process with a ``RecordingNotifier``), and the demo's traffic
(``recwatch.demo.Traffic``, paced at ``--rate`` requests/s) with its shop's feedback (``recwatch.demo.Shop``).

Phases: warm-up (the detectors learn, 8 windows at least), an optional clean phase that counts every alert
fired, then each fault in turn:

| fault | how | metric (window) | held |
|---|---|---|---|
| latency | fault file ``latency_factor`` 5 | ``latency_p99_us`` (10 s) | 60 s |
| errors | fault file ``error_rate`` 0.2 | ``error_rate`` (10 s) | 60 s |
| leak | fault file ``leak_bytes_per_s`` (default 512 KiB/s) | ``process_rss_bytes`` (10 s) | until alert, <= 5 min |
| drift | ``Traffic.drift`` = 1 (catalog items) | ``score_mean`` (10 s) | 60 s |
| ctr | ``Shop.click_scale`` = 0.5 | ``ctr`` (1 min) | until alert, <= 7 min |

For each: the window the fault started in, the first anomalous window of its metric (the firing alert's
``starts_at_us``), the delay in windows between them, the wall-clock seconds from the fault's start to the alert,
and whether the alert resolved (3 clean windows) after the fault was cleared. The ctr fault needs 8 scored
minutes of CTR first (the detector's warm-up): it waits until traffic has run 11 min.

Shortcuts against the production defaults, to shorten delays (printed with the results): the worker runs with
``--allowed-lateness 5`` (windows publish ~20 s after they close instead of ~45 s) and the alerter reads
``business_metrics_1m`` every 10 s for minutes that ended 75 s ago (instead of every 60 s, 120 s ago).

Everything started is stopped at the end, also on Ctrl-C or SIGTERM; ``--max-minutes`` bounds the run (faults
not reached are reported as skipped).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from infra.processes import port_free
from recwatch.demo_alerting import Pacer

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ("latency", "errors", "leak", "drift", "ctr")
METRIC = {
    "latency": "latency_p99_us",
    "errors": "error_rate",
    "leak": "process_rss_bytes",
    "drift": "score_mean",
    "ctr": "ctr",
}
WINDOW_S = {"ctr": 60}  # the others: 10 s
CTR_WARMUP_S = 11 * 60  # 8 scored minutes + the alerter's delay of the newest minute it reads
BUSINESS_DELAY_S = 75.0
ALLOWED_LATENESS_S = 5


class Interrupted(Exception):
    """Ctrl-C, SIGTERM or --max-minutes."""


def build_parser(prog: str = "python -m benchmarks.faults") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clean-minutes", type=float, default=15.0, help="clean phase counting alerts (0: none)")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of: {', '.join(FAULTS)}")
    parser.add_argument("--warmup-minutes", type=float, default=3.0, help="traffic before anything is measured")
    parser.add_argument("--rate", type=float, default=60.0, help="Predict calls per second (default 60)")
    parser.add_argument("--fault-seconds", type=float, default=60.0, help="how long latency/errors/drift last")
    parser.add_argument("--leak-bytes-per-s", type=int, default=512 << 10, help="leak rate (default 512 KiB/s)")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="stop after this (default 60)")
    parser.add_argument("--workdir", type=Path, help="home, logs and data (default: a new temporary dir, removed)")
    parser.add_argument(
        "--models",
        type=Path,
        help="model repository, trained once with --reuse (default: $RECWATCH_CACHE/fault-models)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return parser


@dataclass
class FaultResult:
    fault: str
    metric: str
    window_s: int
    started_us: int = 0
    start_window_us: int = 0
    first_anomaly_window_us: int | None = None
    delay_windows: int | None = None
    alert_after_s: float | None = None
    resolved_after_s: float | None = None  # after the fault was cleared
    model: str = ""
    note: str = ""
    other_alerts: list[str] = field(default_factory=list)


@dataclass
class Report:
    rate: float
    clean_minutes: float
    clean_alerts: int | None
    clean_alert_names: list[str]
    faults: list[FaultResult]
    traffic: dict[str, int]
    settings: dict[str, Any]
    wall_s: float = 0.0


class Harness:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.home = workdir / "home"
        self.fault_file = workdir / "faults.json"
        self.deadline = time.monotonic() + args.max_minutes * 60
        self.pid_files: list[Path] = []
        self.pacer: Pacer | None = None
        self.alerter: Any = None
        self.notifier: Any = None
        self._alerter_stop = threading.Event()
        self._alerter_thread: threading.Thread | None = None
        self._stack_up = False
        self._interrupted = threading.Event()
        self.seen_at: dict[tuple[str, int, int], float] = {}  # (fingerprint, starts_at_us, status) -> first seen

    # -- set-up ------------------------------------------------------------------------------------------------

    def settings(self) -> Any:
        from recwatch.settings import Settings

        base = Settings.from_env()
        return Settings(
            home=self.home,
            cache=base.cache,
            kafka_port=_free_ports(4),
            clickhouse_port=_free_ports(2),
            alertmanager_port=_free_ports(2),
            topic_partitions=3,
        )

    def start(self) -> None:
        from infra import processes, stack
        from store import open_store

        settings = self._settings = self.settings()
        self.fault_file.write_text("{}\n")
        _say(f"infra up (private stack in {self.home})")
        self._stack_up = True
        stack.up(settings, log=lambda text: _say("  " + text))
        bootstrap = stack.bootstrap_servers(settings)
        models = self.args.models or settings.cache / "fault-models"
        _say(f"models in {models} (trained once, then reused)")
        for kind, name in (("ctr", "ranker"), ("sasrec", "seq")):
            subprocess.run(
                [sys.executable, "-m", "training", "train", "--model", kind, "--data", "synthetic",
                 "--base-path", str(models), "--model-name", name, "--version", "1", "--reuse", "--quiet"],
                check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        config = self.workdir / "models.config"
        config.write_text(
            "model_config_list {\n"
            + "".join(
                f'  config {{ name: "{n}" base_path: "{models / n}" model_platform: "tensorflow" }}\n'
                for n in ("ranker", "seq")
            )
            + "}\n"
        )
        env = {k: v for k, v in os.environ.items() if k not in ("RECWATCH_KAFKA", "RECWATCH_STORE")}
        env["RECWATCH_HOME"] = str(self.home)
        cli = [sys.executable, "-m", "recwatch.cli"]
        port = _free_ports(1)
        _say(f"recwatch serve on 127.0.0.1:{port} --fault_file {self.fault_file}; recwatch worker")
        for name, argv in (
            ("serve", [*cli, "serve", "--model_config_file", str(config), "--port", str(port),
                       "--rest_api_port", "0", "--replica", "faults-0", "--fault_file", str(self.fault_file)]),
            ("worker", [*cli, "worker", "--allowed-lateness", str(ALLOWED_LATENESS_S), "--group", "faults-worker"]),
        ):  # fmt: skip
            pid_file = self.workdir / f"{name}.pid"
            processes.spawn(argv, pid_file=pid_file, log_file=self.workdir / f"{name}.log", env=env, cwd=ROOT)
            self.pid_files.append(pid_file)

        from alerting.service import AlertService, RecordingNotifier

        store = open_store(stack.store_url(settings))
        store.connect()
        self._store = store
        self.notifier = RecordingNotifier()
        self.alerter = AlertService(
            store,
            bootstrap,
            notifiers=[self.notifier],
            group_id="faults-alerter",
            business_every_s=10.0,
            business_delay_s=BUSINESS_DELAY_S,
        )
        self.alerter.start()
        self._alerter_thread = threading.Thread(target=self._run_alerter, name="fault-alerter", daemon=True)
        self._alerter_thread.start()
        self.pacer = Pacer(f"127.0.0.1:{port}", bootstrap, self.args.rate)
        self.pacer.start()
        _say(f"traffic: {self.args.rate:g} Predict calls/s (4 of 5 to the ranker), the shop's feedback")

    def _run_alerter(self) -> None:
        try:
            self.alerter.run(self._alerter_stop, poll_timeout_s=0.5)
        except Exception as exc:  # reported, and the harness stops waiting
            _say(f"the alerter stopped: {exc!r}")
            self._interrupted.set()

    def stop(self) -> None:
        from infra import processes, stack

        if self.pacer is not None:
            self.pacer.stop()
        self._alerter_stop.set()
        if self._alerter_thread is not None:
            self._alerter_thread.join(60)
        if hasattr(self, "_store"):
            self._store.close()
        for pid_file in reversed(self.pid_files):
            processes.stop(pid_file)
        if self._stack_up:
            stack.down(self._settings)

    # -- measuring ---------------------------------------------------------------------------------------------

    def interrupt(self) -> None:
        self._interrupted.set()

    def wait(self, seconds: float) -> None:
        """Sleep, watching the alerts, the processes, Ctrl-C and the deadline."""
        end = time.monotonic() + seconds
        while True:
            self._check()
            left = end - time.monotonic()
            if left <= 0:
                return
            if self._interrupted.wait(min(left, 1.0)):
                raise Interrupted("interrupted")

    def _check(self) -> None:
        from infra import processes

        if self._interrupted.is_set():
            raise Interrupted("interrupted")
        if time.monotonic() > self.deadline:
            raise Interrupted(f"--max-minutes {self.args.max_minutes:g} reached")
        for pid_file in self.pid_files:
            if processes.read(pid_file) is None:
                raise Interrupted(f"{pid_file.stem} exited; see {pid_file.with_suffix('.log')}")
        now = time.monotonic()
        for alert in list(self.notifier.alerts):
            self.seen_at.setdefault((alert.fingerprint, alert.starts_at_us, alert.status), now)

    def firing(self, since_us: int) -> list[Any]:
        from schemas import Alert

        return [a for a in list(self.notifier.alerts) if a.status == Alert.FIRING and a.starts_at_us >= since_us]

    def set_faults(self, **fields: float) -> None:
        tmp = self.fault_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(fields) + "\n")
        tmp.replace(self.fault_file)  # atomic: the server never reads half a file

    def run_fault(self, fault: str) -> FaultResult:
        assert self.pacer is not None
        metric, window_s = METRIC[fault], WINDOW_S.get(fault, 10)
        result = FaultResult(fault, metric, window_s)
        if fault == "ctr":
            ran = time.monotonic() - self.pacer.started_at
            if ran < CTR_WARMUP_S:
                _say(f"ctr: waiting {CTR_WARMUP_S - ran:.0f} s more for the CTR detector's 8-minute warm-up")
                self.wait(CTR_WARMUP_S - ran)
        hold_s, give_up_s = {
            "leak": (None, 300.0),
            "ctr": (None, 420.0),
        }.get(fault, (self.args.fault_seconds, self.args.fault_seconds + 120.0))
        started = time.monotonic()
        result.started_us = time.time_ns() // 1000
        result.start_window_us = result.started_us // (window_s * 1_000_000) * window_s * 1_000_000
        _say(f"{fault}: on (metric {metric}, start window {_hms(result.start_window_us)})")
        self._apply(fault, on=True)
        alert = None
        cleared = False
        try:
            while time.monotonic() - started < give_up_s:
                self.wait(1.0)
                hits = [a for a in self.firing(result.start_window_us) if a.labels["metric"] == metric]
                if hits and alert is None:
                    alert = min(hits, key=lambda a: a.starts_at_us)
                    seen = self.seen_at.get((alert.fingerprint, alert.starts_at_us, alert.status), time.monotonic())
                    result.alert_after_s = round(seen - started, 1)
                    result.first_anomaly_window_us = alert.starts_at_us
                    result.delay_windows = (alert.starts_at_us - result.start_window_us) // (window_s * 1_000_000)
                    result.model = alert.labels["model"]
                    _say(f"{fault}: {alert.labels['alertname']} on {result.model} after {result.alert_after_s} s")
                if not cleared and (
                    (hold_s is not None and time.monotonic() - started >= hold_s) or (hold_s is None and alert)
                ):
                    self._apply(fault, on=False)
                    cleared, cleared_at = True, time.monotonic()
                    _say(f"{fault}: cleared")
                if cleared and alert is not None:
                    break
            if alert is None:
                result.note = f"no {metric} alert within {give_up_s:.0f} s"
        finally:
            if not cleared:
                self._apply(fault, on=False)
                cleared_at = time.monotonic()
        result.other_alerts = sorted(
            {f"{a.labels['alertname']}/{a.labels['model']}" for a in self.firing(result.start_window_us)}
            - ({f"{alert.labels['alertname']}/{alert.labels['model']}"} if alert is not None else set())
        )
        self._wait_resolved(result, alert, cleared_at)
        return result

    def _wait_resolved(self, result: FaultResult, alert: Any, cleared_at: float) -> None:
        """Wait until every alert fired since the fault started resolved (before the next fault)."""
        from schemas import Alert

        limit = 600.0 if result.fault == "ctr" else 240.0
        while time.monotonic() - cleared_at < limit:
            resolved = {
                (a.fingerprint, a.starts_at_us) for a in list(self.notifier.alerts) if a.status == Alert.RESOLVED
            }
            open_ = [a for a in self.firing(result.start_window_us) if (a.fingerprint, a.starts_at_us) not in resolved]
            if (
                alert is not None
                and (alert.fingerprint, alert.starts_at_us) in resolved
                and result.resolved_after_s is None
            ):
                result.resolved_after_s = round(time.monotonic() - cleared_at, 1)
            if not open_:
                return
            self.wait(2.0)
        result.note = (result.note + "; " if result.note else "") + f"alerts still firing {limit:.0f} s after clearing"

    def _apply(self, fault: str, *, on: bool) -> None:
        assert self.pacer is not None
        if fault == "latency":
            self.set_faults(**({"latency_factor": 5.0} if on else {}))
        elif fault == "errors":
            self.set_faults(**({"error_rate": 0.2} if on else {}))
        elif fault == "leak":
            self.set_faults(
                **({"leak_bytes_per_s": self.args.leak_bytes_per_s, "leak_max_bytes": 1 << 30} if on else {})
            )
        elif fault == "drift":
            self.pacer.traffic.drift = 1.0 if on else 0.0
        elif fault == "ctr":
            self.pacer.shop.click_scale = 0.5 if on else 1.0

    def run(self) -> Report:
        args = self.args
        faults = [f.strip() for f in args.faults.split(",") if f.strip()]
        report = Report(args.rate, args.clean_minutes, None, [], [], {}, _settings_note())
        started = time.monotonic()
        try:
            self.start()
            _say(f"warm-up: {args.warmup_minutes:g} min")
            self.wait(args.warmup_minutes * 60)
            if args.clean_minutes > 0:
                since_us = time.time_ns() // 1000
                _say(f"clean: {args.clean_minutes:g} min, counting alerts")
                self.wait(args.clean_minutes * 60)
                clean = self.firing(since_us)
                report.clean_alerts = len(clean)
                report.clean_alert_names = [f"{a.labels['alertname']}/{a.labels['model']}" for a in clean]
                _say(f"clean: {len(clean)} alerts")
            for fault in faults:
                report.faults.append(self.run_fault(fault))
        except Interrupted as exc:
            _say(f"stopped early: {exc}")
            done = {r.fault for r in report.faults}
            report.faults += [
                FaultResult(f, METRIC[f], WINDOW_S.get(f, 10), note=f"skipped: {exc}") for f in faults if f not in done
            ]
        finally:
            if self.pacer is not None:
                report.traffic = dict(self.pacer.counts)
            _say("stopping")
            self.stop()
            report.wall_s = round(time.monotonic() - started, 1)
        return report


def _settings_note() -> dict[str, Any]:
    return {
        "worker_allowed_lateness_s": ALLOWED_LATENESS_S,
        "alerter_business_every_s": 10,
        "alerter_business_delay_s": BUSINESS_DELAY_S,
        "replicas": 1,
    }


def _free_ports(count: int, low: int = 20000, high: int = 32000) -> int:
    rng = random.Random()
    for _ in range(500):
        p = rng.randrange(low, high - count, 2)
        if all(port_free(p + i) for i in range(count)):
            return p
    raise RuntimeError(f"no {count} free adjacent ports in [{low}, {high})")


def _hms(ts_us: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts_us / 1e6))


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def format_table(report: Report) -> str:
    header = ("fault", "metric", "start", "first anomaly", "delay (windows)", "alert after s", "resolved after s")
    rows = [header]
    for r in report.faults:
        rows.append(
            (
                r.fault,
                f"{r.metric} ({r.window_s} s)",
                _hms(r.start_window_us) if r.start_window_us else "-",
                _hms(r.first_anomaly_window_us) if r.first_anomaly_window_us else "-",
                "-" if r.delay_windows is None else str(r.delay_windows),
                "-" if r.alert_after_s is None else f"{r.alert_after_s:.1f}",
                "-" if r.resolved_after_s is None else f"{r.resolved_after_s:.1f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in report.faults:
        extra = [r.note] if r.note else []
        if r.other_alerts:
            extra.append("also fired: " + ", ".join(r.other_alerts))
        if extra:
            lines.append(f"{r.fault}: " + "; ".join(extra))
    if report.clean_alerts is None:
        lines.append("clean run: not run (--clean-minutes 0)")
    else:
        names = f" ({', '.join(report.clean_alert_names)})" if report.clean_alert_names else ""
        lines.append(f"clean run: {report.clean_alerts} alerts in {report.clean_minutes:g} min{names}")
    t = report.traffic
    lines.append(
        f"traffic: {report.rate:g}/s, {t.get('sent', 0)} sent, {t.get('failed', 0)} failed, "
        f"{t.get('skipped', 0)} skipped; wall {report.wall_s:.0f} s; " + json.dumps(report.settings)
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [f for f in args.faults.split(",") if f.strip() and f.strip() not in FAULTS]
    if unknown:
        print(f"unknown faults {unknown}; choose from {', '.join(FAULTS)}", file=sys.stderr)
        return 2
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="recwatch-faults-")
    workdir = args.workdir or Path(tmp.name)  # type: ignore[union-attr]
    workdir.mkdir(parents=True, exist_ok=True)
    harness = Harness(args, workdir)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        harness.interrupt()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = harness.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.cleanup()
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(format_table(report))
    missed = [r for r in report.faults if r.delay_windows is None or r.delay_windows > 3]
    return 1 if missed or report.clean_alerts else 0
