"""POST /api/checkout/webhook: Stripe's signed events, verified over the raw body, recorded once.

Verify, make a fact, record and publish it, then answer 200; else 503 to retry: docs/webhooks.md."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import stripe
from starlette.requests import Request
from starlette.responses import Response

from checkout.api.http import json_response, read_body
from checkout.api.status_cache import StatusCache
from checkout.errors import ApiError, api_error
from checkout.keys import SecretConfigError, SecretSource, SecretUnavailable
from checkout.once import SingleFlight
from checkout.orders.intake import Intake, Kind, Outcome

log = logging.getLogger("checkout.webhook")

# Checkout Session events are a few KB; anything near this is not from Stripe.
MAX_EVENT_BYTES = 1024 * 1024
# A signature that fails with the cached secret re-reads it from Secret Manager at most this often.
SECRET_REREAD_INTERVAL_S = 30.0


@dataclass(frozen=True)
class StripeWebhook:
    """POST /api/checkout/webhook → {"received": true} once the event is recorded (or ignored)."""

    secret: SecretSource  # the signing secret: env, or Secret Manager (re-read when rolled)
    events: SingleFlight[Outcome]  # concurrent duplicates of one event share one attempt
    intake: Intake
    status_cache: StatusCache

    async def __call__(self, request: Request) -> Response:
        # Read the bytes ourselves: Stripe signed exactly these, and any parsing would alter them.
        payload = await read_body(request, MAX_EVENT_BYTES, _too_large)
        event = await _verified_event(payload, request, self.secret)
        event_id, kind = event["id"], event["type"]
        # Concurrent duplicates on this instance share one attempt; the ledger covers the rest.
        # What cannot be recorded now (RetryLater) app.py answers 503, so that Stripe retries.
        outcome = await self.events.run(event_id, lambda: self.intake.record_event(event))
        if outcome.order is not None and outcome.session_id is not None:
            self.status_cache.forget(outcome.session_id)  # this instance answers the new state
        fields = {"event_id": event_id, "event_type": kind, **outcome.log_fields()}
        # A refused event (fields not as Stripe documents them) or one of the other mode is
        # acknowledged, so Stripe does not retry what cannot change, but an operator should look.
        odd = outcome.kind is Kind.REFUSED or outcome.reason == "livemode_mismatch"
        log.log(logging.WARNING if odd else logging.INFO, "stripe_event", extra={"fields": fields})
        return json_response(200, {"received": True})


async def _signing_secret(source: SecretSource) -> str:
    with _secret_errors(source):
        return await source.get_async()


async def _reread_secret(source: SecretSource, rejected: str) -> str | None:
    """A changed secret from Secret Manager, or None (not from there, unchanged, or too soon)."""
    with _secret_errors(source):
        return await source.reread_async(rejected, SECRET_REREAD_INTERVAL_S)


@contextmanager
def _secret_errors(source: SecretSource) -> Iterator[None]:
    if not source.configured:
        raise api_error(
            "webhook_not_configured",
            "no webhook signing secret: set STRIPE_WEBHOOK_SECRET or STRIPE_WEBHOOK_SECRET_NAME",
        )
    try:
        yield
    except SecretUnavailable as error:
        # Stripe retries a 503 later, by which time Secret Manager has likely recovered.
        raise api_error("webhook_secret_unavailable", str(error)) from None
    except SecretConfigError as error:
        raise api_error("webhook_not_configured", str(error)) from None


async def _verified_event(payload: bytes, request: Request, source: SecretSource) -> dict[str, Any]:
    """The event, once its signature checks out over the raw bytes; ApiError 400 otherwise.

    A secret rolled in the Dashboard: while both are valid Stripe sends one v1 signature per
    secret, so the one we hold still matches. Once the old one expires, only the new one signs:
    then, with the secret in Secret Manager, re-read it (at most once per interval for the whole
    process, so forged requests cannot make us hammer Secret Manager) and check again.
    """
    header = request.headers.get("Stripe-Signature")
    secret = await _signing_secret(source)
    try:
        _check_signature(payload, header, secret)
    except stripe.SignatureVerificationError as error:
        fresh = await _reread_secret(source, secret) if _fresh_header(header) else None
        if fresh is None:
            raise api_error("invalid_signature", str(error)) from None
        try:
            _check_signature(payload, header, fresh)
        except stripe.SignatureVerificationError as again:
            raise api_error(
                "invalid_signature", f"{again} (also with the re-read secret)"
            ) from None
    return _event_in(payload)


def _check_signature(payload: bytes, header: str | None, secret: str) -> None:
    try:
        # An explicit tolerance: verify_header checks no timestamp at all without one.
        stripe.WebhookSignature.verify_header(
            payload, header, secret, tolerance=stripe.Webhook.DEFAULT_TOLERANCE
        )
    except UnicodeDecodeError:
        raise api_error("invalid_signature", "the body is not UTF-8") from None


def _fresh_header(header: str | None) -> bool:
    """A well-formed header with a current timestamp and a v1 signature: worth a re-read."""
    fields = [item.partition("=") for item in (header or "").split(",")]
    timestamps = [value for key, _, value in fields if key.strip() == "t"]
    if len(timestamps) != 1 or not timestamps[0].strip().isdigit():
        return False
    age = abs(time.time() - int(timestamps[0]))
    return age <= stripe.Webhook.DEFAULT_TOLERANCE and any(k.strip() == "v1" for k, _, _ in fields)


def _event_in(payload: bytes) -> dict[str, Any]:
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError):
        raise api_error("invalid_signature", "the signed body is not JSON") from None
    if not (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and isinstance(event.get("type"), str)
    ):
        raise api_error("invalid_signature", "the signed body is not a Stripe event")
    return event


def _too_large() -> ApiError:
    return api_error("payload_too_large", what="A webhook event", limit=MAX_EVENT_BYTES)
