"""What this deployment sells, and whether a Checkout Session is one of ours that sold it.

Ours: this deployment's marker; sold it: the line items charged (docs/webhooks.md, "Only our")."""

from __future__ import annotations

from dataclasses import dataclass

from checkout.config import Settings
from checkout.orders.session import MARKER_KEY, SessionStatus


@dataclass(frozen=True)
class Refusal:
    """Why a session is not fulfilled here: a short machine `reason` and a sentence for the log."""

    reason: str
    detail: str
    ours: bool  # marked by this deployment: a customer of ours paid, so an operator must look


@dataclass(frozen=True)
class Catalogue:
    deployment_id: str
    amount: int
    currency: str
    price_id: str | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Catalogue:
        return cls(
            deployment_id=settings.deployment_id,
            amount=settings.price_amount,
            currency=settings.price_currency,
            price_id=settings.stripe_price_id,
        )

    @property
    def needs_line_items(self) -> bool:
        """A Dashboard price can be checked only against the session's line items."""
        return self.price_id is not None

    def is_ours(self, session: SessionStatus) -> bool:
        return session.marker == self.deployment_id

    def refusal(self, session: SessionStatus) -> Refusal | None:
        """Why `session` must not be fulfilled by this deployment; None if it may be."""
        if session.marker is None:
            return Refusal("not_ours", f"no {MARKER_KEY} in its metadata", ours=False)
        if session.marker != self.deployment_id:
            return Refusal(
                "other_deployment",
                f"{MARKER_KEY} is {session.marker[:60]!r}, this deployment is "
                f"{self.deployment_id!r}",
                ours=False,
            )
        if self.price_id is not None:
            expected = ((self.price_id, 1),)
            if session.line_items != expected:
                sold = "unknown" if session.line_items is None else list(session.line_items)
                return Refusal(
                    "price_mismatch",
                    f"line items {sold} are not one of {self.price_id}",
                    ours=True,
                )
        elif (session.amount_total, session.currency) != (self.amount, self.currency):
            return Refusal(
                "amount_mismatch",
                f"it charged {session.amount_total} {session.currency}, this deployment sells "
                f"{self.amount} {self.currency}",
                ours=True,
            )
        return None
