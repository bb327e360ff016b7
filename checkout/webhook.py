"""POST /api/checkout/webhook: Stripe's signed events, verified over the raw body, handled once.

Stripe delivers at least once and out of order, to any instance, and retries any non-2xx answer
for up to 3 days. So: verify before reading anything, answer 200 only once the event is handled
and recorded in the order ledger (Firestore on Cloud Run: every instance sees it), remember handled
event ids there, and let a failure answer 5xx so that Stripe tries again.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import stripe
from starlette.requests import Request
from starlette.responses import Response

from checkout import errors
from checkout.errors import ApiError
from checkout.fulfilment import FulfilmentFailed
from checkout.http import json_response, read_body
from checkout.keys import SecretConfigError, SecretUnavailable
from checkout.ledger import FulfilmentInProgress, LedgerUnavailable
from checkout.session import SessionStatus

if TYPE_CHECKING:
    from checkout.service import Service

log = logging.getLogger("checkout.webhook")

# Checkout Session events are a few KB; anything near this is not from Stripe.
MAX_EVENT_BYTES = 1024 * 1024

FULFILLING = frozenset({"checkout.session.completed", "checkout.session.async_payment_succeeded"})
PAYMENT_FAILED = "checkout.session.async_payment_failed"
EXPIRED = "checkout.session.expired"
HANDLED = FULFILLING | {PAYMENT_FAILED, EXPIRED}


async def stripe_webhook(request: Request, service: Service) -> Response:
    """POST /api/checkout/webhook → {"received": true} once the event is handled (or ignored)."""
    secret = await _signing_secret(service)
    # Read the bytes ourselves: Stripe signed exactly these, and any parsing would alter them.
    event = _verified_event(await read_body(request, MAX_EVENT_BYTES, _too_large), request, secret)
    event_id, kind = event["id"], event["type"]
    seen_before = False

    async def handle_once() -> None:
        nonlocal seen_before
        if kind not in HANDLED:
            return
        # Another instance (or this one, before a restart) may have handled it.
        if await service.ledger.event_handled(event_id):
            seen_before = True
            return
        session_id = await _handle(event, service)
        await service.ledger.mark_event_handled(event_id, kind, session_id)

    try:
        # Concurrent duplicates on this instance share one attempt; the ledger covers the rest.
        first_time = await service.webhook_events.run(event_id, handle_once)
    except LedgerUnavailable as error:
        raise errors.ledger_unavailable(str(error)) from None
    except FulfilmentInProgress as error:
        raise errors.fulfilment_in_progress(str(error)) from None
    duplicate = not first_time or seen_before
    outcome = "duplicate" if duplicate else "handled" if kind in HANDLED else "ignored"
    log.info(
        "stripe_event",
        extra={"fields": {"event_id": event_id, "event_type": kind, "outcome": outcome}},
    )
    return json_response(200, {"received": True})


async def _handle(event: dict[str, Any], service: Service) -> str:
    """Handle one Checkout Session event; the session's id."""
    kind, event_id = event["type"], event["id"]
    session = _session_in(event)
    if kind in FULFILLING:
        if session.payment_status == "unpaid":
            # An async payment (e.g. a bank debit) is still settling; its own event follows. Not
            # cached: `complete/unpaid` would otherwise hide the `paid` that is coming.
            await service.ledger.record(session, event_id=event_id)
            log.info("checkout_payment_pending", extra={"fields": session.log_record(event_id)})
            return session.session_id
        try:
            await service.fulfilment.fulfil(session, event_id=event_id)
        except FulfilmentFailed as error:
            detail = f"{error}: {type(error.__cause__).__name__}"
            raise errors.fulfilment_failed(detail) from None
    elif kind == PAYMENT_FAILED:
        await service.ledger.record(session, event_id=event_id, final=True)
        service.status_cache.put(session, final=True)  # unpaid is final once payment failed
        log.warning("checkout_payment_failed", extra={"fields": session.log_record(event_id)})
    else:
        await service.ledger.record(session, event_id=event_id)
        service.status_cache.put(session)
        log.info("checkout_expired", extra={"fields": session.log_record(event_id)})
    return session.session_id


async def _signing_secret(service: Service) -> str:
    source = service.webhook_secret
    if not source.configured:
        raise errors.webhook_not_configured(
            "no webhook signing secret: set STRIPE_WEBHOOK_SECRET or STRIPE_WEBHOOK_SECRET_NAME"
        )
    try:
        return await source.get_async()
    except SecretUnavailable as error:
        # Stripe retries a 503 later, by which time Secret Manager has likely recovered.
        raise errors.webhook_secret_unavailable(str(error)) from None
    except SecretConfigError as error:
        raise errors.webhook_not_configured(str(error)) from None


def _verified_event(payload: bytes, request: Request, secret: str) -> dict[str, Any]:
    """The event, once its signature checks out over the raw bytes; ApiError 400 otherwise."""
    try:
        # An explicit tolerance: verify_header checks no timestamp at all without one.
        stripe.WebhookSignature.verify_header(
            payload,
            request.headers.get("Stripe-Signature"),
            secret,
            tolerance=stripe.Webhook.DEFAULT_TOLERANCE,
        )
    except stripe.SignatureVerificationError as error:
        raise errors.invalid_signature(str(error)) from None
    except UnicodeDecodeError:
        raise errors.invalid_signature("the body is not UTF-8") from None
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError):
        raise errors.invalid_signature("the signed body is not JSON") from None
    if not (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and isinstance(event.get("type"), str)
    ):
        raise errors.invalid_signature("the signed body is not a Stripe event")
    return event


def _session_in(event: dict[str, Any]) -> SessionStatus:
    data = event.get("data")
    session = data.get("object") if isinstance(data, dict) else None
    if not (isinstance(session, dict) and str(session.get("id", "")).startswith("cs_")):
        raise errors.invalid_signature(
            f"{event['type']} event {event['id']} holds no Checkout Session"
        )
    metadata = session.get("metadata")
    if not isinstance(metadata, dict):
        session = {**session, "metadata": {}}
    # from_stripe reads with `in` and [], which a plain dict supports as well.
    return SessionStatus.from_stripe(session)


def _too_large() -> ApiError:
    return errors.payload_too_large(MAX_EVENT_BYTES, "A webhook event")
