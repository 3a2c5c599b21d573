"""The ``recwatch`` command. The environment is read here and nowhere else (see ``recwatch --help``)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recwatch.settings import ENV_VARS, ConfigError, Settings


def _env_help() -> str:
    width = max(len(k) for k in ENV_VARS)
    lines = [f"  {name:<{width}}  {text}" for name, text in ENV_VARS.items()]
    return "environment variables:\n" + "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recwatch",
        description="Serve and watch e-commerce ranking and recommendation models.",
        epilog=_env_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    infra = sub.add_parser("infra", help="start, stop or show the local Kafka and store")
    infra_sub = infra.add_subparsers(dest="action", required=True)
    up = infra_sub.add_parser("up", help="start Kafka and the store (idempotent), create topics and tables")
    up.add_argument("--brokers", type=int, choices=(1, 3), default=1, help="Kafka brokers on loopback")
    up.add_argument(
        "--clickhouse",
        choices=("embedded", "server"),
        default="embedded",
        help="embedded: chDB (default); server: Debian's clickhouse-server, installed if absent",
    )
    infra_sub.add_parser("down", help="stop what `infra up` started (pid files); data is kept")
    infra_sub.add_parser("status", help="print what runs where")

    serve = sub.add_parser(
        "serve",
        help="serve a SavedModel over TF Serving's gRPC API (tensorflow_model_server's flag names)",
    )
    serve.add_argument("--port", type=int, default=8500, help="gRPC port")
    serve.add_argument("--rest_api_port", type=int, default=8501, help="REST API and /metrics port; 0: off")
    serve.add_argument("--model_name", default="", help="the model's name (with --model_base_path)")
    serve.add_argument("--model_base_path", type=Path, help="directory holding the model's <version>/ dirs")
    serve.add_argument(
        "--model_config_file", type=Path, help="TF Serving ModelServerConfig text file (several models, labels)"
    )
    serve.add_argument(
        "--file_system_poll_wait_seconds",
        type=float,
        default=1.0,
        help="how often to look for new versions and config changes (0: never)",
    )
    serve.add_argument(
        "--canary_weights_file",
        type=Path,
        help="JSON {model: weight}: share of unversioned requests routed to the canary label (re-read on change)",
    )
    serve.add_argument("--replica", default="", help="replica id in events (default: RECWATCH_REPLICA or host-port)")
    serve.add_argument("--no-events", action="store_true", help="do not publish inference events")
    serve.add_argument("--enable_batching", action="store_true", help="batch requests across callers (TF Serving)")
    serve.add_argument("--batching_parameters_file", type=Path, help="TF Serving BatchingParameters text file")
    serve.add_argument("--result_cache_models", default="", help="comma-separated models whose results are cached")
    serve.add_argument("--result_cache_bytes", type=int, default=64 << 20, help="result cache size bound (bytes)")
    serve.add_argument("--result_cache_ttl_seconds", type=float, default=60.0, help="result cache entry lifetime")
    serve.add_argument(
        "--prefer_tflite_model",
        action="store_true",
        help="serve <version>/model.tflite with the TFLite interpreter where a version has one (TF Serving's flag)",
    )
    serve.add_argument(
        "--fault_file",
        type=Path,
        help="JSON faults to inject (latency, errors, memory leak), re-read on change: tests and demos only",
    )
    serve.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="run N server processes on ports port, port+10, …; clients use gRPC round_robin over them",
    )

    worker = sub.add_parser("worker", help="run the stream worker: events -> raw rows and 10 s aggregates")
    worker.add_argument("--window-seconds", type=int, default=10)
    worker.add_argument(
        "--allowed-lateness",
        type=int,
        default=30,
        metavar="SECONDS",
        help="events older than a partition's latest event time minus this count as late (default 30)",
    )
    worker.add_argument("--group", default="recwatch-worker", help="Kafka consumer group (Faust app id)")
    worker.add_argument(
        "--metrics-port",
        type=int,
        help="loopback port of the worker's Prometheus /metrics (default: $RECWATCH_WORKER_METRICS_PORT or 19110; "
        "taken or 0: any free port, logged)",
    )

    alerter = sub.add_parser(
        "alerter", help="detect anomalies on every monitored series and turn them into alerts (docs/detection.md)"
    )
    alerter.add_argument("--group", default="recwatch-alerter", help="Kafka consumer group; names its checkpoint")
    alerter.add_argument("--threshold", type=float, default=0.9, help="anomaly score that fires an alert (0-1)")
    alerter.add_argument(
        "--once-seconds", type=float, metavar="N", help="stop after N seconds (default: run until killed)"
    )
    alerter.add_argument(
        "--retrain-after-s",
        type=float,
        default=300.0,
        metavar="S",
        help="a score-drift, CTR or conversion alert on a stable version still firing S seconds after it started "
        "publishes one RETRAIN_REQUESTED on recwatch.model-updates.v1 (default 300)",
    )
    alerter.add_argument(
        "--retrain-min-interval-s",
        type=float,
        default=6 * 3600.0,
        metavar="S",
        help="at most one retrain command per model every S seconds (default 21600)",
    )
    alerter.add_argument("--no-retrain", action="store_true", help="do not publish retrain commands")
    alerter.add_argument(
        "--worker-group",
        action="append",
        metavar="G",
        help="stream worker group to watch for RecwatchWorkerStalled (repeatable; default recwatch-worker)",
    )
    alerter.add_argument(
        "--worker-stall-s",
        type=float,
        default=120.0,
        metavar="S",
        help="RecwatchWorkerStalled fires after S s without a committed offset moving while the lag grows",
    )

    update = sub.add_parser(
        "update", help="publish a closed-loop command on recwatch.model-updates.v1 (retrain, deploy, promote, rollback)"
    )
    update.add_argument("action", choices=("retrain", "deploy", "promote", "rollback"))
    update.add_argument("model")
    update.add_argument("--version", type=int, default=0, help="the version to deploy (or to promote/roll back)")
    update.add_argument("--reason", default="", help="why (kept in the event's lineage)")
    update.add_argument("--actor", default="", help="who (default: person)")

    controller = sub.add_parser(
        "controller", help="the rollout controller: canary steps, promotion and rollback from live windows (rollout/)"
    )
    controller.add_argument("--model_config_file", type=Path, required=True, help="the file recwatch serve watches")
    controller.add_argument(
        "--canary_weights_file", type=Path, required=True, help="the canary weights file recwatch serve watches"
    )
    controller.add_argument("--steps", default="0.05,0.25,0.5", help="canary weights, rising (default 0.05,0.25,0.5)")
    controller.add_argument("--healthy-windows", type=int, default=3, help="healthy windows per step (default 3)")
    controller.add_argument("--window-seconds", type=int, default=60, help="comparison window (default 60)")
    controller.add_argument(
        "--min-requests", type=int, default=500, help="requests per arm and window before errors/latency are tested"
    )
    controller.add_argument(
        "--min-impressions", type=int, default=2000, help="impressions per arm and window before CTR is tested"
    )
    controller.add_argument(
        "--once-seconds", type=float, metavar="N", help="stop after N seconds (default: run until killed)"
    )

    trainer = sub.add_parser(
        "trainer", help="the trainer: retrain commands become new model versions, never worse than stable (rollout/)"
    )
    trainer.add_argument("--model_config_file", type=Path, required=True, help="the file recwatch serve watches")
    trainer.add_argument(
        "--window-minutes", type=float, default=1440, help="train on the feedback of this many minutes (default 1440)"
    )
    trainer.add_argument(
        "--holdout-fraction", type=float, default=0.2, help="the latest share of it is the holdout (default 0.2)"
    )
    trainer.add_argument(
        "--min-events", type=int, default=1000, help="fewer usable feedback events: no training (default 1000)"
    )
    trainer.add_argument(
        "--margin", type=float, default=0.005, help="how much worse than stable (AUC, HR@10) still publishes"
    )
    trainer.add_argument("--epochs", type=int, default=None, help="training epochs (default: the model's own)")
    trainer.add_argument(
        "--once-seconds", type=float, metavar="N", help="stop after N seconds (default: run until killed)"
    )

    sql = sub.add_parser("sql", help="run SQL against the store (works while workers run)")
    sql.add_argument("query")
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table")

    detect = sub.add_parser(
        "detect", help="score a NAB-style CSV (timestamp,value) row by row with an online anomaly detector"
    )
    detect.add_argument("--input", type=Path, required=True)
    detect.add_argument("--output", type=Path, required=True, help="timestamp,value,anomaly_score (scores in [0, 1])")
    detect.add_argument("--detector", default="seasonal_shift", help="a name from detection.DETECTORS")

    bench = sub.add_parser("bench", help="benchmarks: serving, pipeline, nab")
    bench_sub = bench.add_subparsers(dest="suite", required=True)
    bench_serving = bench_sub.add_parser(
        "serving", add_help=False, help="recwatch vs KServe, MLServer and the raw signature call (--help for options)"
    )
    bench_serving.add_argument("args", nargs=argparse.REMAINDER)  # main() hands these to the benchmark
    bench_pipeline = bench_sub.add_parser(
        "pipeline", add_help=False, help="worker events/s and lag vs raw confluent-kafka and Quix Streams"
    )
    bench_pipeline.add_argument("args", nargs=argparse.REMAINDER)
    bench_nab = bench_sub.add_parser("nab", add_help=False, help="NAB scores (three profiles) of the detectors")
    bench_nab.add_argument("args", nargs=argparse.REMAINDER)

    demo = sub.add_parser("demo", help="the main job: infra up, serve, worker, traffic, aggregates, infra down")
    demo.add_argument("--requests", type=int, default=200)
    demo.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    demo.add_argument(
        "--scenario",
        choices=("all", "drift", "bad-canary"),
        default="all",
        help="all (default): the whole job, both closed-loop stories included; drift or bad-canary: that story alone",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["bench", "serving"]:  # its own options (and --help) belong to the benchmark
        from benchmarks.serving.run import main as bench_serving

        return bench_serving(argv[2:])
    if argv[:2] == ["bench", "pipeline"]:
        from benchmarks.pipeline.run import main as bench_pipeline

        return bench_pipeline(argv[2:])
    if argv[:2] == ["bench", "nab"]:
        from benchmarks.nab.run import main as bench_nab

        return bench_nab(argv[2:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("tensorflow", "absl"):  # SavedModel export and load narrate every step at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
        return int(_COMMANDS[args.command](settings, args) or 0)
    except ConfigError as exc:
        print(f"recwatch: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from infra.errors import InfraError
        from producers import ProducerError
        from store.base import StoreError

        if isinstance(exc, InfraError | StoreError | ProducerError):
            print(f"recwatch: {exc}", file=sys.stderr)
            return 1
        raise


def _infra(settings: Settings, args: argparse.Namespace) -> int:
    from infra import stack

    if args.action == "up":
        stack.up(settings, brokers=args.brokers, store_kind=args.clickhouse)
    elif args.action == "down":
        stack.down(settings)
    else:
        print(json.dumps(stack.status(settings), indent=2))
    return 0


def _batching_parameters(args: argparse.Namespace) -> Any:
    """TF Serving's rules: a parameters file needs --enable_batching; batching alone takes the defaults."""
    from serving.batching import BatchingParameters, parse_batching_parameters
    from serving.config import ConfigFileError

    if args.batching_parameters_file is not None and not args.enable_batching:
        raise ConfigError("--batching_parameters_file needs --enable_batching (as in tensorflow_model_server)")
    if not args.enable_batching:
        return None
    if args.batching_parameters_file is None:
        return BatchingParameters(thread_pool_name="model_server_batch_threads")
    try:
        return parse_batching_parameters(args.batching_parameters_file.read_text())
    except (OSError, ConfigFileError) as exc:
        raise ConfigError(f"--batching_parameters_file {args.batching_parameters_file}: {exc}") from None


