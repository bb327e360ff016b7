"""A Checkout Session as this service sees it, and every rule about its state, decided only here.

No Stripe, HTTP or Google imports: the cache, ledger, fulfilment and webhook depend on this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

# Metadata keys this service sets that status responses return; nothing else is returned.
OUR_METADATA_KEYS = ("imageId",)
# The metadata key that marks a session as this deployment's (its value: DEPLOYMENT_ID). Server
# side only: the browser never sets it and the status response never shows it (docs/webhooks.md).
MARKER_KEY = "checkout_deployment"
# PaymentIntent statuses that mean a submitted payment failed (the intent went back to asking
# for a payment method) or was abandoned: a complete but unpaid session will never be paid.
FAILED_PAYMENT_INTENT = frozenset({"requires_payment_method", "canceled"})


class SessionFields(Protocol):
    """What a session read from Stripe offers: `in` and [] (a StripeObject is not a dict)."""

    def __contains__(self, name: object, /) -> bool: ...
    def __getitem__(self, name: str, /) -> Any: ...


@dataclass(frozen=True)
class CreatedSession:
    session_id: str
    client_secret: str


@dataclass(frozen=True)
class SessionStatus:
    """What the status endpoint may reveal, plus the order facts fulfilment needs."""

    session_id: str
    status: str
    payment_status: str
    metadata: dict[str, str]
    # A delayed payment (bank debit) failed: `complete` + `unpaid` for good.
    payment_failed: bool = False
    amount_total: int | None = field(default=None, compare=False)
    currency: str | None = field(default=None, compare=False)
    livemode: bool = field(default=False, compare=False)
    marker: str | None = field(default=None, compare=False)  # metadata[MARKER_KEY], never shown
    # (price id, quantity) per line item, when Stripe sent them (expand[]=line_items); else None.
    line_items: tuple[tuple[str | None, int], ...] | None = field(default=None, compare=False)
    payment_intent: str | None = field(default=None, compare=False)  # its id, once there is one
    # From the PaymentIntent's Charge, when Stripe sent it (expand[]=payment_intent.latest_charge).
    amount_refunded: int = field(default=0, compare=False)
    refunded: bool = field(default=False, compare=False)  # fully
    disputed: bool = field(default=False, compare=False)  # the Charge was ever disputed

    @property
    def terminal(self) -> bool:
        """Nothing about it can change again, so it may be cached forever.

        `complete` + `unpaid` is final only once the delayed payment failed: until then a
        bank debit may still turn it `paid` (checkout.session.async_payment_succeeded).
        """
        if self.status == "complete":
            return self.payment_status != "unpaid" or self.payment_failed
        return self.status == "expired"

    @property
    def outcome(self) -> str:
        """open, processing, paid, failed, expired or refunded: what Stripe's session and charge
        say (disputes are the ledger's: a Charge does not tell a won one from an open one)."""
        if self.status != "complete":
            return "expired" if self.status == "expired" else "open"
        if self.payment_status != "unpaid":
            return "refunded" if self.refunded else "paid"
        return "failed" if self.payment_failed else "processing"

    @property
    def paid(self) -> bool:
        """Complete, and paid or free (`no_payment_required`): what Stripe says may be fulfilled."""
        return self.status == "complete" and self.payment_status != "unpaid"

    def public(self) -> dict[str, Any]:
        """The status endpoint's answer: status, payment status, outcome, our own metadata."""
        return {
            "status": self.status,
            "payment_status": self.payment_status,
            "outcome": self.outcome,
            "amount_refunded": self.amount_refunded,
            "metadata": dict(self.metadata),
        }

    def log_record(self, event_id: str | None = None) -> dict[str, Any]:
        """The fields of a checkout log record: ids and amounts, never secrets or customer data."""
        return {
            "session_id": self.session_id,
            "imageId": self.metadata.get("imageId"),
            "amount_total": self.amount_total,
            "currency": self.currency,
            "payment_status": self.payment_status,
            "livemode": self.livemode,
            "event_id": event_id,
        }

    @classmethod
    def from_stripe(cls, session: SessionFields, *, payment_failed: bool = False) -> SessionStatus:
        """From a Checkout Session as Stripe sends it (a StripeObject, or an event's dict).

        `payment_failed` is for callers who know it otherwise (the async_payment_failed event);
        an expanded PaymentIntent tells it by itself.
        """
        metadata = _field(session, "metadata")
        status = _field(session, "status") or "open"
        payment_status = _field(session, "payment_status") or "unpaid"
        intent = _field(session, "payment_intent")
        intent_status = _field(intent, "status") if intent and not isinstance(intent, str) else None
        if status == "complete" and payment_status == "unpaid":
            payment_failed = payment_failed or intent_status in FAILED_PAYMENT_INTENT
        else:
            payment_failed = False
        marker = metadata[MARKER_KEY] if metadata and MARKER_KEY in metadata else None
        charge = _field(intent, "latest_charge") if intent and not isinstance(intent, str) else None
        charge = None if isinstance(charge, str) else charge
        return cls(
            session_id=session["id"],
            status=status,
            payment_status=payment_status,
            metadata={k: str(metadata[k]) for k in OUR_METADATA_KEYS if metadata and k in metadata},
            payment_failed=payment_failed,
            amount_total=_field(session, "amount_total"),
            currency=_field(session, "currency"),
            livemode=bool(_field(session, "livemode")),
            marker=None if marker is None else str(marker),
            line_items=_line_items(_field(session, "line_items")),
            payment_intent=(intent if isinstance(intent, str) else _field(intent, "id"))
            if intent
            else None,
            amount_refunded=int(_field(charge, "amount_refunded") or 0) if charge else 0,
            refunded=bool(_field(charge, "refunded")) if charge else False,
            disputed=bool(_field(charge, "disputed")) if charge else False,
        )


def _line_items(items: Any) -> tuple[tuple[str | None, int], ...] | None:
    """(price id, quantity) of each expanded line item; None when they were not expanded."""
    if not items or isinstance(items, str) or _field(items, "has_more"):
        return None  # not sent, or not all of them: unknown, which never matches a price
    rows = []
    for item in _field(items, "data") or ():
        price = _field(item, "price")
        price_id = price if isinstance(price, str) or price is None else _field(price, "id")
        rows.append((price_id, int(_field(item, "quantity") or 0)))
    return tuple(rows)


def _field(obj: SessionFields, name: str) -> Any:
    # StripeObject supports `in` and [] but not .get(): it is not a dict.
    return obj[name] if name in obj else None  # noqa: SIM401
