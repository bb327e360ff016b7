"""A Checkout Session as this service sees it, and every rule about its state.

Which states are final, which may be fulfilled, what the status endpoint may reveal, and what an
order record or a log record holds: each is decided here and nowhere else. No Stripe, HTTP or
Google imports: the cache, the ledger, fulfilment and the webhook depend on this, not on the
gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

# Metadata keys this service sets; status responses return these and nothing else.
OUR_METADATA_KEYS = ("imageId",)


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
    amount_total: int | None = field(default=None, compare=False)
    currency: str | None = field(default=None, compare=False)
    livemode: bool = field(default=False, compare=False)

    @property
    def terminal(self) -> bool:
        """Nothing about it can change again, so it may be cached forever.

        `complete` + `unpaid` is not final: a delayed payment method (bank debit) later turns
        it `paid` (checkout.session.async_payment_succeeded) or fails it.
        """
        if self.status == "complete":
            return self.payment_status != "unpaid"
        return self.status == "expired"

    @property
    def paid(self) -> bool:
        """Complete, and paid or free (`no_payment_required`): what Stripe says may be fulfilled."""
        return self.status == "complete" and self.payment_status != "unpaid"

    def public(self) -> dict[str, Any]:
        """The status endpoint's answer: status, payment status and our own metadata only."""
        return {
            "status": self.status,
            "payment_status": self.payment_status,
            "metadata": dict(self.metadata),
        }

    def public_only(self) -> SessionStatus:
        """This status without what the endpoint never returns (amounts, livemode): for caching."""
        return SessionStatus(
            session_id=self.session_id,
            status=self.status,
            payment_status=self.payment_status,
            metadata=dict(self.metadata),
        )

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

    def order_fields(self, *, final: bool) -> dict[str, Any]:
        """What an order record holds about its session: ids, amounts, status; no customer data.

        `final` says the status can no longer change when only the caller knows it (a failed
        payment leaves `complete` + `unpaid`).
        """
        return {
            "status": self.status,
            "payment_status": self.payment_status,
            "imageId": self.metadata.get("imageId"),
            "amount_total": self.amount_total,
            "currency": self.currency,
            "livemode": self.livemode,
            "final": final or self.terminal,
        }

    @classmethod
    def from_stripe(cls, session: SessionFields) -> SessionStatus:
        """From a Checkout Session as Stripe sends it (a StripeObject, or an event's dict)."""
        metadata = _field(session, "metadata")
        return cls(
            session_id=session["id"],
            status=_field(session, "status") or "open",
            payment_status=_field(session, "payment_status") or "unpaid",
            metadata={k: str(metadata[k]) for k in OUR_METADATA_KEYS if metadata and k in metadata},
            amount_total=_field(session, "amount_total"),
            currency=_field(session, "currency"),
            livemode=bool(_field(session, "livemode")),
        )


def settled(session_id: str, order: Mapping[str, Any] | None) -> SessionStatus | None:
    """The status an order record answers for, when it is final and nothing is left to do."""
    if not order or not order.get("final"):
        return None
    session = SessionStatus(
        session_id=session_id,
        status=order["status"],
        payment_status=order["payment_status"],
        metadata={"imageId": order["imageId"]} if order.get("imageId") is not None else {},
        amount_total=order.get("amount_total"),
        currency=order.get("currency"),
        livemode=bool(order.get("livemode")),
    )
    if session.paid and not order.get("fulfilled_at"):
        return None  # paid but not yet fulfilled: the caller must still try
    return session


def _field(obj: SessionFields, name: str) -> Any:
    # StripeObject supports `in` and [] but not .get(): it is not a dict.
    return obj[name] if name in obj else None  # noqa: SIM401
