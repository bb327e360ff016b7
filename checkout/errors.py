"""The exception tree (one root, `CheckoutError`) and the table of every code the API answers.

checkout/api/errors.py maps our exceptions to these codes; openapi.yaml documents each one."""

from __future__ import annotations

from dataclasses import dataclass


class CheckoutError(Exception):
    """The root of every exception this package raises."""


class RetryLater(CheckoutError):
    """A part we depend on is away or busy for now: the same call later may succeed (503)."""


# --- What a Stripe call can end in (stripe_access/gateway.py raises these) -------------------
class StripeFailure(CheckoutError):
    """A Stripe call that did not give its answer; the message is for the log only."""


class SessionNotFound(StripeFailure):
    """No Checkout Session of ours has that id (unknown to Stripe, or another integration's)."""


class IdempotencyConflict(StripeFailure):
    """The idempotency key was used before with a different request."""


class ProviderBusy(StripeFailure, RetryLater):
    """Stripe is rate limiting us, or our cap on calls in flight is reached."""


class ProviderUnavailable(StripeFailure, RetryLater):
    """The Stripe key cannot be read just now (Secret Manager unreachable or denied)."""


class ProviderUnreachable(StripeFailure):
    """Stripe did not answer (connection failed, or timed out)."""


class ProviderError(StripeFailure):
    """Stripe answered with an error of its own (a 5xx)."""


class StripeMisconfigured(StripeFailure):
    """Our key or request is wrong (401, 403, a 400 of ours): an operator must act."""


# --- The API's answers ------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorCode:
    """One code the API answers: its status, and its sentence (`{name}` fields filled per call)."""

    code: str
    status: int
    message: str
    retry_after: str | None = None


@dataclass(eq=False)  # compared, and hashed, as the one exception it is
class ApiError(CheckoutError):
    """An answer for the client: HTTP status, machine code and a human sentence.

    Built by `api_error` only, raised in checkout/api/ only; `detail` goes to the log, never to
    the response body.
    """

    status: int
    code: str
    message: str
    headers: dict[str, str]
    detail: str | None

    def __post_init__(self) -> None:
        super().__init__(self.message)


# Every code the API answers: its HTTP status, Retry-After (seconds; "-": none) and sentence (an
# indented line goes on with the one above). openapi.yaml documents each (test_openapi.py).
# The ledger's codes: nothing was marked handled, or a change is recorded and not yet published;
# Stripe's retry (or the next status call) does the rest. payment_configuration_error is our own
# misconfiguration: the details go to the log only, never Stripe's text to clients.
TABLE = """
code                         status retry sentence
not_found                    404    -     There is no endpoint at this path.
non_canonical_path           404    -     There is no endpoint at this path as written: write it
                                          without percent-encoding, empty (//) or dot (. and ..)
                                          segments.
method_not_allowed           405    -     This path does not accept {method}; use {allowed}.
header_too_large             431    -     Each request header must be at most {limit} bytes.
headers_too_large            431    -     The request line and headers must be at most {limit} bytes
                                          in all.
request_timeout              408    -     The request did not arrive whole within {seconds:g} s of
                                          its first byte; send it again.
invalid_http                 400    -     The request is not valid HTTP/1.1.
payload_too_large            413    -     {what} must be at most {limit} bytes.
unsupported_media_type       415    -     Send the request body as JSON with Content-Type:
                                          application/json.
invalid_json                 400    -     The request body is not valid JSON.
invalid_body                 400    -     The request body {problem}.
invalid_image_id             400    -     imageId must {rule}.
invalid_idempotency_key      400    -     Idempotency-Key must be 1 to {limit} printable ASCII
                                          characters.
invalid_session_id           400    -     Pass exactly one session_id query parameter, a Checkout
                                          Session id (cs_test_… or cs_live_…).
origin_not_allowed           403    -     This origin is not allowed to call the checkout API.
rate_limited                 429    -     Too many requests from this address. Please retry shortly.

session_not_found            404    -     No checkout session has that id.
idempotency_conflict         409    -     This Idempotency-Key was already used with a different
                                          request body.
payment_provider_busy        503    2     The payment provider is busy. Please retry shortly.
payment_provider_unreachable 504    -     The payment provider did not answer in time. Please retry.
payment_provider_error       502    -     The payment provider returned an error. Please retry.
payment_provider_unavailable 503    5     Payments are temporarily unavailable. Please retry
                                          shortly.
payment_configuration_error  500    -     Payments are not configured correctly on the server.
internal_error               500    -     Something went wrong on our side. Please retry.

invalid_signature            400    -     The request is not a correctly signed Stripe event.
webhook_not_configured       500    -     Webhooks are not configured on this server.
webhook_secret_unavailable   503    5     The webhook signing secret is temporarily unavailable.
                                          Retry later.
ledger_unavailable           503    10    Orders cannot be recorded right now; retry the event
                                          later.
order_events_unavailable     503    10    The order could not be handed on for delivery just now;
                                          retry the event later.
event_in_progress            503    10    This event is still being handled by another delivery;
                                          retry it later.
"""


def rows_of(table: str) -> list[ErrorCode]:
    """The rows of a table written as TABLE is."""
    rows: list[list[str]] = []
    for line in table.strip().splitlines()[1:]:  # below the heading
        if line.startswith(" "):
            rows[-1][-1] += " " + line.strip()
        elif line:
            rows.append(line.split(maxsplit=3))
    return [
        ErrorCode(code, int(status), sentence, None if retry == "-" else retry)
        for code, status, retry, sentence in rows
    ]


CODES: dict[str, ErrorCode] = {row.code: row for row in rows_of(TABLE)}


def api_error(
    code: str, detail: str | None = None, *, headers: dict[str, str] | None = None, **fields: object
) -> ApiError:
    """The answer for `code`, its sentence's `{name}` fields filled: the one way to build one.

    `headers` are sent with it, after the code's own Retry-After.
    """
    kind = CODES[code]
    sent = {"Retry-After": kind.retry_after} if kind.retry_after else {}
    sent.update(headers or {})
    return ApiError(kind.status, kind.code, kind.message.format(**fields), sent, detail)
