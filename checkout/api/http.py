"""HTTP plumbing in one place: JSON responses, error bodies, request-body parsing and CORS."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from werkzeug.http import parse_options_header

from checkout.config import Settings
from checkout.errors import ApiError, api_error

MAX_BODY_BYTES = 64 * 1024
# gunicorn's limit for one header line, which uvicorn's parser does not enforce.
MAX_HEADER_BYTES = 8190
_JSON_DUMP = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# Sent on every response: nothing here may be cached by a browser or proxy, and JSON is JSON.
BASE_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))

PREFLIGHT_ALLOW_HEADERS = "Content-Type, Idempotency-Key"
PREFLIGHT_MAX_AGE = "3600"


def json_response(status: int, payload: Mapping[str, Any]) -> Response:
    return Response(_JSON_DUMP(payload).encode(), status_code=status, media_type="application/json")


def error_response(error: ApiError, request_id: str) -> Response:
    response = json_response(
        error.status, {"error": error.message, "code": error.code, "request_id": request_id}
    )
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body is {}. Raises ApiError 413/415/400."""
    length = content_length(request)
    if length is not None and length > MAX_BODY_BYTES:
        raise _too_large()
    mimetype = mimetype_of(request)
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise api_error("unsupported_media_type")
    raw = await read_body(request, MAX_BODY_BYTES, _too_large)
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise api_error("invalid_json") from None
    if not isinstance(body, dict):
        raise api_error("invalid_body", problem="must be a JSON object, e.g. {}")
    return body


async def read_body(request: Request, limit: int, too_large: Callable[[], ApiError]) -> bytes:
    """The raw body, read as it arrives and never more than `limit` + 1 bytes of it (a declared
    Content-Length over the limit is refused before a byte is read)."""
    length = content_length(request)
    if length is not None and length > limit:
        raise too_large()
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large()
            chunks.append(chunk)
    except ClientDisconnect:
        # Nobody is left to read the answer; the log line still says what happened.
        raise api_error("invalid_body", problem="was cut short") from None
    return b"".join(chunks)


def check_header_sizes(request: Request) -> None:
    """Refuse any header line longer than MAX_HEADER_BYTES (431), before anything reads them."""
    for name, value in request.scope["headers"]:
        if len(name) + len(value) + 2 > MAX_HEADER_BYTES:
            detail = f"header={name[:40].decode('latin-1')!r} bytes={len(value)}"
            raise api_error("header_too_large", detail, limit=MAX_HEADER_BYTES)


def check_canonical_path(request: Request) -> None:
    """Refuse a path not written plainly (404), before routing: a percent-escape, `//`, `.`, `..`;
    so what is routed is what an edge rule matched (docs/abuse.md)."""
    raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode("utf-8")
    segments = (raw.removesuffix(b"/") if raw != b"/" else b"").split(b"/")[1:]  # one trailing /
    if b"%" in raw or not raw.startswith(b"/") or any(s in (b"", b".", b"..") for s in segments):
        raise api_error("non_canonical_path", f"raw_path={raw[:200].decode('latin-1')!r}")


def content_length(request: Request) -> int | None:
    """The declared Content-Length, or None (absent, or not a number: the server frames it)."""
    value = request.headers.get("content-length")
    if value is None or not value.isdigit():
        return None
    return int(value)


def mimetype_of(request: Request) -> str:
    """The Content-Type without parameters, lower-cased ("" when absent)."""
    return parse_options_header(request.headers.get("content-type"))[0].lower()


def _too_large() -> ApiError:
    return api_error("payload_too_large", what="The request body", limit=MAX_BODY_BYTES)


class CorsPolicy:
    """Exact-origin allowlist. Only browsers send Origin; requests without it are not CORS."""

    def __init__(self, allowed_origins: Iterable[str], allow_any: bool) -> None:
        self._allowed = frozenset(allowed_origins)
        self._allow_any = allow_any

    @classmethod
    def from_settings(cls, settings: Settings) -> CorsPolicy:
        return cls(settings.allowed_origins, settings.allow_any_origin)

    def allows(self, origin: str) -> bool:
        return self._allow_any or origin in self._allowed

    def refuse(self, origin: str) -> ApiError:
        return api_error("origin_not_allowed", f"origin={origin[:200]!r}")

    @staticmethod
    def decorate(response: Response, origin: str | None) -> None:
        """Mark a response for an allowed origin (or none): echo it and vary on it."""
        response.headers["Vary"] = "Origin"
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin

    @staticmethod
    def preflight(methods: Iterable[str]) -> Response:
        response = Response(status_code=204)
        response.headers["Access-Control-Allow-Methods"] = ", ".join(methods)
        response.headers["Access-Control-Allow-Headers"] = PREFLIGHT_ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        return response
