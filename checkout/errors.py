"""Every error the API can answer: its code, HTTP status and sentence, and one constructor per code.

`api.http.error_response` turns one into JSON, in one place; openapi.yaml documents each code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Seconds a client (or Stripe) should wait before retrying, per cause.
BUSY_RETRY_AFTER = "2"
SECRET_RETRY_AFTER = "5"  # noqa: S105  # seconds, not a secret
LEDGER_RETRY_AFTER = "10"  # Stripe keeps its own schedule; other clients may use it


class ApiError(Exception):
    """An answer for the client: HTTP status, machine code and a human sentence.

    `detail` goes to the log only; it never reaches the response body.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.detail = detail


@dataclass(frozen=True)
class ErrorCode:
    """One code the API answers: its status, and its sentence (`{name}` fields filled per call)."""

    code: str
    status: int
    message: str
    retry_after: str | None = None

    def error(
        self,
        *,
        detail: str | None = None,
        headers: Mapping[str, str] | None = None,
        **fields: object,
    ) -> ApiError:
        sent = {"Retry-After": self.retry_after} if self.retry_after else {}
        sent.update(headers or {})
        message = self.message.format(**fields)
        return ApiError(self.status, self.code, message, headers=sent, detail=detail)


CODES: dict[str, ErrorCode] = {}


def _code(code: str, status: int, message: str, retry_after: str | None = None) -> ErrorCode:
    CODES[code] = ErrorCode(code, status, message, retry_after)
    return CODES[code]


# --- The request ----------------------------------------------------------------------------
_NOT_FOUND = _code("not_found", 404, "There is no endpoint at this path.")
_NON_CANONICAL_PATH = _code(
    "non_canonical_path",
    404,
    "There is no endpoint at this path as written: write it without percent-encoding, empty (//) "
    "or dot (. and ..) segments.",
)
_METHOD_NOT_ALLOWED = _code(
    "method_not_allowed", 405, "This path does not accept {method}; use {allowed}."
)
_HEADER_TOO_LARGE = _code(
    "header_too_large", 431, "Each request header must be at most {limit} bytes."
)
_HEADERS_TOO_LARGE = _code(
    "headers_too_large",
    431,
    "The request line and headers must be at most {limit} bytes in all.",
)
_REQUEST_TIMEOUT = _code(
    "request_timeout",
    408,
    "The request did not arrive whole within {seconds:g} s of its first byte; send it again.",
)
_INVALID_HTTP = _code("invalid_http", 400, "The request is not valid HTTP/1.1.")
_PAYLOAD_TOO_LARGE = _code("payload_too_large", 413, "{what} must be at most {limit} bytes.")
_UNSUPPORTED_MEDIA_TYPE = _code(
    "unsupported_media_type",
    415,
    "Send the request body as JSON with Content-Type: application/json.",
)
_INVALID_JSON = _code("invalid_json", 400, "The request body is not valid JSON.")
_INVALID_BODY = _code("invalid_body", 400, "The request body {problem}.")
_INVALID_IMAGE_ID = _code("invalid_image_id", 400, "imageId must {rule}.")
_INVALID_IDEMPOTENCY_KEY = _code(
    "invalid_idempotency_key",
    400,
    "Idempotency-Key must be 1 to {limit} printable ASCII characters.",
)
_INVALID_SESSION_ID = _code(
    "invalid_session_id",
    400,
    "Pass exactly one session_id query parameter, a Checkout Session id (cs_test_… or cs_live_…).",
)
_ORIGIN_NOT_ALLOWED = _code(
    "origin_not_allowed", 403, "This origin is not allowed to call the checkout API."
)
_RATE_LIMITED = _code(
    "rate_limited", 429, "Too many requests from this address. Please retry shortly."
)

# --- Stripe and our configuration -----------------------------------------------------------
_SESSION_NOT_FOUND = _code("session_not_found", 404, "No checkout session has that id.")
_IDEMPOTENCY_CONFLICT = _code(
    "idempotency_conflict",
    409,
    "This Idempotency-Key was already used with a different request body.",
)
_PAYMENT_PROVIDER_BUSY = _code(
    "payment_provider_busy",
    503,
    "The payment provider is busy. Please retry shortly.",
    BUSY_RETRY_AFTER,
)
_PAYMENT_PROVIDER_UNREACHABLE = _code(
    "payment_provider_unreachable",
    504,
    "The payment provider did not answer in time. Please retry.",
)
_PAYMENT_PROVIDER_ERROR = _code(
    "payment_provider_error", 502, "The payment provider returned an error. Please retry."
)
_PAYMENT_PROVIDER_UNAVAILABLE = _code(
    "payment_provider_unavailable",
    503,
    "Payments are temporarily unavailable. Please retry shortly.",
    SECRET_RETRY_AFTER,
)
_PAYMENT_CONFIGURATION_ERROR = _code(
    "payment_configuration_error", 500, "Payments are not configured correctly on the server."
)
_INTERNAL_ERROR = _code("internal_error", 500, "Something went wrong on our side. Please retry.")

