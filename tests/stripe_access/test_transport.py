"""The Stripe transport against small local servers: framing, keep-alive, stale connections,
timeouts and proxies. The HTTP tests (test_gateway.py, test_faults.py) cover the rest
against the Stripe emulator."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import stripe

from checkout.stripe_access.transport import ResponseHeaders, StripeTransport
from tests.support import OK, answer, read_request

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Server:
    """A local HTTP server whose answers each test writes; counts connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        finally:
            writer.close()


def keep_answering(requests: list[bytes], body: bytes = b"{}") -> Handler:
    async def handler(reader, writer, _connection):
        while request := await read_request(reader):
            requests.append(request)
            writer.write(answer(body))
            await writer.drain()

    return handler


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def test_headers_are_found_in_any_case():
    headers = ResponseHeaders({"request-id": "req_1"})
    assert headers["Request-Id"] == headers.get("REQUEST-ID") == "req_1"
    assert "Request-Id" in headers and "Stripe-Should-Retry" not in headers
    assert headers.get("Stripe-Notice") is None


def test_a_post_is_framed_and_its_answer_read():
    requests: list[bytes] = []

    async def test() -> None:
        async with Server(keep_answering(requests, b'{"id": "cs_test_1"}')) as server:
            transport = StripeTransport(server.url, 5)
            body, status, headers = await transport.request_async(
                "post", f"{server.url}/v1/checkout/sessions", {"X-Test": "1"}, "a=1&b=2"
            )
            await transport.close_async()
        assert (body, status, headers["Request-Id"]) == (b'{"id": "cs_test_1"}', 200, "req_1")
        [request] = requests
        assert request.startswith(b"POST /v1/checkout/sessions HTTP/1.1\r\n")
        assert b"\r\nX-Test: 1\r\n" in request and b"\r\nContent-Length: 7\r\n" in request
        assert request.endswith(b"\r\n\r\na=1&b=2")

    run(test)


def test_connections_are_kept_alive_and_reused():
    requests: list[bytes] = []

    async def test() -> None:
        async with Server(keep_answering(requests)) as server:
            transport = StripeTransport(server.url, 5)
            for _ in range(5):
                assert (await transport.request_async("get", server.url + "/v1/x", {}))[1] == 200
            await transport.close_async()
            assert server.connections == 1
        assert len(requests) == 5

    run(test)


def test_a_chunked_answer_is_read_whole():
    async def handler(reader, writer, _connection):
        while await read_request(reader):
            writer.write(
                OK + b'Transfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n5\r\n": 1}\r\n0\r\n\r\n'
            )
            await writer.drain()

    async def test() -> None:
        async with Server(handler) as server:
            transport = StripeTransport(server.url, 5)
            for _ in range(2):
                body, status, _ = await transport.request_async("get", server.url + "/v1/x", {})
                assert (body, status) == (b'{"a": 1}', 200)
            await transport.close_async()
            assert server.connections == 1

    run(test)


def test_connection_close_is_honoured():
    async def handler(reader, writer, _connection):
        await read_request(reader)
        writer.write(answer(b"{}", b"Connection: close\r\n"))
        await writer.drain()

    async def test() -> None:
        async with Server(handler) as server:
            transport = StripeTransport(server.url, 5)
            for _ in range(3):
                assert (await transport.request_async("get", server.url + "/v1/x", {}))[1] == 200
            await transport.close_async()
            assert server.connections == 3

    run(test)


def test_a_pooled_connection_the_server_dropped_is_replaced_without_an_error():
    # The server answers once per connection, then drops it as soon as the next request arrives:
    # the race of an idle timeout with our send. The request must go out again, on a new one.
    async def handler(reader, writer, _connection):
        await read_request(reader)
        writer.write(answer(b"{}"))
        await writer.drain()
        await read_request(reader)  # and close without answering

    async def test() -> None:
        async with Server(handler) as server:
            transport = StripeTransport(server.url, 5)
            for _ in range(3):
                assert (await transport.request_async("get", server.url + "/v1/x", {}))[1] == 200
            await transport.close_async()
            assert server.connections == 3

    run(test)


TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