def _serve_replicas(settings: Settings, args: argparse.Namespace) -> int:
    import socket

    from serving.replicas import Supervisor, replica_specs, round_robin_target

    base = [sys.executable, "-m", "recwatch.cli", "serve"]
    for flag in ("model_name", "model_base_path", "model_config_file", "canary_weights_file", "fault_file"):
        value = getattr(args, flag)
        if value:
            base += [f"--{flag}", str(value)]
    base += ["--file_system_poll_wait_seconds", str(args.file_system_poll_wait_seconds)]
    if args.enable_batching:
        base.append("--enable_batching")
    if args.batching_parameters_file:
        base += ["--batching_parameters_file", str(args.batching_parameters_file)]
    if args.result_cache_models:
        base += ["--result_cache_models", args.result_cache_models]
    base += ["--result_cache_bytes", str(args.result_cache_bytes)]
    base += ["--result_cache_ttl_seconds", str(args.result_cache_ttl_seconds)]
    if args.no_events:
        base.append("--no-events")
    if args.prefer_tflite_model:
        base.append("--prefer_tflite_model")
    replica = args.replica or settings.replica or socket.gethostname()
    specs = replica_specs(
        base, replicas=args.replicas, port=args.port, rest_port=args.rest_api_port or None, replica=replica
    )
    logging.getLogger("recwatch.serve").info(
        "%d replicas; clients: grpc.insecure_channel(%r, options=[('grpc.lb_policy_name', 'round_robin')])",
        args.replicas,
        round_robin_target("127.0.0.1", args.port, args.replicas),
    )
    return Supervisor(specs).run()


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import socket

    if args.replicas > 1:
        return _serve_replicas(settings, args)

    from infra import stack
    from producers import EventLogger, EventLoggerConfig
    from serving.publisher import NullPublisher
    from serving.server import ModelServer, ServeOptions

    # validate before anything starts: a bad flag must not leave a started producer behind
    if args.model_config_file is None and not (args.model_name and args.model_base_path):
        raise ConfigError("serve needs --model_config_file, or --model_name with --model_base_path")
    batching = _batching_parameters(args)
    replica = args.replica or settings.replica or f"{socket.gethostname()}-{args.port}"
    publisher: Any
    if args.no_events:
        publisher = NullPublisher()
    else:
        bootstrap = stack.bootstrap_servers(settings)
        stack.ensure_recwatch_topics(settings, bootstrap)
        # one spool per replica (it is locked); kept across restarts so the next run replays what is left
        publisher = EventLogger(EventLoggerConfig(bootstrap=bootstrap, spool_dir=settings.home / "spool" / replica))
        publisher.start()
    options = ServeOptions(
        model_name=args.model_name,
        model_base_path=args.model_base_path,
        model_config_file=args.model_config_file,
        canary_weights_file=args.canary_weights_file,
        poll_wait_s=args.file_system_poll_wait_seconds,
        port=args.port,
        replica=replica,
        batching=batching,
        result_cache_models=frozenset(filter(None, args.result_cache_models.split(","))),
        result_cache_bytes=args.result_cache_bytes,
        result_cache_ttl_s=args.result_cache_ttl_seconds,
        rest_api_port=args.rest_api_port or None,
        prefer_tflite_model=args.prefer_tflite_model,
        fault_file=args.fault_file,
    )
    logger = publisher if isinstance(publisher, EventLogger) else None
    server = ModelServer(
        options,
        publisher,
        producer_stats=(lambda: logger.stats) if logger is not None else None,
        producer_totals=logger.totals if logger is not None else None,
    )
    server.start()
    logging.getLogger("recwatch.serve").info(
        "serving %s from %s on 127.0.0.1:%d as replica %s",
        args.model_name,
        args.model_base_path,
        server.port,
        replica,
    )
    try:
        server.serve_forever()
    finally:
        if isinstance(publisher, EventLogger):
            undelivered = publisher.close()
            logging.getLogger("recwatch.serve").info(
                "publisher closed: %s (undelivered %d)", publisher.stats.as_dict(), undelivered
            )
    return 0


