"""A threaded HTTP/1.1 server for the REST front end: keep-alive, TCP_NODELAY, bounded reads, graceful drain.

One thread per connection: a prediction blocks its thread in the model call (TensorFlow releases the GIL
while it computes), which is what the stdlib's threaded server does best; an asyncio server would hand the
same call to a thread pool. Guarantees:

- **Keep-alive**: HTTP/1.1 connections stay open between requests (pipelining works); ``Connection: close``,
  an HTTP/1.0 client without ``keep-alive``, or a request whose body could not be read closes it.
- **No Nagle stall**: TCP_NODELAY is set and each response leaves in a single ``send``, so a client never
  waits for a delayed ACK (40 ms on Linux) between header and body.
- **Never hangs**: a request in progress must deliver each read within ``read_timeout_s`` and an idle
  keep-alive connection is closed after ``idle_timeout_s``. A body larger than ``max_body_bytes`` is refused
  without being read (also before ``Expect: 100-continue``). A connection beyond ``max_connections`` is
  answered 429 and closed at once.
- **Never crashes**: an exception from the application is logged and answered 500; a broken connection ends
  only its own thread.
- **Drain**: :meth:`HttpServer.stop` stops accepting, closes idle keep-alive connections, lets requests in
  progress finish and answer (with ``Connection: close``) for up to ``grace_s`` seconds, then cuts the rest.
"""

from __future__ import annotations

import contextlib
import email.utils
import http
import itertools
import logging
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler
from typing import Any, Final

from serving.after_response import Scope
from serving.errors import InvalidRequestError, OverloadedError, ServerStartError, status_of
from serving.rest_encode import error_json

log = logging.getLogger(__name__)

_MAX_LINE: Final = 65536  # request line and chunk-size lines, as http.server limits header lines
_MAX_TRAILERS: Final = 64
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,15}")


@dataclass(frozen=True)
class HttpLimits:
    max_body_bytes: int = 64 << 20
    read_timeout_s: float = 30.0  # each read while a request is being received (headers, body)
    idle_timeout_s: float = 120.0  # a keep-alive connection waiting for its next request
    max_connections: int = 256  # open connections (= threads) at once


@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: str  # the request target as sent (path and query, percent-encoded)
    headers: Message
    body: bytes
    body_error: InvalidRequestError | None  # the body could not be read: answer with it (the connection closes)


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


App = Callable[[HttpRequest], HttpResponse]


