"""The HTTP transport under the Stripe client: keep-alive HTTP/1.1 connections on asyncio streams.

Pooled per origin (reuse: docs/operations.md); why not aiohttp or httpx: docs/performance.md."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import httptools
import stripe

from checkout.errors import CheckoutError

# Idle connections kept per origin: above Cloud Run's --concurrency, so that a burst finds them.
_MAX_IDLE = 256
# How long a connection may sit idle and still be reused (aiohttp's default): well inside the
# keep-alive timeouts servers use, so that our request rarely meets the server closing it.
MAX_IDLE_SECONDS = 15.0
_READ_SIZE = 65536


class ResponseHeaders(dict[str, str]):
    """Response headers, looked up in any case (the SDK asks for "Request-Id" and "request-id")."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


class _StaleConnection(CheckoutError):
    """A reused keep-alive connection was closed by the other end before it read our request."""


class _Answer:
    """httptools' callbacks for one response."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers = ResponseHeaders()
        self.chunks: list[bytes] = []
        self.complete = False
        self.keep_alive = False
        self.status = 0
        self.extra = False  # bytes followed the answer: they answer nothing we asked

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if not self.complete:
                raise
            self.extra = True  # whatever followed our answer is not HTTP

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.complete:
            return
        # Asked here: once the message is complete, the parser resets and no longer knows.
        self.keep_alive = self.parser.should_keep_alive()
        self.status = self.parser.get_status_code()
        self.complete = True


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = False
        self.idle_since = 0.0

    def usable(self, now: float, max_idle: float) -> bool:
        """Whether our next request may go out on this idle connection."""
        # The other end closing it shows up as EOF; a server that writes a 408 on its idle
        # timeout leaves bytes we never asked for. Past the idle bound, the close may be on its way.
        return (
            not self.reader.at_eof()
            and not self.writer.is_closing()
            and not self.reader._buffer  # type: ignore[attr-defined]  # CPython's unread bytes
            and now - self.idle_since < max_idle
        )

    async def exchange(self, request: bytes) -> tuple[bytes, int, ResponseHeaders, bool]:
        """Send one request; the body, status, headers, and whether the connection may be reused."""
        self.writer.write(request)
        await self.writer.drain()
        answer = _Answer()
        received = False
        while not answer.complete:
            data = await self.reader.read(_READ_SIZE)
            if not data:
                if self.reused and not received:
                    raise _StaleConnection
                raise ConnectionResetError("the connection closed before the response ended")
            received = True
            answer.feed(data)
        if self.reused and answer.status == 408:
            # The server's idle timeout, not an answer: it gave up on the connection before it
            # read our request (RFC 9110, 15.5.9).
            raise _StaleConnection
        reusable = answer.keep_alive and not answer.extra and not self.reader.at_eof()
        return b"".join(answer.chunks), answer.status, answer.headers, reusable

    def close(self) -> None:
        self.writer.close()


class StripeTransport(stripe.HTTPClient):
    """stripe.HTTPClient for the SDK's async methods, on pooled keep-alive connections."""

    name = "asyncio-httptools"

    def __init__(
        self,
        api_base: str,
        timeout: float,
        *,
        max_idle_seconds: float = MAX_IDLE_SECONDS,
        ca_file: str | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`ca_file`: the CAs to trust; by default the SDK's bundle (tests bring their own CA).
        `clock`: monotonic seconds that time idle connections; by default the loop's."""
        super().__init__(proxy=proxy_for(api_base))
        self._loop = asyncio.get_running_loop()
        self._clock = clock or self._loop.time
        self._timeout = timeout
        self._max_idle = max_idle_seconds
        self._ca_file = ca_file
        self._tls: ssl.SSLContext | None = None
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._closed = False

    def on_running_loop(self) -> bool:
        return not self._closed and asyncio.get_running_loop() is self._loop

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str] | None, post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._request(method, url, headers or {}, post_data)
        except ssl.SSLCertVerificationError as error:
            raise stripe.APIConnectionError(
                f"Could not verify Stripe's TLS certificate ({type(error).__name__})",
                should_retry=False,
            ) from error
        except (TimeoutError, OSError, httptools.HttpParserError, ValueError) as error:
            # Refused, reset, timed out, or not HTTP: the SDK retries these.
            raise stripe.APIConnectionError(
                f"Unexpected error communicating with Stripe ({type(error).__name__})",
                should_retry=True,
            ) from error

    async def _request(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any
    ) -> tuple[bytes, int, Mapping[str, str]]:
        method = method.upper()  # the SDK passes "post", "get"
        parts = urlsplit(url)
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        origin = (parts.scheme, parts.hostname or "", port)
        proxy = self._proxy["https" if https else "http"] if self._proxy else None
        body = post_data.encode() if isinstance(post_data, str) else (post_data or b"")
        target = url if proxy and not https else (parts.path or "/") + _query(parts.query)
        lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        if proxy and not https:
            lines += _proxy_authorization(proxy)
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

        while True:
            connection = await self._connection(origin, proxy)
            try:
                content, status, response_headers, reusable = await connection.exchange(request)
            except _StaleConnection:
                # Stripe's idle timeout raced our send, and our request was not read. Sending
                # again is safe anyway: the SDK puts an idempotency key on every POST, and GETs
                # change nothing.
                connection.close()
                continue
            except BaseException:
                connection.close()
                raise
            self._release(origin, connection, reusable)
            return content, status, response_headers

    async def _connection(self, origin: tuple[str, str, int], proxy: str | None) -> _Connection:
        idle = self._idle.get(origin)
        now = self._clock()
        while idle:
            connection = idle.pop()
            if connection.usable(now, self._max_idle):
                connection.reused = True
                return connection
            connection.close()
        scheme, host, port = origin
        tls = self._tls_context() if scheme == "https" else None
        if proxy is None:
            reader, writer = await asyncio.open_connection(host, port, ssl=tls)
            return _Connection(reader, writer)
        proxy_parts = urlsplit(proxy)
        reader, writer = await asyncio.open_connection(proxy_parts.hostname, proxy_parts.port or 80)
        connection = _Connection(reader, writer)
        if tls is not None:
            try:
                await _tunnel(connection, host, port, proxy, tls)
            except BaseException:
                connection.close()
                raise
        return connection

    def _release(
        self, origin: tuple[str, str, int], connection: _Connection, reusable: bool
    ) -> None:
        idle = self._idle.setdefault(origin, [])
        if reusable and not self._closed and len(idle) < _MAX_IDLE:
            connection.idle_since = self._clock()
            idle.append(connection)
        else:
            connection.close()

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            # The CA bundle the SDK ships and trusts, loaded on the first TLS connection only.
            self._tls = ssl.create_default_context(cafile=self._ca_file or stripe.ca_bundle_path)
        return self._tls

    def sleep_async(self, secs: float) -> Awaitable[None]:
        return asyncio.sleep(secs)

    async def close_async(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    def close_soon(self) -> None:
        """Close the pool on its loop, from any thread; nothing to do once that loop is gone."""
        self._closed = True
        if self._loop.is_closed():
            return

        def close() -> None:
            task = self._loop.create_task(self.close_async())
            _closing.add(task)  # the loop holds tasks weakly: keep it until it is done
            task.add_done_callback(_closing.discard)

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self._loop.call_soon_threadsafe(close)

    # The SDK's synchronous and streaming entry points (any arguments: none is used here).

    def request(self, *args: Any, **kwargs: Any) -> tuple[str, int, Mapping[str, str]]:
        raise NotImplementedError("this service calls Stripe with the SDK's async methods only")

    def request_stream(self, *args: Any, **kwargs: Any) -> tuple[Any, int, Mapping[str, str]]:
        raise NotImplementedError("this service makes no streaming calls to Stripe")

    async def request_stream_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[AsyncIterable[bytes], int, Mapping[str, str]]:
        raise NotImplementedError("this service makes no streaming calls to Stripe")


_closing: set[asyncio.Task[None]] = set()


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url` (http(s)_proxy, all_proxy, no_proxy), if any."""
    if not any(name.lower().endswith("_proxy") for name in os.environ):
        return None  # as on Cloud Run: no need to load urllib.request (a few ms of a cold start)
    import urllib.request  # noqa: PLC0415

    proxies = urllib.request.getproxies_environment()
    parts = urlsplit(url)
    # proxy_bypass_environment is CPython's (urllib.request), but typeshed does not declare it.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if not proxies or bypass(parts.hostname or "", proxies):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


async def _tunnel(
    connection: _Connection, host: str, port: int, proxy: str, tls: ssl.SSLContext
) -> None:
    """CONNECT through an HTTP proxy, then TLS to Stripe inside the tunnel."""
    lines = [f"CONNECT {host}:{port} HTTP/1.1", f"Host: {host}:{port}"]
    lines += _proxy_authorization(proxy)
    connection.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await connection.writer.drain()
    head = await connection.reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/1.") else b""
    if status != b"200":
        raise ConnectionRefusedError(
            f"the proxy refused the tunnel ({status.decode(errors='replace')})"
        )
    await connection.writer.start_tls(tls, server_hostname=host)


def _proxy_authorization(proxy: str) -> list[str]:
    parts = urlsplit(proxy)
    if parts.username is None:
        return []
    user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return [f"Proxy-Authorization: Basic {base64.b64encode(user.encode()).decode()}"]


def _query(query: str) -> str:
    return f"?{query}" if query else ""