async def until_an_idle_connection_holds_unread_bytes(transport: StripeTransport) -> None:
    """Until the loop has read, on a pooled idle connection, bytes the server sent to it.

    The condition the transport itself checks; polled with a generous bound (a hang, not a time).
    """
    async with asyncio.timeout(30):
        while not any(
            connection.reader._buffer  # type: ignore[attr-defined]  # CPython's unread bytes
            for idle in transport._idle.values()
            for connection in idle
        ):
            await asyncio.sleep(0.001)


def test_a_408_written_on_the_servers_idle_timeout_is_never_the_next_answer():
    # Like nginx or Stripe's edge when a keep-alive connection sits idle: it writes 408 and closes.
    # That 408 answers no request of ours; the next request must reach a server that answers it.
    timed_out = asyncio.Event()

    async def handler(reader, writer, connection):
        if connection == 1:
            await read_request(reader)
            writer.write(answer(b'{"n": 1}'))
            writer.write(TIMED_OUT)
            await writer.drain()
            timed_out.set()
            return
        while await read_request(reader):
            writer.write(answer(b'{"n": 2}'))
            await writer.drain()

    async def test() -> None:
        async with Server(handler) as server:
            transport = StripeTransport(server.url, 5)
            first = await transport.request_async("get", server.url + "/v1/x", {})
            await timed_out.wait()
            second = await transport.request_async("get", server.url + "/v1/x", {})
            await transport.close_async()
            assert [first[:2], second[:2]] == [(b'{"n": 1}', 200), (b'{"n": 2}', 200)]
            assert server.connections == 2

    run(test)


def test_a_408_that_races_the_next_request_is_answered_on_a_new_connection():
    # The 408 is written only once our next request has arrived: that request was not read.
    async def handler(reader, writer, connection):
        await read_request(reader)
        writer.write(answer(b"{}"))
        await writer.drain()
        if connection == 1:
            await read_request(reader)
            writer.write(TIMED_OUT)
            await writer.drain()
            return
        while await read_request(reader):
            writer.write(answer(b"{}"))
            await writer.drain()

    async def test() -> None:
        async with Server(handler) as server:
            transport = StripeTransport(server.url, 5)
            for _ in range(2):
                assert (await transport.request_async("get", server.url + "/v1/x", {}))[1] == 200
            await transport.close_async()
            assert server.connections == 2

    run(test)


def test_a_pooled_connection_with_unread_bytes_is_not_reused():
    # Bytes that arrive while a connection is idle answer nothing we asked: it is not reused.
    answered, sent = asyncio.Event(), asyncio.Event()

    async def handler(reader, writer, connection):
        await read_request(reader)
        writer.write(answer(b'{"n": %d}' % connection))
        await writer.drain()
        if connection == 1:
            await answered.wait()  # so that these bytes arrive after the answer was read
            writer.write(answer(b'"stale"'))
            await writer.drain()
            sent.set()
        await read_request(reader)

    async def test() -> None:
        async with Server(handler) as server:
            transport = StripeTransport(server.url, 5)
            first = await transport.request_async("get", server.url + "/v1/x", {})
            answered.set()
            await sent.wait()
            await until_an_idle_connection_holds_unread_bytes(transport)
            second = await transport.request_async("get", server.url + "/v1/x", {})
            await transport.close_async()
            assert [first[0], second[0]] == [b'{"n": 1}', b'{"n": 2}']

    run(test)


def test_bytes_that_follow_the_answer_in_one_read_make_the_connection_unusable():
    # The server said more than we asked (here its 408, with the answer): it no longer serves
    # this connection, and a request sent on it would wait for an answer that never comes.
    async def handler(reader, writer, connection):
        await read_request(reader)
        writer.write(answer(b'{"n": %d}' % connection) + (TIMED_OUT if connection == 1 else b""))
        await writer.drain()
        await read_request(reader)
        await reader.read()  # never answering, until we hang up

    async def test() -> None:
        async with Server(handler) as server:
            transport = StripeTransport(server.url, 2)
            first = await transport.request_async("get", server.url + "/v1/x", {})
            second = await transport.request_async("get", server.url + "/v1/x", {})
            await transport.close_async()
            assert [first[0], second[0]] == [b'{"n": 1}', b'{"n": 2}']

    run(test)