# --- The webhook ----------------------------------------------------------------------------
_INVALID_SIGNATURE = _code(
    "invalid_signature", 400, "The request is not a correctly signed Stripe event."
)
_WEBHOOK_NOT_CONFIGURED = _code(
    "webhook_not_configured", 500, "Webhooks are not configured on this server."
)
_WEBHOOK_SECRET_UNAVAILABLE = _code(
    "webhook_secret_unavailable",
    503,
    "The webhook signing secret is temporarily unavailable. Retry later.",
    SECRET_RETRY_AFTER,
)
_LEDGER_UNAVAILABLE = _code(
    "ledger_unavailable",
    503,
    "Orders cannot be recorded right now; retry the event later.",
    LEDGER_RETRY_AFTER,
)
_ORDER_EVENTS_UNAVAILABLE = _code(
    "order_events_unavailable",
    503,
    "The order could not be handed on for delivery just now; retry the event later.",
    LEDGER_RETRY_AFTER,
)
_EVENT_IN_PROGRESS = _code(
    "event_in_progress",
    503,
    "This event is still being handled by another delivery; retry it later.",
    LEDGER_RETRY_AFTER,
)


def not_found() -> ApiError:
    return _NOT_FOUND.error()


def non_canonical_path(detail: str) -> ApiError:
    return _NON_CANONICAL_PATH.error(detail=detail)


def method_not_allowed(method: str, allowed: str) -> ApiError:
    return _METHOD_NOT_ALLOWED.error(
        headers={"Allow": allowed}, method=method[:20], allowed=allowed
    )


def header_too_large(limit: int, detail: str) -> ApiError:
    return _HEADER_TOO_LARGE.error(detail=detail, limit=limit)


def headers_too_large(limit: int) -> ApiError:
    return _HEADERS_TOO_LARGE.error(limit=limit)


def request_timeout(seconds: float) -> ApiError:
    return _REQUEST_TIMEOUT.error(seconds=seconds)


def invalid_http() -> ApiError:
    return _INVALID_HTTP.error()


def payload_too_large(limit: int, what: str = "The request body") -> ApiError:
    return _PAYLOAD_TOO_LARGE.error(what=what, limit=limit)


def unsupported_media_type() -> ApiError:
    return _UNSUPPORTED_MEDIA_TYPE.error()


def invalid_json() -> ApiError:
    return _INVALID_JSON.error()


def invalid_body(problem: str) -> ApiError:
    """`problem` completes "The request body …", e.g. "was cut short"."""
    return _INVALID_BODY.error(problem=problem)


def invalid_image_id(rule: str) -> ApiError:
    """`rule` completes "imageId must …"."""
    return _INVALID_IMAGE_ID.error(rule=rule)


def invalid_idempotency_key(limit: int) -> ApiError:
    return _INVALID_IDEMPOTENCY_KEY.error(limit=limit)


def invalid_session_id() -> ApiError:
    return _INVALID_SESSION_ID.error()


def origin_not_allowed(origin: str) -> ApiError:
    return _ORIGIN_NOT_ALLOWED.error(detail=f"origin={origin[:200]!r}")


def rate_limited(retry_after_seconds: int, detail: str) -> ApiError:
    return _RATE_LIMITED.error(headers={"Retry-After": str(retry_after_seconds)}, detail=detail)


def session_not_found(detail: str) -> ApiError:
    return _SESSION_NOT_FOUND.error(detail=detail)


def idempotency_conflict(detail: str) -> ApiError:
    return _IDEMPOTENCY_CONFLICT.error(detail=detail)


def payment_provider_busy(detail: str) -> ApiError:
    return _PAYMENT_PROVIDER_BUSY.error(detail=detail)


def payment_provider_unreachable(detail: str) -> ApiError:
    return _PAYMENT_PROVIDER_UNREACHABLE.error(detail=detail)


def payment_provider_error(detail: str) -> ApiError:
    return _PAYMENT_PROVIDER_ERROR.error(detail=detail)


def payment_provider_unavailable(detail: str) -> ApiError:
    return _PAYMENT_PROVIDER_UNAVAILABLE.error(detail=detail)


def payment_configuration_error(detail: str) -> ApiError:
    """Our own misconfiguration: the details go to the log only, never Stripe's text to clients."""
    return _PAYMENT_CONFIGURATION_ERROR.error(detail=detail)


def internal_error() -> ApiError:
    return _INTERNAL_ERROR.error()


def invalid_signature(detail: str) -> ApiError:
    return _INVALID_SIGNATURE.error(detail=detail)


def webhook_not_configured(detail: str) -> ApiError:
    return _WEBHOOK_NOT_CONFIGURED.error(detail=detail)


def webhook_secret_unavailable(detail: str) -> ApiError:
    return _WEBHOOK_SECRET_UNAVAILABLE.error(detail=detail)


def ledger_unavailable(detail: str) -> ApiError:
    # Nothing was marked handled: Stripe's retry (or another instance) does the work again.
    return _LEDGER_UNAVAILABLE.error(detail=detail)


def order_events_unavailable(detail: str) -> ApiError:
    # Recorded, not yet published: Stripe's retry (or the next status call) publishes it.
    return _ORDER_EVENTS_UNAVAILABLE.error(detail=detail)


def event_in_progress(detail: str) -> ApiError:
    return _EVENT_IN_PROGRESS.error(detail=detail)
