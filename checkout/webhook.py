"""POST /api/checkout/webhook: Stripe's signed events, verified over the raw body, handled once.

Stripe delivers at least once and out of order, to any instance, and retries any non-2xx answer
for up to 3 days. So: verify before reading anything, answer 200 only once the event is handled
and recorded in the order ledger (Firestore on Cloud Run: every instance sees it), remember handled
event ids there, and let a failure answer 5xx so that Stripe tries again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
from checkout.once import StillRunning
from checkout.session import SessionStatus

if TYPE_CHECKING:
    from checkout.service import Service

log = logging.getLogger("checkout.webhook")

# Checkout Session events are a few KB; anything near this is not from Stripe.
MAX_EVENT_BYTES = 1024 * 1024
# A signature that fails with the cached secret re-reads it from Secret Manager at most this often.
SECRET_REREAD_INTERVAL_S = 30.0

FULFILLING = frozenset({"checkout.session.completed", "checkout.session.async_payment_succeeded"})
PAYMENT_FAILED = "checkout.session.async_payment_failed"
EXPIRED = "checkout.session.expired"
HANDLED = FULFILLING | {PAYMENT_FAILED, EXPIRED}


async def stripe_webhook(request: Request, service: Service) -> Response:
    """POST /api/checkout/webhook → {"received": true} once the event is handled (or ignored)."""
    # Read the bytes ourselves: Stripe signed exactly these, and any parsing would alter them.
    payload = await read_body(request, MAX_EVENT_BYTES, _too_large)
    event = await _verified_event(payload, request, service)
    event_id, kind = event["id"], event["type"]
    seen_before = False
    ignored: list[str] = []  # why this event was acknowledged without acting on it, if it was

    async def handle_once() -> None:
        nonlocal seen_before
        if kind not in HANDLED:
            ignored.append("unhandled_type")
            return
        # Another instance (or this one, before a restart) may have handled it.
        if await service.ledger.event_handled(event_id):
            seen_before = True
            return
        session_id, reason = await _handle(event, service)
        if reason is not None:
            ignored.append(reason)
        if session_id is not None:
            await service.ledger.mark_event_handled(event_id, kind, session_id)

    try:
        # Concurrent duplicates on this instance share one attempt; the ledger covers the rest.
        first_time = await service.webhook_events.run(
            event_id, handle_once, wait=service.duplicate_event_wait
        )
    except StillRunning as running:
        raise errors.event_in_progress(str(running)) from None
    except LedgerUnavailable as error:
        raise errors.ledger_unavailable(str(error)) from None
    except FulfilmentInProgress as error:
        raise errors.fulfilment_in_progress(str(error)) from None
    fields = {"event_id": event_id, "event_type": kind}
    if not first_time or seen_before:
        fields["outcome"] = "duplicate"
    elif ignored:
        fields.update(outcome="ignored", reason=ignored[0])
    else:
        fields["outcome"] = "handled"
    log.info("stripe_event", extra={"fields": fields})
    return json_response(200, {"received": True})


async def _handle(event: dict[str, Any], service: Service) -> tuple[str | None, str | None]:
    """Handle one Checkout Session event.

    Returns the session id to record the event under (None: record nothing, it is not ours) and
    the reason the event was ignored (None if it was acted on).
    """
    kind, event_id = event["type"], event["id"]
    session = _session_in(event)
    if not service.catalogue.is_ours(session):
        # Every Checkout Session of the account comes here; only those we created are ours.
        # Nothing is cached or recorded, so the status endpoint still answers 404 for it.
        refusal = service.catalogue.refusal(session)
        return None, refusal.reason if refusal is not None else "not_ours"
    if kind in FULFILLING:
        if session.payment_status == "unpaid":
            # An async payment (e.g. a bank debit) is still settling; its own event follows. Not
            # cached: `complete/unpaid` would otherwise hide the `paid` that is coming.
            await service.ledger.record(session, event_id=event_id)
            log.info("checkout_payment_pending", extra={"fields": session.log_record(event_id)})
            return session.session_id, None
        if service.catalogue.needs_line_items:
            # The event holds no line items: ask Stripe what this session sold.
            session = await service.gateway.retrieve_session(session.session_id)
        refusal = service.fulfilment.refusal(session, event_id)
        if refusal is not None:
            return session.session_id, refusal.reason
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
    return session.session_id, None


async def _signing_secret(service: Service) -> str:
    with _secret_errors(service):
        return await service.webhook_secret.get_async()


async def _reread_secret(service: Service, rejected: str) -> str | None:
    """A changed secret from Secret Manager, or None (not from there, unchanged, or too soon)."""
    with _secret_errors(service):
        return await service.webhook_secret.reread_async(rejected, SECRET_REREAD_INTERVAL_S)


@contextmanager
def _secret_errors(service: Service) -> Iterator[None]:
    if not service.webhook_secret.configured:
        raise errors.webhook_not_configured(
            "no webhook signing secret: set STRIPE_WEBHOOK_SECRET or STRIPE_WEBHOOK_SECRET_NAME"
        )
    try:
        yield
    except SecretUnavailable as error:
        # Stripe retries a 503 later, by which time Secret Manager has likely recovered.
        raise errors.webhook_secret_unavailable(str(error)) from None
    except SecretConfigError as error:
        raise errors.webhook_not_configured(str(error)) from None


async def _verified_event(payload: bytes, request: Request, service: Service) -> dict[str, Any]:
    """The event, once its signature checks out over the raw bytes; ApiError 400 otherwise.

    A secret rolled in the Dashboard: while both are valid Stripe sends one v1 signature per
    secret, so the one we hold still matches. Once the old one expires, only the new one signs:
    then, with the secret in Secret Manager, re-read it (at most once per interval for the whole
    process, so forged requests cannot make us hammer Secret Manager) and check again.
    """
    header = request.headers.get("Stripe-Signature")
    secret = await _signing_secret(service)
    try:
        _check_signature(payload, header, secret)
    except stripe.SignatureVerificationError as error:
        fresh = await _reread_secret(service, secret) if _fresh_header(header) else None
        if fresh is None:
            raise errors.invalid_signature(str(error)) from None
        try:
            _check_signature(payload, header, fresh)
        except stripe.SignatureVerificationError as again:
            raise errors.invalid_signature(f"{again} (also with the re-read secret)") from None
    return _event_in(payload)


def _check_signature(payload: bytes, header: str | None, secret: str) -> None:
    try:
        # An explicit tolerance: verify_header checks no timestamp at all without one.
        stripe.WebhookSignature.verify_header(
            payload, header, secret, tolerance=stripe.Webhook.DEFAULT_TOLERANCE
        )
    except UnicodeDecodeError:
        raise errors.invalid_signature("the body is not UTF-8") from None


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
    # from_stripe reads with `in` and [], which a plain dict supports as well. The failed event
    # is what tells a failed delayed payment apart: the session itself still reads complete/unpaid.
    return SessionStatus.from_stripe(session, payment_failed=event["type"] == PAYMENT_FAILED)


def _too_large() -> ApiError:
    return errors.payload_too_large(MAX_EVENT_BYTES, "A webhook event")
