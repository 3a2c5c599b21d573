"""Everything one benchmark run starts — servers, the load generator, a Kafka broker — and stops again.

Layout: the servers share core 0 (``taskset -c 0``; only the measured one is busy at a time), the generator
and the Kafka broker get core 1. Every listener is on 127.0.0.1. A target that cannot be started (a flag
``recwatch serve`` does not have yet, no Java for Kafka, a peer venv that failed to build) is skipped with a
note instead of failing the run. :meth:`Fleet.stop` stops every process this run started, by its own id.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.serving import peers, processes
from benchmarks.serving.loadgen import REPLY_PREFIX, Endpoint
from benchmarks.serving.targets import TARGETS, TargetDef, expand_flags, missing_flags

REPO = Path(__file__).resolve().parents[2]
SERVER_CPUS = "0"
GENERATOR_CPUS = "1"
READY_DEADLINE_S = 240.0  # several servers import TensorFlow at once on one core
BATCHING_PARAMETERS = """\
max_batch_size { value: 1024 }
batch_timeout_micros { value: 1000 }
max_enqueued_batches { value: 64 }
num_batch_threads { value: 1 }
"""


class GeneratorError(RuntimeError):
    """The load generator process died or answered an error."""


class GeneratorClient:
    """The load generator worker process (see loadgen.py), driven over its stdin/stdout."""

    def __init__(self, model_dir: Path, log: Path, *, nice: int = 0) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "benchmarks.serving.loadgen", "--model-dir", str(model_dir)]
        with open(log, "ab") as err:
            self.popen = subprocess.Popen(
                processes.pinned(argv, GENERATOR_CPUS, nice),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=REPO,
                text=True,
                start_new_session=True,  # Ctrl-C reaches run.py only; run.py stops the generator
            )
        self.process = processes.ServerProcess("loadgen", self.popen, log)

    def call(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        try:
            self.popen.stdin.write(json.dumps(command) + "\n")
            self.popen.stdin.flush()
        except BrokenPipeError:
            raise GeneratorError(f"the load generator exited; see {self.process.log}") from None
        for line in self.popen.stdout:
            if line.startswith(REPLY_PREFIX):
                reply: dict[str, Any] = json.loads(line[len(REPLY_PREFIX) :])
                if not reply.get("ok"):
                    raise GeneratorError(str(reply.get("error")))
                return reply
        raise GeneratorError(f"the load generator exited; see {self.process.log}")

    def stop(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            assert self.popen.stdin is not None
            self.popen.stdin.write('{"op": "quit"}\n')
            self.popen.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self.process.stop(timeout_s=5)


class Fleet:
    """Starts the processes behind the requested targets; ``endpoints`` / ``servers`` / ``skipped`` say what
    came up. Construction does nothing; :meth:`start` starts, :meth:`stop` stops (also after a failure)."""

    def __init__(
        self,
        workdir: Path,
        cache: Path,
        model_dir: Path,
        model_name: str,
        *,
        kafka: str | None = None,
        nice: int = 0,
        say: Callable[[str], None] = print,
    ) -> None:
        self.workdir, self.cache, self.model_dir, self.model_name = workdir, cache, model_dir, model_name
        self.kafka = kafka
        self.nice = nice
        self.say = say
        self.endpoints: dict[str, Endpoint] = {}
        self.servers: dict[str, processes.ServerProcess] = {}
        self.skipped: dict[str, str] = {}
        self.generator: GeneratorClient | None = None
        self._processes: list[processes.ServerProcess] = []
        self._kafka_home: Path | None = None

    # -- start ----------------------------------------------------------------------------------------------
    def start(self, targets: list[str]) -> None:
        self.generator = GeneratorClient(self.model_dir, self.workdir / "logs" / "loadgen.log", nice=self.nice)
        pending: list[tuple[list[str], processes.ServerProcess, Callable[[], bool]]] = []
        recwatch = [t for t in targets if TARGETS[t].kind == "recwatch"]
        if recwatch:
            pending += self._start_recwatch(recwatch)
        for kind in ("kserve", "mlserver"):
            wanted = [t for t in targets if TARGETS[t].kind == kind]
            if wanted:
                started = self._start_peer(kind, wanted)
                if started is not None:
                    pending.append(started)
        for names, server, ready in pending:
            try:
                took = processes.wait_ready(server, ready, deadline_s=READY_DEADLINE_S)
            except processes.ServerStartError as exc:
                for name in names:
                    self.skipped[name] = f"did not start: {exc.reason} (log: {exc.log})"
                    self.endpoints.pop(name, None)
                continue
            self.say(f"  {server.name} ready in {took:.1f} s (pid {server.pid})")
        if "raw" in targets:
            self.endpoints["raw"] = Endpoint("raw")
            self.servers["raw"] = self.generator.process

    def _start_recwatch(
        self, targets: list[str]
    ) -> list[tuple[list[str], processes.ServerProcess, Callable[[], bool]]]:
        cli = [sys.executable, "-m", "recwatch.cli", "serve"]
        help_text = subprocess.run(
            [*cli, "--help"], capture_output=True, text=True, cwd=REPO, check=False, timeout=120
        ).stdout
        batching_file = self.workdir / "batching_parameters.txt"
        batching_file.write_text(BATCHING_PARAMETERS)
        started = []
        for name in targets:
            target = TARGETS[name]
            missing = missing_flags(target, help_text)
            if missing:
                self.skipped[name] = f"`recwatch serve` has no {', '.join(missing)} yet"
                continue
            if target.events and self._bootstrap() is None:
                self.skipped[name] = "needs Kafka for inference events, which could not be started (see above)"
                continue
            port = processes.free_port()
            argv = [
                *cli,
                "--model_name",
                self.model_name,
                "--model_base_path",
                str(self.model_dir.parent),
                "--port",
                str(port),
                *expand_flags(target.serve_flags, batching_file=str(batching_file), model=self.model_name),
            ]
            if not target.events:
                argv.append("--no-events")
            if _has_flag(help_text, "--rest_api_port"):
                argv += ["--rest_api_port", "0"]  # gRPC is measured; several servers must not share 8501
            env = {"RECWATCH_HOME": str(self.workdir / f"home-{name}"), "RECWATCH_REPLICA": name}
            if target.events:
                env["RECWATCH_KAFKA"] = self._bootstrap() or ""
            server = processes.start(
                name,
                argv,
                log=self.workdir / "logs" / f"{name}.log",
                cpus=SERVER_CPUS,
                nice=self.nice,
                env=env,
                cwd=REPO,
            )
            self._processes.append(server)
            self.servers[name] = server
            self.endpoints[name] = Endpoint("tfs-grpc", f"127.0.0.1:{port}", self.model_name)
            started.append(([name], server, _grpc_health(f"127.0.0.1:{port}")))
        return started

    def _start_peer(
        self, kind: str, targets: list[str]
    ) -> tuple[list[str], processes.ServerProcess, Callable[[], bool]] | None:
        try:
            if not peers.venv_python(self.cache, kind).exists():
                self.say(f"  creating the {kind} venv under {peers.venv_root(self.cache)} (once; a few minutes)")
            python = peers.ensure_venv(self.cache, kind)
        except peers.PeerError as exc:
            for name in targets:
                self.skipped[name] = str(exc)
            return None
        http, grpc = processes.free_port(), processes.free_port()
        if kind == "kserve":
            spec = peers.kserve_server(python, self.model_dir, self.model_name, http_port=http, grpc_port=grpc)
        else:
            spec = peers.mlserver_server(
                python,
                self.workdir / "mlserver",
                self.model_dir,
                self.model_name,
                http_port=http,
                grpc_port=grpc,
                metrics_port=processes.free_port(),
            )
        server = processes.start(
            kind,
            spec.argv,
            log=self.workdir / "logs" / f"{kind}.log",
            cpus=SERVER_CPUS,
            nice=self.nice,
            env=dict(spec.env),
            cwd=spec.cwd,
        )
        self._processes.append(server)
        for name in targets:
            protocol = TARGETS[name].protocol
            self.endpoints[name] = Endpoint(
                protocol, spec.grpc if protocol == "v2-grpc" else spec.http, self.model_name
            )
            self.servers[name] = server
        return targets, server, lambda: processes.http_ok(spec.ready_url)

    def _bootstrap(self) -> str | None:
        """Kafka for the event-logging rows: RECWATCH_KAFKA if given, else one broker of our own (once)."""
        if self.kafka is None and self._kafka_home is None:
            self._kafka_home = self.workdir / "kafka-home"
            try:
                from infra import kafka

                kafka.stop(self._kafka_home)  # a reused --workdir: the broker data of an earlier run goes
                shutil.rmtree(self._kafka_home, ignore_errors=True)
                port = _free_pair()
                self.say(f"  starting a Kafka broker on 127.0.0.1:{port} (pinned to core {GENERATOR_CPUS})")
                cluster = kafka.start(self._kafka_home, cache=self.cache, brokers=1, base_port=port)
                for node in cluster.nodes:
                    if node.pid is not None:
                        subprocess.run(["taskset", "-a", "-cp", GENERATOR_CPUS, str(node.pid)], capture_output=True)
                self.kafka = cluster.bootstrap
            except Exception as exc:  # no Java, no jars, port race: the rows that need Kafka are skipped
                self.say(f"  Kafka could not be started: {type(exc).__name__}: {exc}")
                self.kafka = ""
        return self.kafka or None

    # -- stop -----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        if self.generator is not None:
            self.generator.stop()
        for server in self._processes:
            server.stop()
        if self._kafka_home is not None:
            with contextlib.suppress(Exception):
                from infra import kafka

                kafka.stop(self._kafka_home)

    def describe(self) -> dict[str, Any]:
        return {"endpoints": {k: asdict(v) for k, v in self.endpoints.items()}, "skipped": self.skipped}


def _has_flag(help_text: str, flag: str) -> bool:
    return not missing_flags(TargetDef("probe", "recwatch", "tfs-grpc", "", requires=(flag,)), help_text)


def _grpc_health(address: str) -> Callable[[], bool]:
    def ready() -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(address) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    return ready


def _free_pair() -> int:
    for _ in range(50):
        port = processes.free_port()
        if port < 65000 and _port_free(port + 1):
            return port
        time.sleep(0.01)
    raise RuntimeError("no two adjacent free ports")


def _port_free(port: int) -> bool:
    from infra.processes import port_free

    return port_free(port)
