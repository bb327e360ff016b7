"""The order model: what an order is, which Stripe fact changes it how, and the changes it emits.

Pure; `advance` folds a fact into an order; which event makes which change: docs/webhooks.md."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from checkout.errors import CheckoutError
from checkout.orders.session import OUR_METADATA_KEYS, SessionStatus, Staged

PAID = "order.paid"
PAYMENT_FAILED = "order.payment_failed"
REFUNDED = "order.refunded"
PARTIALLY_REFUNDED = "order.partially_refunded"
DISPUTED = "order.disputed"
DISPUTE_WON = "order.dispute_won"
DISPUTE_LOST = "order.dispute_lost"
REFUND_REVERSED = "order.refund_reversed"
CHANGE_TYPES = (
    PAID,
    PAYMENT_FAILED,
    REFUNDED,
    PARTIALLY_REFUNDED,
    REFUND_REVERSED,
    DISPUTED,
    DISPUTE_WON,
    DISPUTE_LOST,
)

# Stripe's event types, and what each one is a fact about.
SESSION_EVENTS = frozenset(
    {
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
        "checkout.session.expired",
    }
)
CHARGE_EVENTS = frozenset({"charge.refunded"})
# Each carries the Refund: its status tells a refund that failed or was cancelled.
REFUND_EVENTS = frozenset(
    {"refund.created", "refund.updated", "refund.failed", "charge.refund.updated"}
)
DISPUTE_EVENTS = frozenset(
    {"charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed"}
)
HANDLED_EVENTS = SESSION_EVENTS | CHARGE_EVENTS | REFUND_EVENTS | DISPUTE_EVENTS
PAYMENT_FAILED_EVENT = "checkout.session.async_payment_failed"

# A refund in these statuses moved no money back to the customer (docs.stripe.com/refunds).
REFUND_FAILED_STATUSES = frozenset({"failed", "canceled"})
# An inquiry: the issuer asks questions, no money moves, it may never become a chargeback
# (docs.stripe.com/disputes/how-disputes-work). The customer keeps the purchase meanwhile.
INQUIRY_STATUSES = frozenset({"warning_needs_response", "warning_under_review", "warning_closed"})
DISPUTE_CLOSED_STATUSES = frozenset({"won", "lost", "warning_closed"})
# How far a dispute has gone, so that a late event never moves it back (an escalated inquiry
# never becomes an inquiry again; a closed dispute stays closed).
_DISPUTE_RANK = {"warning_needs_response": 1, "warning_under_review": 1, "needs_response": 2}
_DISPUTE_RANK |= {"under_review": 2, "won": 3, "lost": 3, "warning_closed": 3}


class BadChange(ValueError, CheckoutError):
    """A message that is not an order change of this schema (orders/order_change.schema.json)."""


@dataclass(frozen=True)
class Change:
    """One change of one order: the message published on the order topic, and what is delivered."""

    type: str
    change_id: str
    session_id: str
    occurred_at: str  # ISO 8601, UTC: when Stripe (or the status read) said so
    amount_total: int | None
    currency: str | None
    livemode: bool
    metadata: dict[str, str]
    amount_refunded: int | None = None  # order.refunded, order.partially_refunded
    dispute_id: str | None = None  # order.disputed, .dispute_won, .dispute_lost
    dispute_amount: int | None = None
    evidence_due_by: str | None = None  # order.disputed, when Stripe gives it

    @property
    def key(self) -> str:
        """The change's name within its order (the part of `change_id` after the session id)."""
        return self.change_id.partition(":")[2]

    def data(self) -> dict[str, Any]:
        """The message's JSON data: ids, amounts, our metadata; never customer data or secrets.

        Every field the schema requires is present (`amount_total` and `currency` too, null if
        Stripe gave none); the per-type ones only where they apply.
        """
        return {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if v is not None or k in ("amount_total", "currency")
        }

    def attributes(self) -> dict[str, str]:
        return {"type": self.type, "change_id": self.change_id, "session_id": self.session_id}

    @classmethod
    def from_data(cls, data: object) -> Change:
        """A change from a message's data; BadChange when it is not one."""
        if not isinstance(data, dict):
            raise BadChange("the message data is not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        required = ("type", "change_id", "session_id", "occurred_at", "livemode", "metadata")
        missing = [name for name in required if name not in data]
        if missing:
            raise BadChange(f"the change lacks {', '.join(missing)}")
        if data["type"] not in CHANGE_TYPES:
            raise BadChange(f"unknown change type {str(data['type'])[:60]!r}")
        if not str(data["change_id"]).startswith(f"{data['session_id']}:"):
            raise BadChange("change_id does not belong to session_id")
        if not isinstance(data["metadata"], dict):
            raise BadChange("metadata is not an object")
        fields = {k: v for k, v in data.items() if k in names}
        fields["metadata"] = {str(k): str(v) for k, v in data["metadata"].items()}
        fields.setdefault("amount_total", None)
        fields.setdefault("currency", None)
        return cls(**fields)


@dataclass(frozen=True)
class SessionFact:
    """What Stripe said of the session itself: an event's Checkout Session, or a retrieve."""

    session: SessionStatus
    payment_intent: str | None
    occurred_at: str


@dataclass(frozen=True)
class ChargeFact:
    """A Charge after a refund (`charge.refunded`): how much of it is refunded now."""

    payment_intent: str
    amount_refunded: int
    refunded: bool  # fully refunded
    occurred_at: str


@dataclass(frozen=True)
class RefundFact:
    """A Refund as Stripe sent it (`refund.*`, `charge.refund.updated`): its amount and status."""

    refund_id: str
    payment_intent: str
    amount: int
    status: str
    occurred_at: str

    @property
    def failed(self) -> bool:
        return self.status in REFUND_FAILED_STATUSES


@dataclass(frozen=True)
class DisputeFact:
    """A Dispute as Stripe sent it (`charge.dispute.created`, `.updated`, `.closed`)."""

    dispute_id: str
    payment_intent: str
    amount: int | None
    status: str
    evidence_due_by: str | None
    occurred_at: str


Fact = SessionFact | ChargeFact | RefundFact | DisputeFact


@dataclass
class Order(Staged):
    """One order as the ledger keeps it (`checkout_orders/{session id}`, docs/ledger.md)."""

    session_id: str
    status: str = "open"
    payment_status: str = "unpaid"
    payment_failed: bool = False
    amount_total: int | None = None
    currency: str | None = None
    livemode: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    payment_intent: str | None = None
    amount_refunded: int = 0  # the most the Charge ever reported refunded
    refunded: bool = False  # the Charge once reported fully refunded
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> amount, status
    disputes: dict[str, str] = field(default_factory=dict)  # dispute id -> its latest status
    # change key -> {"change": its data, "published": bool}; every change this order made
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        """open, processing, paid, failed, expired, refunded or disputed: what the customer sees."""
        if any(is_chargeback(status) for status in self.disputes.values()):
            paid_as = "disputed"  # open, or lost (an inquiry moves no money: still paid)
        else:
            paid_as = "refunded" if self.fully_refunded else "paid"
        return self.progress.outcome(paid_as)

    @property
    def refunded_now(self) -> int:
        """What is refunded: every refund that has not failed, as the Charge or each Refund says.

        The Charge's report is the most it ever said, less the refunds seen to fail since; the
        Refunds' own amounts cover a refund made again after one failed. Never past the total.
        """
        live = sum(int(r["amount"]) for r in self.refunds.values() if not _refund_failed(r))
        failed = sum(int(r["amount"]) for r in self.refunds.values() if _refund_failed(r))
        refunded = max(live, self.amount_refunded - failed, 0)
        return min(refunded, self.amount_total) if self.amount_total else refunded

    @property
    def fully_refunded(self) -> bool:
        if self.amount_total:
            return self.refunded_now >= self.amount_total
        return self.refunded and not any(_refund_failed(r) for r in self.refunds.values())

    @property
    def settled(self) -> bool:
        """Stripe's session can no longer change: the ledger may answer for it instead of Stripe."""
        return self.progress.settled

    @property
    def final(self) -> bool:
        """Nothing can change any more: expired or failed (a paid one may still be refunded)."""
        return self.settled and not self.paid

    def public(self) -> dict[str, Any]:
        """The status endpoint's answer."""
        return self.progress.answer(self.outcome, self.refunded_now, self.metadata)

    def unpublished(self) -> list[Change]:
        return [
            Change.from_data(entry["change"])
            for entry in self.changes.values()
            if not entry["published"]
        ]

    def to_document(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        document["pending_publication"] = any(not c["published"] for c in self.changes.values())
        return document

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Order:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in document.items() if k in names})

    @classmethod
    def from_session(cls, session: SessionStatus) -> Order:
        order = cls(session_id=session.session_id)
        order._take_session(session)
        return order

    def _take_session(self, session: SessionStatus) -> None:
        self.status = session.status
        self.payment_status = session.payment_status
        self.payment_failed = session.payment_failed
        self.amount_total = session.amount_total
        self.currency = session.currency
        self.livemode = session.livemode
        self.metadata = {k: v for k, v in session.metadata.items() if k in OUR_METADATA_KEYS}


