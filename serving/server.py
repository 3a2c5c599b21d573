"""Assemble and run the model server: load the latest version, bind the gRPC port, stop gracefully.

Construction only stores configuration; :meth:`ModelServer.start` loads the model and binds (TensorFlow is
imported there, not when this module is imported)::

    server = ModelServer(ServeOptions("ranker", Path("models/ranker"), port=0), InMemoryPublisher())
    server.start()
    print(server.port)   # the bound port (port=0 picks a free one)
    server.stop(grace_s=5.0)
"""

from __future__ import annotations

import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import grpc

from serving.errors import ServerStartError
from serving.publisher import EventPublisher

if TYPE_CHECKING:
    from serving.grpc_server import Clock
    from serving.model_repository import LoadedModel


@dataclass(frozen=True)
class ServeOptions:
    """What to serve and where. ``model_base_path`` is the model's directory holding numeric versions;
    ``replica`` names this process in events (default ``<hostname>-<port>``)."""

    model_name: str
    model_base_path: Path
    port: int = 8500
    host: str = "127.0.0.1"
    replica: str = ""
    max_workers: int = 16


class ModelServer:
    """A TF Serving-compatible gRPC server for one model that publishes an event per Predict call.

    The publisher is the caller's: the server neither starts nor closes it.
    """

    def __init__(self, options: ServeOptions, publisher: EventPublisher, *, clock: Clock | None = None) -> None:
        self._options = options
        self._publisher = publisher
        self._clock = clock
        self._server: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._port = 0
        self._model: LoadedModel | None = None

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
    def model(self) -> LoadedModel | None:
        """The loaded model version; None before :meth:`start`."""
        return self._model

    def start(self) -> None:
        """Load the latest version under ``model_base_path``, bind and start serving.

        Raises ModelNotFoundError/ModelLoadError if there is no loadable version and ServerStartError if the
        address cannot be bound (SO_REUSEPORT is off, so a port in use is an error, not a shared port).
        """
        if self._server is not None:
            raise ServerStartError(self.address, "already started")
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        from serving.grpc_server import PredictionServicer
        from serving.model_repository import load_latest

        opts = self._options
        model = load_latest(opts.model_base_path, opts.model_name)
        executor = ThreadPoolExecutor(max_workers=opts.max_workers, thread_name_prefix="recwatch-grpc")
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
            raise ServerStartError(address, reason)
        servicer = PredictionServicer(
            model, self._publisher, replica=opts.replica or f"{socket.gethostname()}-{port}", clock=self._clock
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
        server.start()
        self._server, self._executor, self._port, self._model = server, executor, port, model

    def stop(self, grace_s: float | None = 5.0) -> None:
        """Stop accepting calls, let in-flight calls finish for up to ``grace_s`` seconds (then cancel them)
        and release the worker threads. Safe to call twice or before :meth:`start`."""
        server, executor = self._server, self._executor
        if server is None:
            return
        self._server = self._executor = None
        server.stop(grace_s).wait()
        if executor is not None:
            executor.shutdown(wait=True)

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