class Clock:
    """Monotonic seconds that move only when the test moves them."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_connection_is_reused_inside_the_idle_bound_and_not_past_it():
    requests: list[bytes] = []
    clock = Clock()

    async def test() -> None:
        async with Server(keep_answering(requests)) as server:
            transport = StripeTransport(server.url, 5, max_idle_seconds=15, clock=clock)
            assert (await transport.request_async("get", server.url + "/v1/x", {}))[1] == 200
            clock.now += 14  # idle 14 s of the 15 allowed: reused
            assert (await transport.request_async("get", server.url + "/v1/x", {}))[1] == 200
            assert server.connections == 1
            clock.now += 15  # idle the whole bound: a new connection
            assert (await transport.request_async("get", server.url + "/v1/x", {}))[1] == 200
            await transport.close_async()
            assert server.connections == 2
        assert len(requests) == 3

    run(test)


def test_an_answer_cut_short_is_a_retryable_connection_error():
    async def handler(reader, writer, _connection):
        await read_request(reader)
        writer.write(OK + b'Content-Length: 100\r\n\r\n{"partial')
        await writer.drain()

    async def test() -> None:
        async with Server(handler) as server:
            transport = StripeTransport(server.url, 5)
            with pytest.raises(stripe.APIConnectionError) as caught:
                await transport.request_async("get", server.url + "/v1/x", {})
            await transport.close_async()
        assert caught.value.should_retry is True

    run(test)


def test_a_silent_server_times_out_as_a_connection_error():
    async def handler(reader, writer, _connection):
        await read_request(reader)
        await reader.read()  # silent until the client hangs up

    async def test() -> None:
        async with Server(handler) as server:
            transport = StripeTransport(server.url, 0.2)
            with pytest.raises(stripe.APIConnectionError, match="TimeoutError"):
                await transport.request_async("get", server.url + "/v1/x", {})
            await transport.close_async()

    run(test)


def test_not_http_is_a_connection_error():
    async def handler(reader, writer, _connection):
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()

    async def test() -> None:
        async with Server(handler) as server:
            transport = StripeTransport(server.url, 5)
            with pytest.raises(stripe.APIConnectionError):
                await transport.request_async("get", server.url + "/v1/x", {})
            await transport.close_async()

    run(test)


def test_plain_http_goes_through_the_proxy_with_its_credentials(monkeypatch):
    requests: list[bytes] = []

    async def test() -> None:
        async with Server(keep_answering(requests)) as proxy:
            address = proxy.url.removeprefix("http://")
            monkeypatch.setenv("http_proxy", f"http://user:p%40ss@{address}")
            monkeypatch.delenv("no_proxy", raising=False)
            monkeypatch.delenv("NO_PROXY", raising=False)
            target = "http://stripe.invalid:12111"
            transport = StripeTransport(target, 5)
            assert (await transport.request_async("get", target + "/v1/x?a=1", {}))[1] == 200
            await transport.close_async()
        [request] = requests
        assert request.startswith(b"GET http://stripe.invalid:12111/v1/x?a=1 HTTP/1.1\r\n")
        assert b"\r\nHost: stripe.invalid:12111\r\n" in request
        assert b"\r\nProxy-Authorization: Basic dXNlcjpwQHNz\r\n" in request  # user:p@ss

    run(test)


def test_https_through_a_proxy_asks_for_a_tunnel_first(monkeypatch):
    requests: list[bytes] = []

    async def refusing_proxy(reader, writer, _connection):
        requests.append(await read_request(reader))
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async def test() -> None:
        async with Server(refusing_proxy) as proxy:
            monkeypatch.setenv("https_proxy", proxy.url)
            monkeypatch.delenv("no_proxy", raising=False)
            monkeypatch.delenv("NO_PROXY", raising=False)
            transport = StripeTransport("https://api.stripe.invalid", 5)
            with pytest.raises(stripe.APIConnectionError, match="ConnectionRefusedError"):
                await transport.request_async("get", "https://api.stripe.invalid/v1/x", {})
            await transport.close_async()
        [request] = requests
        assert request.startswith(b"CONNECT api.stripe.invalid:443 HTTP/1.1\r\n")

    run(test)