@dataclass(frozen=True)
class OrderState:
    """An order's state as one delivery reads it from the ledger, under its claim: what "should
    this customer have access now" needs, whatever order the changes arrive in (docs/webhooks.md).
    """

    session_id: str
    outcome: str  # as the status endpoint would answer now: paid, refunded, disputed, ...
    amount_total: int | None
    amount_refunded: int
    open_disputes: tuple[str, ...]  # disputes not closed yet (lost ones count as `disputed`)
    metadata: dict[str, str]

    @property
    def access(self) -> bool:
        """The customer may have what they bought: paid, with no open or lost dispute."""
        return self.outcome == "paid"

    @classmethod
    def of(cls, order: Order) -> OrderState:
        return cls(
            session_id=order.session_id,
            outcome=order.outcome,
            amount_total=order.amount_total,
            amount_refunded=order.refunded_now,
            open_disputes=tuple(
                sorted(d for d, s in order.disputes.items() if s not in DISPUTE_CLOSED_STATUSES)
            ),
            metadata=dict(order.metadata),
        )

    @classmethod
    def of_change(cls, change: Change) -> OrderState:
        """What the change alone says, for an order the worker's ledger does not hold (a ledger
        of its own, e.g. ORDER_LEDGER=memory in a separate worker process)."""
        outcome = _OUTCOME_OF_CHANGE[change.type]
        disputes = (change.dispute_id,) if change.type == DISPUTED and change.dispute_id else ()
        return cls(
            session_id=change.session_id,
            outcome=outcome,
            amount_total=change.amount_total,
            amount_refunded=change.amount_refunded or 0,
            open_disputes=disputes,
            metadata=dict(change.metadata),
        )

    def data(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "open_disputes": list(self.open_disputes)}


