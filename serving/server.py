"""Assemble and run the model server: models, gRPC services, the polling thread, graceful stop.

Construction only stores configuration; :meth:`ModelServer.start` loads and warms up the models and binds
(TensorFlow is imported there, not when this module is imported)::

    server = ModelServer(ServeOptions("ranker", Path("models/ranker"), port=0), InMemoryPublisher())
    server.start()
    print(server.port)   # the bound port (port=0 picks a free one)
    server.stop(grace_s=5.0)

Every ``poll_wait_s`` seconds a background thread looks for new versions (TF Serving's
``--file_system_poll_wait_seconds``) and re-reads the model config file and the canary weights file when they
changed (``--model_config_file_poll_wait_seconds``).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import grpc

from serving.after_response import wait_idle
from serving.config import ModelConfig, parse_canary_weights, parse_model_server_config, single_model
from serving.errors import ServerStartError
from serving.manager import ModelManager, synthesized_warmup
from serving.model_repository import LoadedModel, load_version
from serving.publisher import EventPublisher

if TYPE_CHECKING:
    from collections.abc import Callable

    from serving.batching import BatchingExecutor, BatchingParameters
    from serving.cache import LruResultCache
    from serving.faults import FaultInjector
    from serving.model_repository import LoadedModel
    from serving.predict import Clock, Executor
    from serving.rest import RestServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    """What to serve and where. Either ``model_name`` + ``model_base_path`` (the model's directory holding
    numeric versions) or ``model_config_file`` (TF Serving's ModelServerConfig text format).
    ``replica`` names this process in events (default ``<hostname>-<port>``)."""

    model_name: str = ""
    model_base_path: Path | None = None
    port: int = 8500
    host: str = "127.0.0.1"
    replica: str = ""
    max_workers: int = 16
    model_config_file: Path | None = None
    canary_weights_file: Path | None = None
    poll_wait_s: float = 1.0
    warmup: bool = True
    batching: BatchingParameters | None = None  # None: every request computed on its own thread
    result_cache_models: frozenset[str] = frozenset()  # models whose results are cached (none by default)
    result_cache_bytes: int = 64 << 20
    result_cache_ttl_s: float | None = 60.0
    rest_api_port: int | None = None  # REST API and /metrics; None: off, 0: any free port
    prefer_tflite_model: bool = False  # serve <version>/model.tflite where there is one (TF Serving's flag)
    fault_file: Path | None = None  # faults to inject (serving/faults.py); tests and demos only

    def model_configs(self) -> list[ModelConfig]:
        if self.model_config_file is not None:
            return parse_model_server_config(
                self.model_config_file.read_text(), relative_to=self.model_config_file.parent
            )
        if not self.model_name or self.model_base_path is None:
            raise ValueError("serve needs --model_config_file, or --model_name with --model_base_path")
        return single_model(self.model_name, self.model_base_path)


class ModelServer:
    """A TF Serving-compatible gRPC server that publishes an event per Predict call.

    The publisher is the caller's: the server neither starts nor closes it.
    """

    def __init__(
        self,
        options: ServeOptions,
        publisher: EventPublisher,
        *,
        clock: Clock | None = None,
        executor: Executor | None = None,
        producer_stats: Callable[[], object] | None = None,
        producer_totals: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self._options = options
        self._publisher = publisher
        self._clock = clock
        self._executor_override = executor
        self._producer_stats = producer_stats
        self._producer_totals = producer_totals
        self._rest: RestServer | None = None
        self._server: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._port = 0
        self._manager: ModelManager | None = None
        self._stop_polling = threading.Event()
        self._poller: threading.Thread | None = None
        self._mtimes: dict[Path, float] = {}
        self._batcher: BatchingExecutor | None = None
        self._faults: FaultInjector | None = None  # --fault_file (tests and demos only)
        self._cache: LruResultCache | None = None

    @property
    def address(self) -> str:
        host = self._options.host
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self._port or self._options.port}"

    @property
    def port(self) -> int:
        """The bound port; 0 before :meth:`start`."""
        return self._port

    @property
    def rest_port(self) -> int:
        """The bound REST port; 0 when REST is off or before :meth:`start`."""
        return self._rest.port if self._rest is not None else 0

    @property
    def manager(self) -> ModelManager:
        if self._manager is None:
            raise RuntimeError("the server is not started")
        return self._manager

    @property
    def model(self) -> LoadedModel | None:
        """The latest loaded version of the first configured model; None before :meth:`start`."""
        if self._manager is None:
            return None
        for state in self._manager.models().values():
            if state.versions:
                return state.versions[max(state.versions)]
        return None

    def start(self) -> None:
        """Load (and warm up) the configured models, bind and start serving.

        Raises ServerStartError if the address cannot be bound (SO_REUSEPORT is off, so a port in use is an
        error, not a shared port). A model with no loadable version yet answers NOT_FOUND until one appears.
        """
        if self._server is not None:
            raise ServerStartError(self.address, "already started")
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        from serving.after_response import DeferringThreadPoolExecutor
        from serving.batching import BatchingExecutor
        from serving.cache import LruResultCache
        from serving.grpc_server import ModelServiceServicer, PredictionServicer
        from serving.metrics import ServingMetrics
        from serving.predict import InFlight, Predictor
        from serving.rest import RestServer

        opts = self._options
        in_flight = InFlight()
        batcher = BatchingExecutor(opts.batching, in_flight=in_flight) if opts.batching is not None else None
        cache = (
            LruResultCache(opts.result_cache_bytes, opts.result_cache_ttl_s, models=opts.result_cache_models)
            if opts.result_cache_models
            else None
        )
        forget_hooks = [hook for hook in (cache and cache.forget, batcher and batcher.forget) if hook]

        def on_unload(model: str, version: int) -> None:
            for hook in forget_hooks:
                try:
                    hook(model, version)
                except Exception:
                    log.exception("forgetting %s version %d failed", model, version)

        manager = ModelManager(
            opts.model_configs(),
            loader=_tflite_loader if opts.prefer_tflite_model else _saved_model_loader,
            warmup=synthesized_warmup if opts.warmup else None,
            on_unload=on_unload,
        )
        manager.poll_once()
        self._remember_mtimes()
        self._apply_canary_weights(manager)
        executor = DeferringThreadPoolExecutor(max_workers=opts.max_workers, thread_name_prefix="recwatch-grpc")
        server = grpc.server(executor, options=[("grpc.so_reuseport", 0)])
        address = self.address
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            port, reason = 0, str(exc)
        else:
            reason = "bind failed"
        if not port:
            server.stop(None)
            executor.shutdown(wait=True)
            if batcher is not None:
                batcher.close()
            raise ServerStartError(address, reason)
        replica = opts.replica or f"{socket.gethostname()}-{port}"
        metrics = ServingMetrics(
            producer_stats=self._producer_stats,
            cache_stats=cache.stats if cache is not None else None,
            queue_depth=batcher.queued_requests if batcher is not None else None,
        )
        run: Executor | None = self._executor_override or batcher
        if opts.fault_file is not None:  # tests and demos only: latency, errors, a leak (serving/faults.py)
            from serving.faults import FaultInjector, FaultyExecutor
            from serving.predict import DirectExecutor

            self._faults = FaultInjector(opts.fault_file)
            run = FaultyExecutor(run or DirectExecutor(), self._faults)
        predictor = Predictor(
            manager,
            self._publisher,
            replica=replica,
            clock=self._clock,
            executor=run,
            cache=cache,
            observers=[metrics],
            in_flight=in_flight,
            producer_totals=self._producer_totals,
        )
        if opts.rest_api_port is not None:
            rest = RestServer(predictor, host=opts.host, port=opts.rest_api_port, metrics=metrics)
            try:
                rest.start()
            except Exception:
                server.stop(None)
                executor.shutdown(wait=True)
                if batcher is not None:
                    batcher.close()
                raise
            self._rest = rest
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(predictor), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServiceServicer(predictor), server)
        health_servicer = health.HealthServicer()
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in manager.models():
            health_servicer.set(f"tensorflow.serving.{name}", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        server.start()
        self._server, self._executor, self._port, self._manager = server, executor, port, manager
        self._batcher, self._cache = batcher, cache
        self._health = health_servicer
        if opts.poll_wait_s > 0:
            self._stop_polling.clear()
            self._poller = threading.Thread(target=self._poll_loop, name="model-poller", daemon=True)
            self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop_polling.wait(self._options.poll_wait_s):
            try:
                self.poll_once()
            except Exception:  # a bad version dir or config edit must not stop future polls
                log.exception("polling the model repository failed")

    def poll_once(self) -> None:
        """One round of what the polling thread does (tests call it directly instead of waiting)."""
        manager = self.manager
        opts = self._options
        if opts.model_config_file is not None and self._changed(opts.model_config_file):
            manager.reload_config(opts.model_configs())
        else:
            manager.poll_once()
        if opts.canary_weights_file is not None and self._changed(opts.canary_weights_file):
            self._apply_canary_weights(manager)

    def _changed(self, path: Path) -> bool:
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return False
        if self._mtimes.get(path) == mtime:
            return False
        self._mtimes[path] = mtime
        return True

    def _remember_mtimes(self) -> None:
        for path in (self._options.model_config_file, self._options.canary_weights_file):
            if path is not None:
                self._changed(path)

    def _apply_canary_weights(self, manager: ModelManager) -> None:
        path = self._options.canary_weights_file
        if path is None or not path.exists():
            return
        for model, weight in parse_canary_weights(path.read_text()).items():
            manager.set_canary_weight(model, weight)

    def stop(self, grace_s: float | None = 5.0) -> None:
        """Stop accepting calls, let in-flight calls finish for up to ``grace_s`` seconds (then cancel them)
        and release the worker threads. Safe to call twice or before :meth:`start`."""
        self._stop_polling.set()
        if self._poller is not None:
            self._poller.join()
            self._poller = None
        server, executor = self._server, self._executor
        if server is None:
            return
        self._server = self._executor = None
        self._health.enter_graceful_shutdown()
        rest, self._rest = self._rest, None
        rest_stopper = threading.Thread(target=rest.stop, args=(grace_s or 0.0,)) if rest is not None else None
        if rest_stopper is not None:
            rest_stopper.start()  # both front ends drain at once
        server.stop(grace_s).wait()
        if rest_stopper is not None:
            rest_stopper.join()
        if executor is not None:
            executor.shutdown(wait=True)  # each worker runs its requests' deferred accounting first
        wait_idle(grace_s or 0.0)  # and the REST threads theirs: every event is published before stop returns
        if self._batcher is not None:
            self._batcher.close()
        if self._faults is not None:
            self._faults.close()

    def serve_forever(self, stop_event: threading.Event | None = None, *, grace_s: float = 5.0) -> None:
        """Start if needed, serve until ``stop_event`` is set or SIGTERM/SIGINT arrives, then :meth:`stop`.

        Signal handlers are installed only when called from the main thread, and restored on return.
        """
        stop = stop_event or threading.Event()
        if self._server is None:
            self.start()
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, frame: FrameType | None) -> None:
                stop.set()

            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            while not stop.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop(grace_s)

    def __enter__(self) -> ModelServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _saved_model_loader(path: Path, name: str) -> LoadedModel:
    return load_version(path, model_name=name)


def _tflite_loader(path: Path, name: str) -> LoadedModel:
    return load_version(path, model_name=name, prefer_tflite=True)
