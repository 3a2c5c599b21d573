"""The chDB store daemon: one process owns a chDB data directory and serves it on loopback HTTP.

chDB locks its data directory to one process, but the model servers' workers, ``recwatch sql`` and later the
trainer all need the store at once. ``recwatch infra up`` starts this daemon; ``store.open_store`` finds it
through ``<data dir>.daemon.json`` and talks to it with ``ChdbDaemonStore``.

The address survives a restart: the first start picks a free loopback port and records it in
``<data dir>.daemon.port``; every later start binds that port again. Clients look the address up again whenever a
connection fails, so a worker, the alerter or ``recwatch sql`` go on after the daemon is restarted (``recwatch infra
up``) without being restarted; while it is down they get ``StoreUnavailableError`` (the worker waits it out). Once a
directory has had a daemon, ``open_store`` never opens it in-process (that would lock the daemon out).

Protocol (loopback only):

- ``GET  /ping``                      -> ``{"version": "26.9.2.1", "database": "recwatch"}``
- ``POST /execute`` body: SQL         -> 204
- ``POST /query``   body: SQL         -> the JSONCompact answer
- ``POST /run_over_input`` body: JSON ``{"path": file, "statements": [[sql, format], ...], "cleanup": [sql,
  ...]}`` -> per statement an 8-byte big-endian length and its output (``store.base.InputStore``: the ingest
  fast path hands the engine raw Kafka message bytes). The client writes the input file next to the data
  directory (this host: the daemon serves loopback only) and deletes it afterwards: ~14 MB per 20,000 events
  need not pass through this process's Python.

Errors answer 400 with ``{"error": "...", "sql": "..."}`` (a bad statement) or 503 (store not open).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import struct
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from store.arrow import to_arrow
from store.base import QueryError, QueryResult, StoreError, StoreUnavailableError, query_error
from store.chdb_local import ChdbStore, arrow_insert_sql, arrow_ipc, parse_json_compact, parse_version, write_input


def address_file(path: Path) -> Path:
    return Path(f"{path}.daemon.json")


def port_file(path: Path) -> Path:
    """The port recorded by the first daemon of ``path``: every later one binds it again."""
    return Path(f"{path}.daemon.port")


def has_daemon(path: Path) -> bool:
    """Whether ``path`` is served by a daemon, now or before (then it is restarted, not opened in-process)."""
    return port_file(path).exists() or find_daemon(path) is not None


class _Handler(BaseHTTPRequestHandler):
    server: _DaemonServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid the 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per request is noise
        pass

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/ping":
            store = self.server.store
            body = json.dumps({"version": self.server.version, "database": store.database, "path": str(store.path)})
            self._reply(200, body.encode())
        else:
            self._reply(404, b'{"error": "not found"}')

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        store = self.server.store
        sql = ""
        try:
            if parts.path == "/execute":
                sql = body.decode()
                store.execute(sql)
                self._reply(204, b"")
            elif parts.path == "/query":
                sql = body.decode()
                self._reply(200, store.query_json(sql))
            elif parts.path == "/run_over_input":
                spec = json.loads(body)
                statements = [(str(q), str(f)) for q, f in spec["statements"]]
                sql = "; ".join(q for q, _ in statements)
                try:
                    outputs = store.run_over_file(Path(spec["path"]), statements, [str(c) for c in spec["cleanup"]])
                except QueryError as exc:
                    sql = exc.sql
                    raise
                self._reply(200, b"".join(struct.pack(">Q", len(o)) + o for o in outputs))
            else:
                self._reply(404, b'{"error": "not found"}')
        except QueryError as exc:
            self._reply(400, json.dumps({"error": str(exc), "sql": exc.sql}).encode())
        except (KeyError, ValueError, TypeError) as exc:
            self._reply(400, json.dumps({"error": f"bad request: {exc!r}", "sql": sql}).encode())
        except StoreError as exc:
            self._reply(503, json.dumps({"error": str(exc), "sql": sql}).encode())

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _DaemonServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: ChdbStore) -> None:
        super().__init__(address, _Handler)
        self.store = store
        self.version = ".".join(map(str, store.server_version()))


def serve(path: Path, database: str, host: str = "127.0.0.1", port: int | None = None) -> None:
    """Own ``path`` until SIGTERM/SIGINT; the address file exists exactly while requests are served. ``port``:
    None binds the port recorded for ``path`` (a free one at the first start, then recorded)."""
    recorded = port_file(path)
    if port is None:
        try:
            port = int(recorded.read_text().strip())
        except (FileNotFoundError, ValueError):
            port = 0
    store = ChdbStore(path, database)
    store.connect()
    try:
        server = _DaemonServer((host, port), store)
    except OSError as exc:
        store.close()
        raise SystemExit(
            f"store daemon: cannot bind {host}:{port} (recorded in {recorded} for {path}): {exc}; "
            f"stop what uses the port, or delete {recorded} to pick a new one (clients look the address up again)"
        ) from exc
    bound = int(server.server_address[1])
    if bound != port or not recorded.exists():
        tmp_port = recorded.with_suffix(".tmp")
        tmp_port.write_text(f"{bound}\n")
        tmp_port.replace(recorded)
    addr = address_file(path)
    tmp = addr.with_suffix(".tmp")
    tmp.write_text(json.dumps({"host": host, "port": server.server_address[1], "pid": os.getpid()}))
    tmp.replace(addr)

    def _stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        addr.unlink(missing_ok=True)
        server.server_close()
        store.close()


def find_daemon(path: Path) -> tuple[str, int] | None:
    """The daemon serving ``path``, if one is running (its address file exists and its pid is alive)."""
    try:
        info = json.loads(address_file(path).read_text())
        os.kill(int(info["pid"]), 0)
    except (FileNotFoundError, ValueError, KeyError, ProcessLookupError, PermissionError):
        return None
    return str(info["host"]), int(info["port"])


class ChdbDaemonStore:
    """A client of the store daemon; same contract as ``ChdbStore``. Thread-safe (a connection per thread).

    The daemon's address is looked up (``find_daemon``) when a connection is opened, so a restarted daemon is
    found again; while none runs, every call raises ``StoreUnavailableError``."""

    def __init__(self, path: Path, database: str, timeout_s: float = 60.0) -> None:
        self.path = path
        self.database = database
        self.url = f"chdb://{path}?database={database}"
        self.host = ""
        self.port = 0
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._types: dict[str, dict[str, str]] = {}

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            address = find_daemon(self.path)
            if address is None:
                raise StoreUnavailableError(
                    f"the chDB store daemon for {self.path} is not running (`recwatch infra up` starts it)"
                )
            self.host, self.port = address
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            self._local.conn = conn
        return conn

    def connect(self) -> None:
        info = json.loads(self._request("GET", "/ping", b""))
        if info["database"] != self.database:
            raise StoreUnavailableError(
                f"the store daemon at {self.host}:{self.port} serves database {info['database']!r}, "
                f"not {self.database!r}"
            )
        self._version = parse_version(info["version"])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def server_version(self) -> tuple[int, ...]:
        return self._version

    def execute(self, sql: str) -> None:
        self._request("POST", "/execute", sql.encode(), sql)

    def query(self, sql: str) -> QueryResult:
        return parse_json_compact(self._request("POST", "/query", sql.encode(), sql), sql)

    def insert(self, table: str, columns: Mapping[str, Sequence[Any]]) -> int:
        types = self._types.get(table)
        if types is None:
            types = {str(r[0]): str(r[1]) for r in self.query(f"DESCRIBE TABLE {table}").rows}
            self._types[table] = types
        block = to_arrow(columns, types)
        self.run_over_input(arrow_ipc(block), [(arrow_insert_sql(table, block.column_names), "")])
        return int(block.num_rows)

    def run_over_input(
        self, data: bytes, statements: Sequence[tuple[str, str]], cleanup: Sequence[str] = ()
    ) -> list[bytes]:
        """See ``store.base.InputStore``: ``data`` goes to a file next to the data directory, the daemon runs the
        statements over it in one request (a failing one is named in the answer)."""
        path = write_input(self.path, data)
        try:
            spec = {"path": str(path), "statements": [list(s) for s in statements], "cleanup": list(cleanup)}
            answer = self._request("POST", "/run_over_input", json.dumps(spec).encode())
        finally:
            path.unlink(missing_ok=True)
        outputs, at = [], 0
        for _ in statements:
            (n,) = struct.unpack_from(">Q", answer, at)
            outputs.append(answer[at + 8 : at + 8 + n])
            at += 8 + n
        return outputs

    def _request(self, method: str, path: str, body: bytes, sql: str = "") -> bytes:
        for attempt in (0, 1):  # one retry on a connection the daemon closed while idle (or a restarted daemon)
            conn = self._connection()
            try:
                conn.request(method, path, body=body)
                resp = conn.getresponse()
                data = resp.read()
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                conn.close()
                self._local.conn = None
                if attempt == 1:
                    raise StoreUnavailableError(f"store daemon at {self.host}:{self.port}: {exc}") from exc
                continue
            if resp.status < 300:
                return data
            reply = json.loads(data or b"{}")
            error = reply.get("error", data.decode(errors="replace"))
            if resp.status == 400:
                raise query_error(error, reply.get("sql") or sql)
            raise StoreUnavailableError(f"store daemon at {self.host}:{self.port}: {error}")
        raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m store.daemon", description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, required=True, help="chDB data directory")
    parser.add_argument("--database", default="recwatch")
    parser.add_argument(
        "--port", type=int, help="loopback port (default: the one recorded at the first start; 0: any free port)"
    )
    args = parser.parse_args(argv)
    serve(args.path.absolute(), args.database, port=args.port)


if __name__ == "__main__":
    main()
