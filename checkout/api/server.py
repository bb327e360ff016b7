"""The HTTP server under the function: bounded connections, and JSON for what it refuses.

uvicorn's httptools protocol, a deadline per request, a cap on its head: docs/abuse.md."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from checkout.api.http import BASE_HEADERS, error_response
from checkout.config import ConfigError, ServerLimits, server_limits
from checkout.errors import ApiError, CheckoutError, api_error
from checkout.logs import new_request_id

request_log = logging.getLogger("checkout.request")

# How long a refused request's remaining bytes are read and dropped before the socket is closed.
_LINGER_SECONDS = 2.0


class _Refused(CheckoutError):
    """Raised in a parser callback to stop parsing; the refusal is already chosen."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, bounded: no connection is held by a client that sends slowly,
    or sends nothing, and no request head grows past `limits.max_head_bytes` (docs/abuse.md)."""

    limits: ClassVar[ServerLimits] = ServerLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._reading = False  # a byte of the next request has arrived, and not all of it
        self._head_done = False  # its request line and headers are complete
        self._head_size = 0  # bytes of its head parsed so far
        self._unparsed = 0  # bytes received while its head was incomplete
        self._refusal: ApiError | None = None
        self._refused = False
        self._wait_for_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the rest of a refused request, read only so that the answer is not lost
        if not self._reading:
            self._reading = True
            self._set_deadline(self.limits.read_seconds, self._read_too_slow)
        counting = not self._head_done
        super().data_received(data)
        if counting and self._reading and not self._head_done:
            # A line that never ends reaches no callback: count what it holds in the parser.
            self._unparsed += len(data)
            if self._unparsed > self.limits.max_head_bytes and not self.transport.is_closing():
                self._refuse(api_error("headers_too_large", limit=self.limits.max_head_bytes))

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_done, self._head_size, self._unparsed = False, 0, 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_done = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        answered = self.cycle is not None and self.cycle.response_complete
        super().on_message_complete()
        if answered:  # the rest of a body the function answered without reading
            self._wait_for_request()
        else:  # received whole: the function's own time bounds apply from here
            self._reading = False
            self._cancel_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.more_body:
            return  # its body is still arriving, under the deadline it started with
        if not self.pipeline:
            self._wait_for_request()

    def send_400_response(self, msg: str) -> None:
        """What the parser refuses (or a callback of ours stopped), as the contract's JSON."""
        self._refuse(self._refusal or api_error("invalid_http"))

    # -- deadlines and refusals -------------------------------------------------------------

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.limits.max_head_bytes:
            self._refusal = api_error("headers_too_large", limit=self.limits.max_head_bytes)
            raise _Refused

    def _wait_for_request(self) -> None:
        self._reading = False
        self._set_deadline(self.timeout_keep_alive, self._idle)

    def _set_deadline(self, seconds: float, then: Any) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(seconds, then)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _idle(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _read_too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._head_done:
            # The function is reading the body: closing ends its read (as a client that went
            # away), and it answers nobody. Writing here could cross its own answer.
            self.transport.close()
        else:
            self._refuse(api_error("request_timeout", seconds=self.limits.read_seconds))

    def _refuse(self, error: ApiError) -> None:
        """Answer `error` as JSON with the headers every answer carries, log it, and close."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # an answer to an earlier, pipelined request is being written
            return
        request_id = new_request_id()
        response = error_response(error, request_id)
        for name, value in BASE_HEADERS:
            response.headers[name] = value
        response.headers["X-Request-Id"] = request_id
        response.headers["Connection"] = "close"
        content: list[bytes] = [STATUS_LINE[error.status]]
        for key, raw in [*self.server_state.default_headers, *response.raw_headers]:
            content += [key, b": ", raw, b"\r\n"]
        content += [b"\r\n", bytes(response.body)]
        fields = {
            "request_id": request_id,
            "httpRequest": {"status": error.status},
            "code": error.code,
        }
        request_log.warning("refused by the server: %s", error.code, extra={"fields": fields})
        self.transport.write(b"".join(content))
        # Closing a socket with unread bytes sends a reset, which can destroy the answer in the
        # client's buffer before it is read: end our side, read and drop what still comes for a
        # moment (as nginx's lingering close does), then close.
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._set_deadline(_LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()


def protocol() -> type[BoundedHttpToolsProtocol]:
    """The protocol class for the worker, bounded by the environment's settings, else the defaults
    (the start checks report a bad setting)."""
    try:
        limits = server_limits()
    except ConfigError:
        limits = ServerLimits()
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})
