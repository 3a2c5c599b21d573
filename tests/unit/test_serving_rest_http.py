"""The REST front end's HTTP/1.1 server with a stand-in application: keep-alive, limits, timeouts, drain."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.errors import ServerStartError
from serving.rest_http import HttpLimits, HttpRequest, HttpResponse, HttpServer


class EchoApp:
    """Answers with what it received; ``/slow`` waits for ``release``; ``/boom`` raises."""

    def __init__(self) -> None:
        self.requests: list[HttpRequest] = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        if request.target == "/boom":
            raise RuntimeError("bug in the application")
        if request.target == "/slow":
            self.entered.set()
            self.release.wait(10)
        if request.body_error is not None:
            return HttpResponse(400, json.dumps({"error": str(request.body_error)}).encode())
        document = {"method": request.method, "target": request.target, "body": request.body.decode("latin-1")}
        return HttpResponse(200, json.dumps(document).encode(), headers=(("X-Seen", str(len(self.requests))),))


@pytest.fixture
def no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leftover:
            return
        time.sleep(0.01)
    raise AssertionError(f"threads left running: {[t.name for t in leftover]}")


@pytest.fixture
def serve(no_leftover_threads: None) -> Iterator[Callable[..., tuple[HttpServer, EchoApp]]]:
    servers: list[HttpServer] = []

    def start(**limits: float) -> tuple[HttpServer, EchoApp]:
        app = EchoApp()
        server = HttpServer(app, "127.0.0.1", 0, HttpLimits(**limits))  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return server, app

    yield start
    for server in servers:
        server.stop(grace_s=2.0)


class Raw:
    """A client on a bare socket, to send what http.client will not (pipelining, broken framing)."""

    def __init__(self, server: HttpServer, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def _more(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed; unread {self._buffer!r}")
        return chunk

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next HTTP response (Content-Length framed)."""
        while b"\r\n\r\n" not in self._buffer:
            self._buffer += self._more()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
        length = int(headers.get("content-length", "0"))
        while len(self._buffer) < length:
            self._buffer += self._more()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return int(status_line.split()[1]), headers, body

    def closed(self) -> bool:
        """True once the server closed the connection (waits up to the socket timeout)."""
        try:
            return not self._buffer and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_construction_does_no_io_and_start_binds():
    server = HttpServer(EchoApp(), "127.0.0.1", 0)

    assert server.port == 0
    server.start()
    try:
        assert server.port > 0
        with pytest.raises(ServerStartError):
            server.start()
    finally:
        server.stop()
    server.stop()  # twice is fine


def test_a_port_in_use_is_a_start_error(serve):
    first, _ = serve()

    with pytest.raises(ServerStartError) as info:
        HttpServer(EchoApp(), "127.0.0.1", first.port).start()

    assert str(first.port) in str(info.value)