_OUTCOME_OF_CHANGE = {
    PAID: "paid",
    PAYMENT_FAILED: "failed",
    REFUNDED: "refunded",
    PARTIALLY_REFUNDED: "paid",
    REFUND_REVERSED: "paid",
    DISPUTED: "disputed",
    DISPUTE_WON: "paid",
    DISPUTE_LOST: "disputed",
}


def advance(order: Order | None, fact: Fact) -> tuple[Order, list[Change]]:
    """Fold `fact` into `order` (None: not seen before); the new order and the changes it made.

    Idempotent and order-insensitive: a fact seen again changes nothing, an older session status
    never replaces a more advanced one, what the Charge reports refunded only grows (a refund
    seen to fail is taken off it), a failed refund stays failed, a closed dispute stays closed
    and an inquiry that became a chargeback never turns back.
    """
    refunded_before = order.refunded_now if order is not None else 0
    if isinstance(fact, SessionFact):
        order = _with_session(order, fact)
    elif order is None:
        raise ValueError(f"a {type(fact).__name__} needs the order's session first")
    else:
        if not (isinstance(fact, RefundFact) and fact.failed):
            _settle_as_paid(order)  # a failed refund says nothing of the payment
        if isinstance(fact, ChargeFact):
            order = _with_charge(order, fact)
        elif isinstance(fact, RefundFact):
            order = _with_refund(order, fact)
        else:
            order = _with_dispute(order, fact)
    changes = _changes_of(order, fact, refunded_before)
    new = [change for change in changes if change.key not in order.changes]
    for change in new:
        order.changes[change.key] = {"change": change.data(), "published": False}
    return order, new


def _with_session(order: Order | None, fact: SessionFact) -> Order:
    session = fact.session
    if order is None:
        order = Order.from_session(session)
    elif session.progress.rank > order.progress.rank:
        order._take_session(session)
    order.payment_intent = order.payment_intent or fact.payment_intent
    return order


def _settle_as_paid(order: Order) -> None:
    """A refund or dispute means the charge succeeded: a delayed payment whose success has not
    been recorded yet (its event is late) is paid, so that `order.paid` comes before
    `order.refunded` and the late event changes nothing (never revoke, then grant)."""
    if order.status != "expired" and not order.payment_failed and not order.paid:
        order.status, order.payment_status = "complete", "paid"


def _with_charge(order: Order, fact: ChargeFact) -> Order:
    order.amount_refunded = max(order.amount_refunded, fact.amount_refunded)
    order.refunded = order.refunded or fact.refunded
    return order


