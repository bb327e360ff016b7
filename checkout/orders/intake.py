"""The one intake: a Stripe event (the webhook, the reconciler) or a session read (the status path,
the reconciler's list) becomes a recorded fact of one of our orders, and an `Outcome` says what
became of it (docs/webhooks.md, "One intake path")."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from checkout.orders import stripe_fields
from checkout.orders.catalogue import NOT_SOLD, Catalogue
from checkout.orders.ledger import Ledger
from checkout.orders.model import (
    HANDLED_EVENTS,
    INQUIRY_STATUSES,
    DisputeFact,
    Fact,
    Order,
    SessionFact,
    refunds_of_session,
    session_fact,
)
from checkout.orders.recorder import Recorder
from checkout.orders.session import SessionStatus
from checkout.orders.stripe_fields import MalformedEvent

log = logging.getLogger("checkout.webhook")

# Why an event "cannot be ours" (the reconciler counts these apart from the other ignored ones).
NOT_OURS = frozenset({"not_ours", "other_deployment", "not_checkout", "unknown_payment"})
# A session read that is ours but not settled yet: nothing to record (its event follows).
UNSETTLED = "unsettled"


class StripeReads(Protocol):
    """What the intake asks Stripe; checkout/stripe_access/gateway.py's StripeGateway is one."""

    async def retrieve_session(self, session_id: str) -> SessionStatus: ...
    async def session_of_payment(self, payment_intent: str) -> SessionStatus | None: ...
    async def livemode(self) -> bool | None: ...


class Kind(enum.Enum):
    HANDLED = "handled"  # recorded (a change made, or none needed)
    DUPLICATE = "duplicate"  # the event was recorded before
    IGNORED = "ignored"  # not ours, not an order, not settled, or not what we sell
    REFUSED = "refused"  # its fields are not what Stripe documents (an operator should look)


@dataclass(frozen=True)
class Outcome:
    """What became of one event or session read."""

    kind: Kind
    reason: str | None = None  # why ignored or refused
    detail: str | None = None  # a sentence for the log
    session_id: str | None = None
    order: Order | None = field(default=None, compare=False)  # as recorded
    changes: int = 0  # changes this made
    published: int = 0  # changes this published (its own, and any left unpublished before)

    @property
    def recorded(self) -> bool:
        return self.kind in (Kind.HANDLED, Kind.DUPLICATE)

    @property
    def not_ours(self) -> bool:
        return self.reason in NOT_OURS

    @property
    def not_sold(self) -> bool:
        """Ours and paid, but not what this deployment sells (logged: an operator must look)."""
        return self.reason in NOT_SOLD

    def log_fields(self) -> dict[str, str]:
        """The fields of the `stripe_event` log record (docs/operations.md)."""
        fields = {"outcome": self.kind.value}
        named = {"reason": self.reason, "detail": self.detail, "session_id": self.session_id}
        fields |= {name: value for name, value in named.items() if value is not None}
        if self.recorded:
            fields |= {"changes": str(self.changes), "published": str(self.published)}
        return fields


@dataclass(frozen=True)
class _Event:
    """The event a fact came from, as the ledger and the logs name it."""

    id: str | None = None
    type: str | None = None


