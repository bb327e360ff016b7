"""The server under the function, over real sockets: idle, slow and oversized requests are bounded.

Each test runs functions-framework as production does (gunicorn, main.py's uvicorn worker), with
the read deadline compressed to 1 s by its setting. The bounds on how long a test waits for the
server to act are generous (a hang, not a time: nothing here measures one).
"""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from tests.support import CREATE, JSON, STATUS, Answer, LiveServer, assert_error, log_records, send

HANG = 20.0  # seconds: far above every bound under test; reaching it means the server never acted


def connect(server: LiveServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=HANG)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed the connection (anything it sent first is read and dropped)."""
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def answer_on(sock: socket.socket) -> Answer:
    response = http.client.HTTPResponse(sock, method="POST")
    response.begin()
    return Answer(response.status, response.headers, response.read())


def trickle(sock: socket.socket, pieces: list[bytes], every: float) -> bool:
    """Send each piece `every` seconds until the server answers or closes; whether it did."""
    for piece in pieces:
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return True
        sock.settimeout(every)
        try:
            if sock.recv(1, socket.MSG_PEEK) is not None:
                return True  # an answer, or b"" for a close
        except TimeoutError:
            pass
        except ConnectionResetError:
            return True
    return False


@pytest.fixture
def server(live_server) -> LiveServer:
    return live_server(REQUEST_READ_TIMEOUT_SECONDS="1")


@pytest.mark.slow
def test_a_connection_that_sends_nothing_is_closed(server):
    # The keep-alive timeout (gunicorn's keepalive, 2 s) applies before a first request too.
    with connect(server) as sock:
        assert closed_by_server(sock)
    assert_error(send(server, "GET", STATUS), 400, "invalid_session_id")  # still serving


@pytest.mark.slow
def test_a_connection_is_closed_when_idle_after_an_answer(server):
    with connect(server) as sock:
        sock.sendall(f"GET {STATUS} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert_error(answer_on(sock), 400, "invalid_session_id")
        assert closed_by_server(sock)


@pytest.mark.slow
def test_a_head_sent_slowly_is_refused_408_and_closed(server):
    # A header line every 0.2 s: each would reset an idle timer, never the request's deadline.
    lines = [f"POST {CREATE} HTTP/1.1\r\n".encode()] + [b"X-Slow: 1\r\n"] * int(HANG / 0.2)
    with connect(server) as sock:
        assert trickle(sock, lines, every=0.2), "the server waited for the whole slow head"
        sock.settimeout(HANG)
        body = assert_error(answer_on(sock), 408, "request_timeout")
        assert "1 s" in body["error"]
        assert closed_by_server(sock)
    [line] = [r for r in log_records(server.logs()) if r.get("request_id") == body["request_id"]]
    assert line["code"] == "request_timeout"


@pytest.mark.slow
def test_a_body_sent_slowly_is_cut_off(server, stripe_emulator):
    head = (
        f"POST {CREATE} HTTP/1.1\r\nHost: x\r\nContent-Type: {JSON}\r\nContent-Length: 1000\r\n\r\n"
    )
    pieces = [head.encode()] + [b" "] * int(HANG / 0.2)
    with connect(server) as sock:
        assert trickle(sock, pieces, every=0.2), "the server waited for the whole slow body"
        sock.settimeout(HANG)
        assert closed_by_server(sock)
    assert stripe_emulator.calls()["total"] == 0
    assert_error(send(server, "GET", STATUS), 400, "invalid_session_id")  # still serving


def test_a_request_sent_whole_in_time_is_served_though_slowly(live_server, stripe_emulator):
    # Under the deadline, pauses do not matter: a slow client on a phone is still served.
    server = live_server(REQUEST_READ_TIMEOUT_SECONDS="5")  # room for a busy machine
    body = b'{"imageId": "img_1"}'
    head = f"POST {CREATE} HTTP/1.1\r\nHost: x\r\nContent-Type: {JSON}\r\n"
    pieces = [head.encode(), f"Content-Length: {len(body)}\r\n\r\n".encode(), body]
    with connect(server) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.1)  # pauses well inside the deadline: pacing, not a measurement
        answer = answer_on(sock)
    assert answer.status == 200, answer.body
    assert stripe_emulator.calls()["sessions_created"] == 1


def test_headers_over_32_kib_in_all_are_431(live_server, stripe_emulator):
    server = live_server()  # the default cap
    # 40 lines of 1,000 bytes: each under the 8190-byte line limit, together over 32 KiB.
    many = [(f"X-Pad-{n}", "p" * 1000) for n in range(40)]
    answer = send(server, "POST", CREATE, [("Content-Type", JSON), *many], b"{}")
    body = assert_error(answer, 431, "headers_too_large")
    assert "32768 bytes" in body["error"]
    # 28 of them (28 KiB) are served.
    assert send(server, "POST", CREATE, [("Content-Type", JSON), *many[:28]], b"{}").status == 200
    assert stripe_emulator.calls()["sessions_created"] == 1


def test_a_header_line_that_never_ends_is_431_before_it_grows(live_server):
    server = live_server(REQUEST_HEAD_MAX_BYTES="8192")
    with connect(server) as sock:
        sock.sendall(f"POST {CREATE} HTTP/1.1\r\nHost: x\r\nX-Endless: ".encode())
        refused = trickle(sock, [b"e" * 4096] * 64, every=0.05)  # up to 256 KiB, never a CRLF
        assert refused, "the server kept reading one unterminated header line"
        sock.settimeout(HANG)
        body = assert_error(answer_on(sock), 431, "headers_too_large")
        assert json.dumps(body).count("8192") == 1
        assert closed_by_server(sock)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("REQUEST_READ_TIMEOUT_SECONDS", "0"), ("REQUEST_HEAD_MAX_BYTES", "1024")],
)
def test_a_bound_out_of_range_is_a_configuration_error(live_server, variable, value):
    # Locally the server starts with the default bounds, and says why at start.
    server = live_server(**{variable: value})
    errors = [r for r in log_records(server.logs()) if r["severity"] == "ERROR"]
    assert [r["message"] for r in errors if variable in r["message"]], server.logs()
