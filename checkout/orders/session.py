"""A Checkout Session as this service sees it, and every rule about its state, decided only here.

No Stripe, HTTP or Google imports: the cache, ledger, fulfilment and webhook depend on this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Metadata keys this service sets that status responses return; nothing else is returned.
OUR_METADATA_KEYS = ("imageId",)
# The metadata key that marks a session as this deployment's (its value: DEPLOYMENT_ID). Server
# side only: the browser never sets it and the status response never shows it (docs/webhooks.md).
MARKER_KEY = "checkout_deployment"


@dataclass(frozen=True)
class Progress:
    """How far a session has gone and what its customer is told: the one state rule of a
    Checkout Session (SessionStatus) and of its order (orders/model.py's Order) alike."""

    status: str  # open, complete, expired
    payment_status: str  # paid, unpaid, no_payment_required
    # A delayed payment (bank debit) failed: `complete` + `unpaid` for good.
    payment_failed: bool

    @property
    def rank(self) -> int:
        """0 open, 1 complete but not paid yet, 2 settled for good: a later read of a lower rank
        never replaces a higher one."""
        if self.status == "complete" and self.payment_status == "unpaid":
            return 2 if self.payment_failed else 1
        return 0 if self.status == "open" else 2

    @property
    def settled(self) -> bool:
        """Nothing about the session can change again: paid or free, failed, or expired.

        `complete` + `unpaid` is settled only once the delayed payment failed: until then a
        bank debit may still turn it `paid` (checkout.session.async_payment_succeeded).
        """
        return self.rank == 2 and self.status in ("complete", "expired")

    @property
    def paid(self) -> bool:
        """Complete, and paid or free (`no_payment_required`): what may be fulfilled."""
        return self.status == "complete" and self.payment_status != "unpaid"

    def outcome(self, paid_as: str) -> str:
        """open, processing, failed or expired; `paid_as` once paid (paid, refunded, disputed)."""
        if self.status != "complete":
            return "expired" if self.status == "expired" else "open"
        if self.payment_status == "unpaid":
            return "failed" if self.payment_failed else "processing"
        return paid_as

    def answer(
        self, outcome: str, amount_refunded: int, metadata: dict[str, str]
    ) -> dict[str, Any]:
        """The status endpoint's answer: status, payment status, outcome, our own metadata."""
        return {
            "status": self.status,
            "payment_status": self.payment_status,
            "outcome": outcome,
            "amount_refunded": amount_refunded,
            "metadata": dict(metadata),
        }


@dataclass(frozen=True)
class CreatedSession:
    session_id: str
    client_secret: str


class Staged:
    """A session's state fields, as a SessionStatus or an Order holds them: its Progress."""

    status: str
    payment_status: str
    payment_failed: bool

    @property
    def progress(self) -> Progress:
        return Progress(self.status, self.payment_status, self.payment_failed)

    @property
    def paid(self) -> bool:
        """Complete, and paid or free (`no_payment_required`): what may be fulfilled."""
        return self.progress.paid


@dataclass(frozen=True)
class SessionStatus(Staged):
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
        """Nothing about it can change again, so it may be cached forever."""
        return self.progress.settled

    @property
    def outcome(self) -> str:
        """open, processing, paid, failed, expired or refunded: what Stripe's session and charge
        say (disputes are the ledger's: a Charge does not tell a won one from an open one)."""
        return self.progress.outcome("refunded" if self.refunded else "paid")

    def public(self) -> dict[str, Any]:
        """The status endpoint's answer: status, payment status, outcome, our own metadata."""
        return self.progress.answer(self.outcome, self.amount_refunded, self.metadata)

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