def _kafka_and_store(settings: Settings, wait: bool = False) -> tuple[str, Any]:
    """Kafka's bootstrap servers (recwatch's topics created where missing) and the store, connected and migrated:
    what every long-running consumer starts with. ``wait``: a store that is down is waited for (capped backoff,
    logged once) instead of failing the start."""
    import time

    from infra import stack
    from store import StoreUnavailableError, migrate, open_store

    bootstrap = stack.bootstrap_servers(settings)
    stack.ensure_recwatch_topics(settings, bootstrap)
    delay = 0.2
    while True:
        store = open_store(stack.store_url(settings), long_running=True)
        try:
            store.connect()
            migrate(store)
            return bootstrap, store
        except StoreUnavailableError as exc:
            store.close()
            if not wait:
                raise
            if delay == 0.2:
                print(f"recwatch: the store is not reachable ({exc}); waiting for it", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _stop_event(once_seconds: float | None) -> Any:
    """An Event set on SIGTERM, and after ``once_seconds`` when given (``--once-seconds``)."""
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if once_seconds is not None:
        timer = threading.Timer(once_seconds, stop.set)
        timer.daemon = True
        timer.start()
    return stop


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from stream_processors.faust_adapter import run_worker
    from stream_processors.worker import WorkerSettings

    bootstrap, store = _kafka_and_store(settings, wait=True)
    worker_settings = WorkerSettings(
        bootstrap=bootstrap,
        data_dir=settings.home / "worker" / args.group,
        app_id=args.group,
        window_s=args.window_seconds,
        allowed_lateness_s=args.allowed_lateness,
        metrics_port=args.metrics_port if args.metrics_port is not None else settings.worker_metrics_port,
    )
    try:
        run_worker(worker_settings, store)
    finally:
        store.close()
    return 0


def _alerter(settings: Settings, args: argparse.Namespace) -> int:
    from alerting.service import AlertService, LoggingNotifier

    bootstrap, store = _kafka_and_store(settings)
    stop = _stop_event(args.once_seconds)
    receivers = _alert_receivers(settings, store)
    watchers: list[Any] = []
    if not args.no_retrain:
        from rollout.retrain_trigger import RetrainTrigger
        from rollout.service import KafkaTopic

        watchers.append(
            RetrainTrigger(
                KafkaTopic(bootstrap, reader="alerter"),
                min_firing_s=args.retrain_after_s,
                min_interval_s=args.retrain_min_interval_s,
            )
        )
    service = AlertService(
        store,
        bootstrap,
        notifiers=[LoggingNotifier(), *receivers],
        group_id=args.group,
        threshold=args.threshold,
        watchers=watchers,
        worker_groups=args.worker_group or ["recwatch-worker"],
        worker_stall_s=args.worker_stall_s,
    )
    for receiver in receivers:
        receiver.start()
    try:
        service.run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        for receiver in receivers:
            receiver.stop()
        store.close()
    logging.getLogger("recwatch.alerter").info("stopped: %s", service.stats)
    return 0


def _alert_receivers(settings: Settings, store: Any) -> list[Any]:
    """The Alertmanager that ``infra up`` started (if any) and the webhook of RECWATCH_ALERT_WEBHOOK_URL."""
    from alerting.alertmanager import AlertmanagerClient
    from alerting.notifiers import AlertmanagerNotifier, WebhookNotifier
    from alerting.outbox import DeliveryOutbox, WebhookReceiver, WebhookSender
    from infra import stack

    receivers: list[Any] = []
    url = stack.alertmanager_url(settings)
    if url:
        receivers.append(AlertmanagerNotifier(AlertmanagerClient(url)))
    if settings.alert_webhook_url:
        if not settings.alert_webhook_secret:
            raise ConfigError("RECWATCH_ALERT_WEBHOOK_URL needs RECWATCH_ALERT_WEBHOOK_SECRET (the signing key)")
        hook = WebhookReceiver("webhook", settings.alert_webhook_url, settings.alert_webhook_secret.encode())
        receivers.append(WebhookNotifier(WebhookSender(DeliveryOutbox(store), [hook])))
    return receivers


def _update(settings: Settings, args: argparse.Namespace) -> int:
    from confluent_kafka import Producer

    from infra import stack
    from rollout.commands import command
    from schemas import ModelUpdate, topics

    try:
        message = command(args.action, args.model, version=args.version, reason=args.reason, actor=args.actor)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    bootstrap = stack.bootstrap_servers(settings)
    stack.ensure_recwatch_topics(settings, bootstrap)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    producer.produce(topics.MODEL_UPDATES, key=message.model.encode(), value=message.SerializeToString())
    if producer.flush(30):
        raise ConfigError(f"the command was not delivered to Kafka at {bootstrap} within 30 s")
    print(f"{ModelUpdate.Kind.Name(message.kind)} {message.model} v{message.version}: update_id {message.update_id}")
    return 0


def _controller(settings: Settings, args: argparse.Namespace) -> int:
    from rollout.compare import ComparePolicy
    from rollout.controller import RolloutPolicy
    from rollout.service import ControllerService, stable_versions
    from rollout.serving_files import FileServing

    if args.min_requests < 1 or args.min_impressions < 1:
        raise ConfigError("--min-requests and --min-impressions must be >= 1")
    try:
        policy = RolloutPolicy(
            steps=tuple(float(w) for w in args.steps.split(",")),
            healthy_windows_per_step=args.healthy_windows,
            compare=ComparePolicy(min_requests=args.min_requests, min_impressions=args.min_impressions),
        )
    except ValueError as exc:
        raise ConfigError(f"--steps / --healthy-windows: {exc}") from None
    stable = stable_versions(args.model_config_file)
    bootstrap, store = _kafka_and_store(settings)
    service = ControllerService(
        store,
        bootstrap,
        FileServing(args.model_config_file, args.canary_weights_file),
        stable,
        policy=policy,
        window_s=args.window_seconds,
    )
    stop = _stop_event(args.once_seconds)
    service.start()
    logging.getLogger("recwatch.controller").info(
        "controlling %s", ", ".join(f"{m} (stable v{v})" for m, v in stable.items())
    )
    return _run_until_stopped(service, store, stop)


def _run_until_stopped(service: Any, store: Any, stop: Any) -> int:
    """Run a closed-loop service (controller, trainer) until ``stop`` or Ctrl-C; then close it and the store."""
    try:
        service.run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        service.close()
        store.close()
    return 0


def _trainer(settings: Settings, args: argparse.Namespace) -> int:
    from rollout.trainer import TrainerPolicy
    from rollout.trainer_service import TrainerService

    try:
        policy = TrainerPolicy(
            window_s=args.window_minutes * 60.0,
            holdout_fraction=args.holdout_fraction,
            min_events=args.min_events,
            margin=args.margin,
            epochs=args.epochs,
        )
    except ValueError as exc:
        raise ConfigError(f"trainer options: {exc}") from None
    if not args.model_config_file.is_file():
        raise ConfigError(f"--model_config_file {args.model_config_file} does not exist")
    bootstrap, store = _kafka_and_store(settings)
    service = TrainerService(store, bootstrap, args.model_config_file, policy=policy)
    stop = _stop_event(args.once_seconds)
    service.start()
    logging.getLogger("recwatch.trainer").info("answering retrain commands of the models in %s", args.model_config_file)
    return _run_until_stopped(service, store, stop)


def _sql(settings: Settings, args: argparse.Namespace) -> int:
    from infra import stack
    from store import open_store

    store = open_store(stack.store_url(settings))
    store.connect()
    try:
        result = store.query(args.query)
    finally:
        store.close()
    print(format_result(result.columns, result.rows, args.format), end="")
    return 0


def format_result(columns: list[str], rows: list[tuple[Any, ...]], fmt: str) -> str:
    if fmt == "json":
        return "".join(json.dumps(dict(zip(columns, row, strict=True)), default=str) + "\n" for row in rows)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        return out.getvalue()
    cells = [[str(c) for c in columns], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = [
        "  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines) + f"\n({len(rows)} row{'s' if len(rows) != 1 else ''})\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from recwatch.demo import run_demo

    return run_demo(settings, requests=args.requests, keep=args.keep, scenario=args.scenario)


def _detect(settings: Settings, args: argparse.Namespace) -> int:
    from detection import DETECTORS, detect_file

    if args.detector not in DETECTORS:
        raise SystemExit(f"recwatch detect: unknown detector {args.detector!r} (known: {', '.join(sorted(DETECTORS))})")
    detect_file(args.input, args.output, args.detector)
    return 0


_COMMANDS = {
    "infra": _infra,
    "serve": _serve,
    "worker": _worker,
    "alerter": _alerter,
    "update": _update,
    "controller": _controller,
    "trainer": _trainer,
    "sql": _sql,
    "demo": _demo,
    "detect": _detect,
}

if __name__ == "__main__":
    sys.exit(main())