def _with_refund(order: Order, fact: RefundFact) -> Order:
    held = order.refunds.get(fact.refund_id)
    if held is None or not _refund_failed(held):  # a failed or cancelled refund stays so
        order.refunds[fact.refund_id] = {"amount": fact.amount, "status": fact.status}
    return order


def _refund_failed(refund: dict[str, Any]) -> bool:
    return refund.get("status") in REFUND_FAILED_STATUSES


def _with_dispute(order: Order, fact: DisputeFact) -> Order:
    held = order.disputes.get(fact.dispute_id)
    rank, held_rank = _DISPUTE_RANK.get(fact.status, 2), _DISPUTE_RANK.get(held or "", 0)
    if held not in DISPUTE_CLOSED_STATUSES and rank >= held_rank:
        order.disputes[fact.dispute_id] = fact.status
    return order


def is_chargeback(status: str) -> bool:
    """An open or lost chargeback: the money left the merchant (an inquiry's never did)."""
    return status not in INQUIRY_STATUSES and status != "won"


def _changes_of(order: Order, fact: Fact, refunded_before: int) -> list[Change]:  # noqa: PLR0911
    def change(kind: str, key: str, **extra: Any) -> Change:
        return Change(
            type=kind,
            change_id=f"{order.session_id}:{key}",
            session_id=order.session_id,
            occurred_at=fact.occurred_at,
            amount_total=order.amount_total,
            currency=order.currency,
            livemode=order.livemode,
            metadata=dict(order.metadata),
            **extra,
        )

    if isinstance(fact, SessionFact):
        if order.paid:
            return [change(PAID, "paid")]
        if order.payment_failed:
            return [change(PAYMENT_FAILED, "payment_failed")]
        return []
    # A refund or dispute of an order whose paid change is not recorded yet: paid comes first.
    paid = [change(PAID, "paid")] if order.paid else []
    if isinstance(fact, ChargeFact | RefundFact):
        now = order.refunded_now
        # After a refund failed, a new refund is a new change: its keys say how many failed.
        failed = sum(1 for r in order.refunds.values() if _refund_failed(r))
        again = f"_after_{failed}_failed" if failed else ""
        if isinstance(fact, RefundFact) and fact.failed and now < refunded_before:
            key = f"refund_reversed_{fact.refund_id}"
            return [change(REFUND_REVERSED, key, amount_refunded=now)]
        if order.fully_refunded:
            return [*paid, change(REFUNDED, f"refunded{again}", amount_refunded=now)]
        if now > refunded_before:
            key = f"partially_refunded_{now}{again}"
            return [*paid, change(PARTIALLY_REFUNDED, key, amount_refunded=now)]
        return paid
    dispute = {"dispute_id": fact.dispute_id, "dispute_amount": fact.amount}
    status = order.disputes[fact.dispute_id]
    opened = change(
        DISPUTED, f"disputed_{fact.dispute_id}", evidence_due_by=fact.evidence_due_by, **dispute
    )
    if status == "lost":
        lost = change(DISPUTE_LOST, f"dispute_lost_{fact.dispute_id}", **dispute)
        return [*paid, opened, lost]
    if status == "won":  # a chargeback reversed: the same two changes whatever came first
        won = change(DISPUTE_WON, f"dispute_won_{fact.dispute_id}", **dispute)
        return [*paid, opened, won]
    if is_chargeback(status):
        return [*paid, opened]
    return paid


def session_fact(session: SessionStatus, payment_intent: str | None = None) -> SessionFact:
    """A fact from the status path's own read of the session (now)."""
    return SessionFact(session, payment_intent or session.payment_intent, iso_utc())


def facts_of_session(session: SessionStatus) -> list[Fact]:
    """What the status path's read of a session states: the session, and the refunds its charge
    shows (a refund whose webhook has not come, or never will), in the order they happened."""
    refunds = refunds_of_session(session)
    return [session_fact(session), *([] if refunds is None else [refunds])]


def refunds_of_session(session: SessionStatus) -> ChargeFact | None:
    """The refunds a read of a paid session's charge shows, or None."""
    if not (session.paid and session.payment_intent and session.amount_refunded > 0):
        return None
    return ChargeFact(
        payment_intent=session.payment_intent,
        amount_refunded=session.amount_refunded,
        refunded=session.refunded,
        occurred_at=iso_utc(),
    )


def iso_utc(timestamp: int | None = None) -> str:
    """A Unix timestamp (None: now) as a change's `occurred_at`: ISO 8601, UTC, to the second."""
    moment = datetime.now(UTC) if timestamp is None else datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