class HttpServer:
    """Serves ``app`` on ``host:port`` (port 0 picks a free one). ``start`` binds; construction does no I/O."""

    def __init__(self, app: App, host: str = "127.0.0.1", port: int = 0, limits: HttpLimits | None = None) -> None:
        self.app = app
        self.host = host
        self.limits = limits or HttpLimits()
        self._requested_port = port
        self._port = 0
        self._tcp: _TcpServer | None = None
        self._acceptor: threading.Thread | None = None
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._connections: set[_Connection] = set()
        self._draining = False
        self._names = itertools.count(1)
        self._date = (0, "")

    @property
    def port(self) -> int:
        """The bound port; 0 before :meth:`start`."""
        return self._port

    @property
    def draining(self) -> bool:
        """True once :meth:`stop` began: answers say ``Connection: close``."""
        return self._draining

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self._port or self._requested_port}"

    def start(self) -> None:
        """Bind and start accepting; raises ServerStartError if the address cannot be bound or on a second call."""
        if self._tcp is not None:
            raise ServerStartError(self.address, "already started")
        try:
            tcp = _TcpServer(self, (self.host, self._requested_port))
        except OSError as exc:
            raise ServerStartError(self.address, str(exc)) from exc
        self._tcp = tcp
        self._port = tcp.server_address[1]
        self._draining = False
        self._acceptor = threading.Thread(
            target=tcp.serve_forever, kwargs={"poll_interval": 0.2}, name="rest-accept", daemon=True
        )
        self._acceptor.start()

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, close idle connections, let requests in progress finish for up to ``grace_s`` s,
        then cut their connections. Safe to call twice or before :meth:`start`."""
        tcp, self._tcp = self._tcp, None
        if tcp is None:
            return
        tcp.shutdown()
        if self._acceptor is not None:
            self._acceptor.join()
            self._acceptor = None
        tcp.server_close()
        with self._lock:
            self._draining = True
            idle = [c for c in self._connections if not c.busy]
            threads = list(self._threads)
        for connection in idle:
            connection.abort()
        deadline = time.monotonic() + max(grace_s, 0.0)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        late = [t for t in threads if t.is_alive()]
        if late:
            with self._lock:
                connections = list(self._connections)
            for connection in connections:
                connection.abort()
            for thread in late:
                thread.join(1.0)
            stuck = [t.name for t in late if t.is_alive()]
            log.warning(
                "REST: %d request(s) still running after %.1f s of grace; connections cut%s",
                len(late),
                grace_s,
                f" (threads still in the model call: {stuck})" if stuck else "",
            )

    # ------------------------------------------------------------------ connection bookkeeping

    def _spawn(self, sock: socket.socket, client: Any, tcp: _TcpServer) -> None:
        with self._lock:
            full = len(self._threads) >= self.limits.max_connections
            if not (full or self._draining):
                thread = threading.Thread(
                    target=self._serve, args=(sock, client, tcp), name=f"rest-conn-{next(self._names)}", daemon=True
                )
                self._threads.add(thread)
        if full or self._draining:
            _refuse(sock, self.limits.max_connections)
            return
        thread.start()

    def _serve(self, sock: socket.socket, client: Any, tcp: _TcpServer) -> None:
        try:
            _Connection(sock, client, tcp)  # runs setup, handle (all requests of the connection), finish
        except Exception:
            log.exception("REST connection from %s failed", client)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _register(self, connection: _Connection) -> bool:
        """Track ``connection``; False if the server is draining (serve one request, then close)."""
        with self._lock:
            self._connections.add(connection)
            return not self._draining

    def _unregister(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _set_busy(self, connection: _Connection) -> None:
        with self._lock:
            connection.busy = True

    def _set_idle(self, connection: _Connection) -> bool:
        """Mark ``connection`` idle; False if it must close instead (the server is draining)."""
        with self._lock:
            connection.busy = False
            return not self._draining

    def http_date(self) -> str:
        now = int(time.time())
        second, text = self._date
        if second != now:
            text = email.utils.formatdate(now, usegmt=True)
            self._date = (now, text)
        return text


class _TcpServer(socketserver.TCPServer):
    allow_reuse_address = True  # rebinding a port in TIME_WAIT; two listeners on one port still fail
    request_queue_size = 128

    def __init__(self, owner: HttpServer, address: tuple[str, int]) -> None:
        self.owner = owner
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Connection)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.owner._spawn(request, client_address, self)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("REST: error accepting a connection from %s", client_address)


def _refuse(sock: socket.socket, limit: int) -> None:
    exc = OverloadedError(f"too many connections (the limit is {limit}); retry later")
    status = status_of(exc).http
    body = error_json(str(exc))
    head = (
        f"HTTP/1.1 {status} {_phrase(status)}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    try:
        sock.settimeout(1.0)
        sock.sendall(head.encode("latin-1") + body)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.05)
        sock.recv(_MAX_LINE)  # take what the client already sent, so closing does not reset the answer away
    except OSError:
        pass
    finally:
        sock.close()


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _Connection(BaseHTTPRequestHandler):
    """One client connection; handles its requests in turn on this thread."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # StreamRequestHandler sets TCP_NODELAY
    server: _TcpServer
    busy = False
    _unread_body = False  # closing now would reset the connection and could destroy the answer in flight

    def setup(self) -> None:
        super().setup()
        self._owner = self.server.owner
        self._limits = self._owner.limits
        self._accepting = self._owner._register(self)

    def finish(self) -> None:
        self._owner._unregister(self)
        try:
            super().finish()
            self.connection.shutdown(socket.SHUT_WR)
            if self._unread_body:
                self._linger()
        except OSError:
            pass

    def _linger(self, max_s: float = 2.0, max_bytes: int = 64 << 20) -> None:
        """Read and drop what the client still sends (for up to ``max_s``), so it can read our answer."""
        sock = self.connection
        deadline = time.monotonic() + max_s
        dropped = 0
        while dropped < max_bytes and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(min(left, 0.25))
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not data:
                return
            dropped += len(data)

    def abort(self) -> None:
        """Wake and end this connection's thread (from another thread)."""
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def handle_one_request(self) -> None:
        sock = self.connection
        self.close_connection = True
        self.command, self.request_version = "", "HTTP/1.1"  # before parse_request sets them
        try:
            sock.settimeout(self._limits.idle_timeout_s if self._accepting else self._limits.read_timeout_s)
            line = self.rfile.readline(_MAX_LINE + 1)
            if not line:
                return
            self._owner._set_busy(self)
            sock.settimeout(self._limits.read_timeout_s)
            if len(line) > _MAX_LINE:
                self.send_error(http.HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            self.raw_requestline = line
            if not self.parse_request():  # answers malformed request lines and headers itself
                self.close_connection = True
                return
            self._dispatch()
        except (TimeoutError, OSError):  # a stalled or vanished client: drop the connection
            self.close_connection = True
        finally:
            self._accepting = self._owner._set_idle(self) and self._accepting
            if not self._accepting:
                self.close_connection = True

    def _dispatch(self) -> None:
        body, error = self._read_body()
        if error is not None:
            self.close_connection = True  # the rest of the body is unread: the stream is out of sync
            self._unread_body = True
        request = HttpRequest(self.command, self.path, self.headers, body, error)
        with Scope():  # the request's accounting runs after the answer is sent (serving/after_response.py)
            try:
                response = self._owner.app(request)
            except Exception as exc:
                log.exception("REST handler failed on %s %s", self.command, self.path)
                response = HttpResponse(500, error_json(f"internal error: {type(exc).__name__}"))
            if self._owner.draining:
                self.close_connection = True  # tell the client before it sends another request here
            self._send(response)

    def _read_body(self) -> tuple[bytes, InvalidRequestError | None]:
        headers = self.headers
        encoding = headers.get("Transfer-Encoding")
        lengths = headers.get_all("Content-Length") or []
        if encoding is not None:
            if encoding.strip().lower() != "chunked" or lengths:
                return b"", InvalidRequestError(f"unsupported Transfer-Encoding {encoding!r}")
            return self._read_chunked()
        if not lengths:
            return b"", None
        if len(set(lengths)) != 1 or not (lengths[0].isascii() and lengths[0].strip().isdigit()):
            return b"", InvalidRequestError(f"invalid Content-Length {', '.join(lengths)!r}")
        size = int(lengths[0])
        if size > self._limits.max_body_bytes:
            return b"", self._too_large(size)
        try:
            data = self.rfile.read(size)
        except (TimeoutError, OSError):
            return b"", self._timed_out()
        if len(data) != size:
            return b"", InvalidRequestError(f"request body ended after {len(data)} of {size} bytes")
        return data, None

    def _read_chunked(self) -> tuple[bytes, InvalidRequestError | None]:
        parts: list[bytes] = []
        total = 0
        try:
            while True:
                line = self.rfile.readline(_MAX_LINE + 1)
                size_text = line.split(b";", 1)[0].strip()
                if not line.endswith(b"\n") or not _HEX.fullmatch(size_text):
                    return b"", InvalidRequestError("malformed chunked request body")
                size = int(size_text, 16)
                if size == 0:
                    break
                total += size
                if total > self._limits.max_body_bytes:
                    return b"", self._too_large(total)
                chunk = self.rfile.read(size)
                if len(chunk) != size or self.rfile.readline(_MAX_LINE + 1).strip():
                    return b"", InvalidRequestError("malformed chunked request body")
                parts.append(chunk)
            for _ in range(_MAX_TRAILERS):
                if not self.rfile.readline(_MAX_LINE + 1).strip():
                    return b"".join(parts), None
            return b"", InvalidRequestError("too many trailer lines in the chunked request body")
        except (TimeoutError, OSError):
            return b"", self._timed_out()

    def _too_large(self, size: int) -> InvalidRequestError:
        return InvalidRequestError(
            f"request body of {size} bytes exceeds the limit of {self._limits.max_body_bytes} bytes"
        )

    def _timed_out(self) -> InvalidRequestError:
        return InvalidRequestError(f"request body not received in time (read timeout {self._limits.read_timeout_s} s)")

    def handle_expect_100(self) -> bool:
        # Send "100 Continue" only for a body we will read; otherwise answer at once without reading it.
        length = self.headers.get("Content-Length", "")
        if length.isascii() and length.strip().isdigit() and int(length) > self._limits.max_body_bytes:
            return True
        return super().handle_expect_100()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors found by http.server while parsing (bad request line, headers too large), as JSON."""
        self.close_connection = True
        self._send(HttpResponse(int(code), error_json(message or _phrase(int(code)))))

    def _send(self, response: HttpResponse) -> None:
        lines = [
            f"HTTP/1.1 {response.status} {_phrase(response.status)}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            f"Date: {self._owner.http_date()}",
        ]
        lines.extend(f"{name}: {value}" for name, value in response.headers)
        if self.close_connection:
            lines.append("Connection: close")
        elif self.request_version == "HTTP/1.0":
            lines.append("Connection: keep-alive")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        self.wfile.write(head if self.command == "HEAD" else head + response.body)

    def log_message(self, format: str, *args: Any) -> None:  # http.server writes to stderr otherwise
        log.debug("REST %s: " + format, self.address_string(), *args)