def test_many_requests_on_one_keep_alive_connection_without_nagle_stalls(serve):
    server, _ = serve()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.connect()
    local = connection.sock.getsockname()
    started = time.monotonic()

    for i in range(200):
        connection.request("POST", f"/r{i}", body=b"x" * 3000, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["target"] == f"/r{i}"
        assert connection.sock is not None and connection.sock.getsockname() == local  # never reconnected

    elapsed = time.monotonic() - started
    connection.close()
    # with Nagle + delayed ACK each request would wait ~40 ms (8 s in all)
    assert elapsed < 4.0, f"{elapsed:.2f} s for 200 requests"


def test_pipelined_requests_are_answered_in_order(serve):
    server, _ = serve()
    with Raw(server) as sock:
        sock.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")

        assert json.loads(sock.response()[2])["target"] == "/a"
        assert json.loads(sock.response()[2]) == {"method": "POST", "target": "/b", "body": "hi"}


def test_a_malformed_request_line_gets_json_400_and_the_server_keeps_serving(serve):
    server, _ = serve()
    with Raw(server) as sock:
        sock.send(b"THIS IS NOT HTTP\r\n\r\n")
        status, headers, body = sock.response()

    assert status == 400 and headers["connection"] == "close"
    assert "error" in json.loads(body)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("GET", "/after")
    assert connection.getresponse().status == 200
    connection.close()


def test_oversized_body_is_refused_without_reading_it(serve):
    server, app = serve(max_body_bytes=1000)
    with Raw(server) as sock:
        sock.send(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n" + b"x" * 5000)
        status, headers, body = sock.response()

        assert status == 400 and headers["connection"] == "close"
        assert "exceeds the limit of 1000 bytes" in json.loads(body)["error"]
        assert app.requests[-1].body == b""


def test_expect_100_continue_is_not_sent_for_an_oversized_body(serve):
    server, _ = serve(max_body_bytes=1000)
    with Raw(server) as sock:
        sock.send(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        status, _, _ = sock.response()

    assert status == 400


def test_expect_100_continue_is_honoured_for_an_acceptable_body(serve):
    server, _ = serve()
    with Raw(server) as sock:
        sock.send(b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert sock.response()[0] == 100
        sock.send(b"ok")
        status, _, body = sock.response()

    assert status == 200 and json.loads(body)["body"] == "ok"


def test_a_body_that_stops_arriving_times_out_with_400(serve):
    server, _ = serve(read_timeout_s=0.3)
    with Raw(server) as sock:
        sock.send(b"POST /slow-body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part")
        started = time.monotonic()
        status, headers, body = sock.response()

        assert status == 400 and headers["connection"] == "close"
        assert "not received in time" in json.loads(body)["error"]
        assert time.monotonic() - started < 3
        assert sock.closed()


def test_a_half_sent_request_line_does_not_hold_the_connection_forever(serve):
    server, _ = serve(idle_timeout_s=0.3, read_timeout_s=0.3)
    with Raw(server) as sock:
        sock.send(b"GET /never-finished")

        assert sock.closed()


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(serve):
    server, _ = serve(idle_timeout_s=0.3)
    with Raw(server) as sock:
        sock.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.response()[0] == 200

        assert sock.closed()


@pytest.mark.parametrize(
    "header",
    [
        b"Content-Length: -5",
        b"Content-Length: 12abc",
        b"Content-Length: 2\r\nContent-Length: 3",
        b"Transfer-Encoding: gzip",
    ],
)
def test_unusable_framing_is_a_400_that_closes_the_connection(serve, header):
    server, _ = serve()
    with Raw(server) as sock:
        sock.send(b"POST /x HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\nab")
        status, headers, _ = sock.response()

    assert status == 400 and headers["connection"] == "close"


def test_chunked_bodies_are_assembled(serve):
    server, _ = serve()
    with Raw(server) as sock:
        sock.send(
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: t\r\n\r\n"
            b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
        )

        assert json.loads(sock.response()[2])["body"] == "hello world"
        assert json.loads(sock.response()[2])["target"] == "/next"


@pytest.mark.parametrize("chunks", [b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n", b"fffffffffffffffff\r\n"])
def test_malformed_or_oversized_chunks_are_a_400(serve, chunks):
    server, _ = serve(max_body_bytes=1000)
    with Raw(server) as sock:
        sock.send(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)

        assert sock.response()[0] == 400


def test_an_exception_in_the_application_is_a_500_and_the_connection_still_serves(serve):
    server, _ = serve()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)

    connection.request("GET", "/boom")
    response = connection.getresponse()
    assert response.status == 500
    assert json.loads(response.read()) == {"error": "internal error: RuntimeError"}
    connection.request("GET", "/fine")
    assert connection.getresponse().status == 200
    connection.close()


def test_connections_beyond_the_limit_are_answered_429_at_once(serve):
    server, _ = serve(max_connections=2)
    held = [Raw(server), Raw(server)]
    for sock in held:  # make sure both are being served
        sock.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.response()[0] == 200

    with Raw(server) as extra:
        extra.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = extra.response()

    assert status == 429 and "too many connections" in json.loads(body)["error"]
    for sock in held:
        sock.close()


def test_http_1_0_closes_unless_keep_alive_is_asked(serve):
    server, _ = serve()
    with Raw(server) as sock:
        sock.send(b"GET /a HTTP/1.0\r\n\r\n")
        assert sock.response()[1]["connection"] == "close"
        assert sock.closed()
    with Raw(server) as sock:
        sock.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert sock.response()[1]["connection"] == "keep-alive"
        sock.send(b"GET /b HTTP/1.0\r\n\r\n")
        assert json.loads(sock.response()[2])["target"] == "/b"


def test_stop_lets_a_request_in_progress_answer_and_closes_idle_connections(serve):
    server, app = serve()
    idle = Raw(server)
    idle.send(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.response()[0] == 200
    busy = Raw(server)
    busy.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert app.entered.wait(5)

    stopper = threading.Thread(target=server.stop, kwargs={"grace_s": 5.0})
    stopper.start()
    assert idle.closed()  # woken and closed at once, not after the idle timeout
    time.sleep(0.1)
    app.release.set()
    status, headers, _ = busy.response()
    stopper.join(5)

    assert not stopper.is_alive()
    assert status == 200 and headers["connection"] == "close"
    with pytest.raises(OSError):
        Raw(server, timeout=1)
    idle.close()
    busy.close()


def test_stop_cuts_requests_that_outlive_the_grace_period(serve):
    server, app = serve()
    busy = Raw(server)
    busy.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert app.entered.wait(5)
    started = time.monotonic()

    threading.Timer(1.0, app.release.set).start()  # the application finishes, but after the grace period
    server.stop(grace_s=0.2)

    assert time.monotonic() - started < 2.0
    busy.close()


def test_head_answers_headers_only(serve):
    server, _ = serve()
    with Raw(server) as sock:
        sock.send(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = sock.response()  # framed by its Content-Length, so read none
        assert status == 200 and int(headers["content-length"]) > 0
        sock._buffer = body + sock._buffer  # a HEAD answer has no body: what follows is the next answer

        assert json.loads(sock.response()[2])["target"] == "/g"


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[HttpServer]:
    server = HttpServer(EchoApp(), "127.0.0.1", 0, HttpLimits(max_body_bytes=4096, read_timeout_s=2, idle_timeout_s=2))
    server.start()
    yield server
    server.stop(grace_s=2.0)


_request_parts = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.sampled_from(
            [
                b"GET / HTTP/1.1\r\n",
                b"POST /x HTTP/1.1\r\n",
                b"Content-Length: 5\r\n",
                b"Content-Length: 99999999\r\n",
                b"Transfer-Encoding: chunked\r\n",
                b"Expect: 100-continue\r\n",
                b"Connection: close\r\n",
                b"\r\n",
                b"5\r\nhello\r\n0\r\n\r\n",
                b"HTTP/9.9",
                b"\x00\xff",
            ]
        ),
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_request_parts)
def test_any_bytes_get_an_answer_or_a_close_and_the_server_keeps_serving(fuzz_server, parts):
    with Raw(fuzz_server, timeout=10) as sock:
        sock.send(b"".join(parts))
        sock.sock.shutdown(socket.SHUT_WR)  # end of input: the server must not wait for more
        data = b""
        while chunk := sock.sock.recv(65536):  # answers (if any), then the server closes
            data += chunk
    assert data == b"" or data.startswith(b"HTTP/1.1 ")
    with Raw(fuzz_server) as sock:
        sock.send(b"GET /still-alive HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.response()[0] == 200
