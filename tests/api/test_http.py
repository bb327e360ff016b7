"""Reading a request body and its headers within bounds, called with real Starlette requests.

The HTTP tests send whole bodies through the app; these feed the body in chunks, or cut it
short, as a server does, and count how much of it was read.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest
from starlette.requests import Request

from checkout.api.http import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    check_header_sizes,
    read_body,
    read_json_object,
)
from checkout.errors import ApiError, api_error

CHUNK = 16 * 1024


class Body:
    """An ASGI `receive` that hands out `chunks` one message at a time and counts them."""

    def __init__(self, chunks: list[bytes], *, disconnect: bool = False) -> None:
        self._chunks = list(chunks)
        self._disconnect = disconnect
        self.received = 0

    async def __call__(self) -> dict[str, Any]:
        self.received += 1
        if not self._chunks:
            if self._disconnect:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": b"", "more_body": False}
        chunk = self._chunks.pop(0)
        more = bool(self._chunks) or self._disconnect
        return {"type": "http.request", "body": chunk, "more_body": more}


def request(body: Body, headers: dict[str, str] | None = None) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/checkout/embedded-session",
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in (headers or {}).items()],
    }
    return Request(scope, body)


def within_the_limit() -> ApiError:
    raise AssertionError("a body within the limit was refused")


def refused(coroutine: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        asyncio.run(coroutine)
    return caught.value


def test_a_declared_length_over_the_limit_is_refused_before_a_byte_is_read():
    body = Body([b"{}"])
    headers = {"Content-Length": str(MAX_BODY_BYTES + 1), "Content-Type": "application/json"}
    error = refused(read_json_object(request(body, headers)))
    assert (error.status, error.code) == (413, "payload_too_large")
    assert error.message == f"The request body must be at most {MAX_BODY_BYTES} bytes."
    assert body.received == 0


def test_any_body_read_with_a_declared_length_over_its_limit_is_refused_unread():
    # The webhook reads its body with its own limit, without read_json_object's check first.
    body = Body([b"{}"])
    too_large = functools.partial(api_error, "payload_too_large", limit=100, what="An event")
    error = refused(read_body(request(body, {"Content-Length": "101"}), 100, too_large))
    assert error.message == "An event must be at most 100 bytes."
    assert body.received == 0


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit():
    chunks = [b"x" * CHUNK] * 10  # 160 KiB, with no Content-Length
    body = Body(chunks)
    error = refused(read_json_object(request(body, {"Content-Type": "application/json"})))
    assert (error.status, error.code) == (413, "payload_too_large")
    assert body.received == MAX_BODY_BYTES // CHUNK + 1  # the chunk that passed it, no more


def test_a_chunked_body_of_exactly_the_limit_is_read_whole():
    body = Body([b" " * CHUNK] * (MAX_BODY_BYTES // CHUNK))
    raw = asyncio.run(read_body(request(body), MAX_BODY_BYTES, within_the_limit))
    assert len(raw) == MAX_BODY_BYTES


def test_a_length_that_is_not_a_number_is_left_to_the_server_to_frame():
    body = Body([b'{"imageId": "a"}'])
    headers = {"Content-Length": "sixteen", "Content-Type": "application/json"}
    assert asyncio.run(read_json_object(request(body, headers))) == {"imageId": "a"}


def test_a_body_cut_short_is_400_saying_so():
    body = Body([b'{"imageId": '], disconnect=True)
    error = refused(read_json_object(request(body, {"Content-Type": "application/json"})))
    assert (error.status, error.code) == (400, "invalid_body")
    assert error.message == "The request body was cut short."


def test_a_json_body_that_is_not_an_object_is_400_saying_what_to_send():
    body = Body([b"[1, 2]"])
    error = refused(read_json_object(request(body, {"Content-Type": "application/json"})))
    assert (error.status, error.code) == (400, "invalid_body")
    assert error.message == "The request body must be a JSON object, e.g. {}."


@pytest.mark.parametrize("content_type", ["application/vnd.api+json", "Application/JSON"])
def test_json_media_types_are_accepted(content_type):
    body = Body([b"{}"])
    assert asyncio.run(read_json_object(request(body, {"Content-Type": content_type}))) == {}


def test_a_header_line_of_exactly_the_limit_passes_and_one_byte_more_is_431():
    name = "x-big"
    fits = "v" * (MAX_HEADER_BYTES - len(name) - 2)  # "name: value" as gunicorn counts it
    check_header_sizes(request(Body([]), {name: fits}))

    error = refused(_check_headers({name: fits + "v"}))
    assert (error.status, error.code) == (431, "header_too_large")
    assert error.message == f"Each request header must be at most {MAX_HEADER_BYTES} bytes."
    assert error.detail == f"header='x-big' bytes={len(fits) + 1}"


async def _check_headers(headers: dict[str, str]) -> None:
    check_header_sizes(request(Body([]), headers))