class Intake:
    """Is it ours, what did it sell, is it refused, record it: once, for every caller."""

    def __init__(
        self, ledger: Ledger, recorder: Recorder, stripe: StripeReads, catalogue: Catalogue
    ) -> None:
        self._ledger = ledger
        self._recorder = recorder
        self._stripe = stripe
        self._catalogue = catalogue

    async def record_event(  # noqa: PLR0911
        self, event: dict[str, Any], *, look_up_payments: bool = True
    ) -> Outcome:
        """Record one handled event's fact; raises what the recorder raises (RetryLater) and
        the gateway's (StripeFailure).

        `look_up_payments=False`: a refund or dispute whose PaymentIntent the ledger does not know
        is ignored (`unknown_payment`) rather than looked up on Stripe (the reconciler, which has
        just recorded every session of its window).
        """
        source = _Event(event["id"], event["type"])
        if source.type not in HANDLED_EVENTS:
            return Outcome(Kind.IGNORED, "unhandled_type")
        try:
            mode = await self._mode_mismatch(stripe_fields.livemode(event))
            if mode is not None:
                return Outcome(Kind.IGNORED, "livemode_mismatch", detail=mode)
            fact = stripe_fields.fact_of_event(event)
        except MalformedEvent as error:
            # Stripe signed it, so retrying will not change it: acknowledge, refuse, log (WARNING).
            return Outcome(Kind.REFUSED, "malformed_event", detail=str(error)[:200])
        if fact is None:
            return Outcome(Kind.IGNORED, "not_checkout")
        if isinstance(fact, SessionFact):
            return await self._record_session(fact, source)
        session_id, reason = await self._session_of_payment(fact.payment_intent, look_up_payments)
        if session_id is None:
            return Outcome(Kind.IGNORED, reason)
        refused = await self._refused_before_paid(session_id, fact.payment_intent)
        if refused is not None:
            return Outcome(Kind.IGNORED, refused, session_id=session_id)
        outcome = await self._record(session_id, [fact], source)
        if outcome.kind is Kind.HANDLED:  # the first time only
            _log_if_inquiry(fact, session_id, source)
        return outcome

    async def record_listed_session(self, session: SessionStatus) -> Outcome:
        """A session from Stripe's list (the reconciler): recorded once ours and settled."""
        return await self._record_session(session_fact(session), _Event(), settled_only=True)

    async def record_polled_session(self, session: SessionStatus, record_by: float) -> Outcome:
        """A session the status path retrieved, with its line items and its charge's refunds:
        recorded once ours and settled, by `record_by` (the loop's time) or TimeoutError."""
        refunds = refunds_of_session(session)
        return await self._record_session(
            session_fact(session),
            _Event(),
            also=() if refunds is None else (refunds,),
            settled_only=True,
            polled=True,
            by=record_by,
        )

    async def _record_session(
        self,
        fact: SessionFact,
        source: _Event,
        *,
        also: Sequence[Fact] = (),
        settled_only: bool = False,
        polled: bool = False,
        by: float | None = None,
    ) -> Outcome:
        """Every session's one path: ours? settled (`settled_only`)? what it sold? recorded.

        `also`: what the same read says after the session (the refunds its charge shows).
        `polled`: a status poll's read, which holds its line items, and whose refusal is not
        logged again on every poll.
        """
        session = fact.session
        if not self._catalogue.is_ours(session):
            # Every Checkout Session of the account comes here; only ours are acted on. Nothing
            # is cached or recorded, so the status endpoint still answers 404 for it.
            foreign = self._catalogue.refusal(session)
            return Outcome(Kind.IGNORED, foreign.reason if foreign is not None else "not_ours")
        if settled_only and not session.terminal:
            return Outcome(Kind.IGNORED, UNSETTLED, session_id=session.session_id)
        if not polled:
            fact = await self._with_line_items(fact)
        refusal = self._refusal(fact.session, source, polled=polled)
        if refusal is not None:
            return Outcome(Kind.IGNORED, refusal, session_id=session.session_id)
        if by is None:
            return await self._record(session.session_id, [fact, *also], source)
        if asyncio.get_running_loop().time() >= by:
            raise TimeoutError  # the caller's budget is spent: do not start a write
        async with asyncio.timeout_at(by):
            return await self._record(session.session_id, [fact, *also], source)

    async def _record(self, session_id: str, facts: list[Fact], source: _Event) -> Outcome:
        changes = published = 0
        for fact in facts:
            applied = await self._recorder.record(
                session_id, fact, event_id=source.id, event_type=source.type
            )
            changes, published = changes + len(applied.new), published + len(applied.to_publish)
        kind = Kind.DUPLICATE if applied.duplicate else Kind.HANDLED
        return Outcome(
            kind, session_id=session_id, order=applied.order, changes=changes, published=published
        )

    async def _session_of_payment(
        self, payment_intent: str, look_up: bool
    ) -> tuple[str | None, str | None]:
        """The session id of our order a refund or dispute is about, or (None, why it is not ours).

        Found through this deployment's own ledger (its collections are its own, so an order found
        there is ours), else through Stripe, whose session must carry our marker.
        """
        known = await self._ledger.session_of_payment(payment_intent)
        if known is not None:
            return known, None
        if not look_up:
            return None, "unknown_payment"
        # A refund or dispute before (or without) the order's own record: ask Stripe whose it is.
        session = await self._stripe.session_of_payment(payment_intent)
        if session is None:
            return None, "not_ours"
        # Recorded as Stripe has it first, so that the refund or dispute has its order.
        recorded = await self._record_session(session_fact(session, payment_intent), _Event())
        if not recorded.recorded:
            return None, "not_ours" if recorded.not_ours else recorded.reason
        return session.session_id, None

    async def _refused_before_paid(self, session_id: str, payment_intent: str) -> str | None:
        """Why the order a refund or dispute names is not ours to fulfil, or None.

        A refund implies a payment, but an order recorded unpaid may be one whose delayed payment
        was refused (not what we sell): its session is read again and taken as its own event is.
        """
        order = await self._ledger.order(session_id)
        if order is None or order.paid:
            return None
        session = await self._stripe.retrieve_session(session_id)
        recorded = await self._record_session(session_fact(session, payment_intent), _Event())
        return None if recorded.recorded else recorded.reason or "not_ours"

    async def _mode_mismatch(self, livemode: bool | None) -> str | None:
        """Why an event's mode is not the key's (misrouted, or forged with a leaked secret)."""
        if livemode is None:
            return None
        live_key = await self._stripe.livemode()
        if live_key is None or live_key == livemode:
            return None
        modes = ("test", "live")
        return f"a {modes[livemode]}-mode event for a {modes[live_key]}-mode key"

    async def _with_line_items(self, fact: SessionFact) -> SessionFact:
        # An event or a list holds no line items, and a Dashboard price can be checked only
        # against them: ask Stripe what this session sold.
        session = fact.session
        if session.paid and self._catalogue.needs_line_items and session.line_items is None:
            session = await self._stripe.retrieve_session(session.session_id)
            intent = fact.payment_intent or session.payment_intent
            return SessionFact(session, intent, fact.occurred_at)
        return fact

    def _refusal(self, session: SessionStatus, source: _Event, *, polled: bool) -> str | None:
        """Why a paid session of ours is not an order of what we sell (logged), or None.

        A polled one is checked whatever its state, and not logged again on every poll.
        """
        if polled:
            refused = self._catalogue.refusal(session)
            return None if refused is None else refused.reason
        if not session.paid:
            return None
        refusal = self._catalogue.refusal(session)
        if refusal is None:
            return None
        fields = {**session.log_record(source.id), "reason": refusal.reason}
        fields["detail"] = refusal.detail
        # Ours but not what we sell (the price changed while it was open?): a paying customer is
        # waiting, and only an operator can decide. Another integration's: nothing to do.
        level = logging.ERROR if refusal.ours else logging.INFO
        log.log(level, "checkout_not_fulfilled", extra={"fields": fields})
        return refusal.reason


def _log_if_inquiry(fact: Fact, session_id: str, source: _Event) -> None:
    if not (isinstance(fact, DisputeFact) and fact.status in INQUIRY_STATUSES):
        return
    # An inquiry moves no money and may never become a chargeback, so the customer keeps the
    # purchase; but unanswered it can escalate, and it has a deadline: someone must answer.
    fields = {
        "session_id": session_id,
        "dispute_id": fact.dispute_id,
        "dispute_status": fact.status,
        "dispute_amount": fact.amount,
        "evidence_due_by": fact.evidence_due_by,
        "event_id": source.id,
    }
    log.warning("checkout_inquiry", extra={"fields": fields})
