"""A Stripe event, made into a fact about one of our orders and recorded: for the webhook and the
reconciler alike; only our sessions' events become facts (docs/webhooks.md)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from checkout.orders.model import (
    HANDLED_EVENTS,
    INQUIRY_STATUSES,
    DisputeFact,
    Fact,
    SessionFact,
    fact_of_event,
    session_fact,
)
from checkout.orders.stripe_fields import MalformedEvent

if TYPE_CHECKING:
    from checkout.runtime import IntakeParts

log = logging.getLogger("checkout.webhook")


# Why an event "cannot be ours" (the reconciler counts these apart from the other ignored ones).
NOT_OURS = frozenset({"not_ours", "other_deployment", "not_checkout", "unknown_payment"})


async def apply_event(  # noqa: PLR0911
    event: dict[str, Any], service: IntakeParts, *, ask_stripe: bool = True
) -> dict[str, str]:
    """Record one handled event's fact: the webhook's and the reconciler's one path.

    Returns the log fields saying what became of it; raises what the recorder raises
    (RetryLater: LedgerUnavailable, ...) and the gateway's StripeFailure.
    `ask_stripe=False`: a refund or dispute whose PaymentIntent the ledger does not know is
    ignored (`unknown_payment`) rather than looked up (the reconciler, which has just recorded
    every session of its window).
    """
    kind, event_id = event["type"], event["id"]
    if kind not in HANDLED_EVENTS:
        return {"outcome": "ignored", "reason": "unhandled_type"}
    try:
        mode = await _mode_mismatch(event, service)
        if mode is not None:
            return {"outcome": "ignored", "reason": "livemode_mismatch", "detail": mode}
        fact = fact_of_event(event)
    except MalformedEvent as error:
        # Stripe signed it, so retrying will not change it: acknowledge, refuse, log (WARNING).
        return {"outcome": "refused", "reason": "malformed_event", "detail": str(error)[:200]}
    if fact is None:
        return {"outcome": "ignored", "reason": "not_checkout"}
    session_id, reason = await _our_session(fact, service, ask_stripe)
    if session_id is None:
        # Every Checkout Session and Charge of the account comes here; only ours are acted on.
        # Nothing is cached or recorded, so the status endpoint still answers 404 for it.
        return {"outcome": "ignored", "reason": reason or "not_ours"}
    if isinstance(fact, SessionFact):
        fact, refusal = await checked_session_fact(fact, service, event_id)
        if refusal is not None:
            return {"outcome": "ignored", "reason": refusal, "session_id": session_id}
    applied = await service.recorder.apply(session_id, fact, event_id=event_id, event_type=kind)
    if isinstance(fact, DisputeFact) and fact.status in INQUIRY_STATUSES and not applied.duplicate:
        _log_inquiry(fact, session_id, event_id)
    outcome = "duplicate" if applied.duplicate else "handled"
    return {
        "outcome": outcome,
        "session_id": session_id,
        "changes": str(len(applied.new)),
        "published": str(len(applied.to_publish)),
    }


async def _mode_mismatch(event: dict[str, Any], service: IntakeParts) -> str | None:
    """Why an event's mode is not the key's (misrouted, or forged with a leaked secret), or None."""
    livemode = event.get("livemode")
    if livemode is None:
        return None
    if not isinstance(livemode, bool):
        raise MalformedEvent("livemode is not a boolean")
    live_key = await service.gateway.livemode()
    if live_key is None or live_key == livemode:
        return None
    modes = ("test", "live")
    return f"a {modes[livemode]}-mode event for a {modes[live_key]}-mode key"


def _log_inquiry(fact: DisputeFact, session_id: str, event_id: str) -> None:
    # An inquiry moves no money and may never become a chargeback, so the customer keeps the
    # purchase; but unanswered it can escalate, and it has a deadline: someone must answer.
    fields = {
        "session_id": session_id,
        "dispute_id": fact.dispute_id,
        "dispute_status": fact.status,
        "dispute_amount": fact.amount,
        "evidence_due_by": fact.evidence_due_by,
        "event_id": event_id,
    }
    log.warning("checkout_inquiry", extra={"fields": fields})


async def _our_session(  # noqa: PLR0911
    fact: Fact, service: IntakeParts, ask_stripe: bool = True
) -> tuple[str | None, str | None]:
    """The session id of our order this fact is about, or (None, why it is not ours).

    A refund or dispute is found through this deployment's own ledger (its collections are its
    own, so an order found there is ours), else through Stripe, whose session must carry our
    marker.
    """
    if isinstance(fact, SessionFact):
        if service.catalogue.is_ours(fact.session):
            return fact.session.session_id, None
        foreign = service.catalogue.refusal(fact.session)
        return None, foreign.reason if foreign is not None else "not_ours"
    known = await service.ledger.session_of_payment(fact.payment_intent)
    if known is not None:
        return known, None
    if not ask_stripe:
        return None, "unknown_payment"
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
    fact: SessionFact, service: IntakeParts, event_id: str | None
) -> tuple[SessionFact, str | None]:
    """The fact with what the session sold, and why it is not an order of ours (logged), or None.

    For a session of ours from an event, a list (the reconciler) or a refund's lookup alike: none
    of those carries line items, and a Dashboard price can be checked only against them.
    """
    fact = await _with_line_items(fact, service)
    return fact, _refusal(fact, service, event_id)


async def _with_line_items(fact: SessionFact, service: IntakeParts) -> SessionFact:
    if fact.session.paid and service.catalogue.needs_line_items and fact.session.line_items is None:
        # The event holds no line items: ask Stripe what this session sold.
        session = await service.gateway.retrieve_session(fact.session.session_id)
        return SessionFact(session, fact.payment_intent or session.payment_intent, fact.occurred_at)
    return fact


def _refusal(fact: SessionFact, service: IntakeParts, event_id: str | None) -> str | None:
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
