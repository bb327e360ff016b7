"""A Stripe event, made into a fact about one of our orders and recorded: for the webhook and the
reconciler alike.

Every Checkout Session and Charge of the Stripe account reaches the webhook endpoint; only ours
(marked by this deployment, checkout/catalogue.py) become facts. A refund or dispute names a
PaymentIntent: the ledger knows its order, or Stripe is asked whose session it paid.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from checkout import errors
from checkout.orders import (
    HANDLED_EVENTS,
    Fact,
    SessionFact,
    fact_of_event,
    session_fact,
)

if TYPE_CHECKING:
    from checkout.service import Service

log = logging.getLogger("checkout.webhook")


async def apply_event(event: dict[str, Any], service: Service) -> dict[str, str]:
    """Record one handled event's fact: the webhook's and the reconciler's one path.

    Returns the log fields saying what became of it; raises what the recorder raises
    (LedgerUnavailable, PublishFailed, PublicationInProgress) and the gateway's ApiError.
    """
    kind, event_id = event["type"], event["id"]
    if kind not in HANDLED_EVENTS:
        return {"outcome": "ignored", "reason": "unhandled_type"}
    try:
        fact = fact_of_event(event)
    except ValueError as error:
        raise errors.invalid_signature(str(error)) from None
    if fact is None:
        return {"outcome": "ignored", "reason": "not_checkout"}
    session_id, reason = await _our_session(fact, service)
    if session_id is None:
        # Every Checkout Session and Charge of the account comes here; only ours are acted on.
        # Nothing is cached or recorded, so the status endpoint still answers 404 for it.
        return {"outcome": "ignored", "reason": reason or "not_ours"}
    if isinstance(fact, SessionFact):
        fact, refusal = await checked_session_fact(fact, service, event_id)
        if refusal is not None:
            return {"outcome": "ignored", "reason": refusal, "session_id": session_id}
    applied = await service.recorder.apply(session_id, fact, event_id=event_id, event_type=kind)
    if applied.order is not None:
        service.status_cache.forget(session_id)  # this instance answers the new state at once
    outcome = "duplicate" if applied.duplicate else "handled"
    return {
        "outcome": outcome,
        "session_id": session_id,
        "changes": str(len(applied.new)),
        "published": str(len(applied.to_publish)),
    }


async def _our_session(fact: Fact, service: Service) -> tuple[str | None, str | None]:
    """The session id of our order this fact is about, or (None, why it is not ours)."""
    if isinstance(fact, SessionFact):
        if service.catalogue.is_ours(fact.session):
            return fact.session.session_id, None
        foreign = service.catalogue.refusal(fact.session)
        return None, foreign.reason if foreign is not None else "not_ours"
    known = await service.ledger.session_of_payment(fact.payment_intent)
    if known is not None:
        return known, None
    # A refund or dispute before (or without) the order's own record: ask Stripe whose it is.
    session = await service.gateway.session_of_payment(fact.payment_intent)
    if session is None or not service.catalogue.is_ours(session):
        return None, "not_ours"
    # A listed session holds no line items either: checked like the session's own event.
    order, refused = await checked_session_fact(
        session_fact(session, fact.payment_intent), service, None
    )
    if refused is not None:
        return None, refused
    # Record the order as Stripe has it first, so that the refund or dispute has its order.
    await service.recorder.apply(session.session_id, order)
    return session.session_id, None


async def checked_session_fact(
    fact: SessionFact, service: Service, event_id: str | None
) -> tuple[SessionFact, str | None]:
    """The fact with what the session sold, and why it is not an order of ours (logged), or None.

    For a session of ours from an event, a list (the reconciler) or a refund's lookup alike: none
    of those carries line items, and a Dashboard price can be checked only against them.
    """
    fact = await _with_line_items(fact, service)
    return fact, _refusal(fact, service, event_id)


async def _with_line_items(fact: SessionFact, service: Service) -> SessionFact:
    if fact.session.paid and service.catalogue.needs_line_items and fact.session.line_items is None:
        # The event holds no line items: ask Stripe what this session sold.
        session = await service.gateway.retrieve_session(fact.session.session_id)
        return SessionFact(session, fact.payment_intent or session.payment_intent, fact.occurred_at)
    return fact


def _refusal(fact: SessionFact, service: Service, event_id: str | None) -> str | None:
    """Why a paid session of ours is not an order of what we sell (logged), or None."""
    if not fact.session.paid:
        return None
    refusal = service.catalogue.refusal(fact.session)
    if refusal is None:
        return None
    fields = {**fact.session.log_record(event_id), "reason": refusal.reason}
    fields["detail"] = refusal.detail
    # Ours but not what we sell (the price changed while it was open?): a paying customer is
    # waiting, and only an operator can decide. Another integration's: nothing to do.
    level = logging.ERROR if refusal.ours else logging.INFO
    log.log(level, "checkout_not_fulfilled", extra={"fields": fields})
    return refusal.reason
