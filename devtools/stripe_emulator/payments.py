"""A paid session's money: its PaymentIntent and Charge, then refunds and disputes against them.

Pure bookkeeping: the emulator calls these under its lock and turns their changes into events."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import stripe

from devtools.stripe_emulator import shapes
from devtools.stripe_emulator.state import (
    FAILED_INTENT_STATUS,
    _invalid,
    _metadata,
    _missing,
    _no_such,
    _random_id,
)

DISPUTE_REASONS = (
    "bank_cannot_process", "check_returned", "credit_not_processed", "customer_initiated",
    "debit_not_authorized", "duplicate", "fraudulent", "general", "incorrect_account_details",
    "insufficient_funds", "noncompliant", "product_not_received", "product_unacceptable",
    "subscription_canceled", "unrecognized",
)  # fmt: skip
# How long a merchant has to answer a dispute here; card networks give 7 to 21 days.
DISPUTE_RESPONSE_SECONDS = 7 * 24 * 3600
# An inquiry (warning_*) moves no money and closes as warning_closed; a dispute is won or lost.
OPEN_DISPUTE_STATUSES = ("needs_response", "warning_needs_response")
CLOSED_DISPUTE_STATUSES = {"needs_response": ("won", "lost"), "warning_needs_response": (
    "warning_closed", "won", "lost")}  # fmt: skip
_CARD = {
    "brand": "visa", "country": "US", "exp_month": 12, "exp_year": 2034, "funding": "credit",
    "last4": "4242", "network": "visa",
    "checks": {
        "address_line1_check": None, "address_postal_code_check": "pass", "cvc_check": "pass",
    },
}  # fmt: skip
_BANK_ACCOUNT = {
    "account_holder_type": "individual", "account_type": "checking",
    "bank_name": "STRIPE TEST BANK", "last4": "6789", "routing_number": "110000000",
}  # fmt: skip
# What Checkout copies from a session's payment_intent_data to the PaymentIntent it makes
# (docs.stripe.com/api/checkout/sessions/create#create_checkout_session-payment_intent_data); the
# Connect ones, capture_method and shipping are not modelled.
COPIED_INTENT_DATA = (
    "description", "receipt_email", "setup_future_usage", "statement_descriptor",
    "statement_descriptor_suffix", "transfer_group",
)  # fmt: skip


class Change(NamedTuple):
    """An event to emit: its type, the object it carries, and the fields it changed (or None)."""

    type: str
    object: dict[str, Any]
    previous_attributes: dict[str, Any] | None = None
    livemode: bool | None = None  # for objects without a livemode field (Refund)


def _money(amount: int, currency: str) -> str:
    """An amount as Stripe's error messages write it: `$2.00`, or `2.00 EUR`."""
    return f"${amount / 100:.2f}" if currency == "usd" else f"{amount / 100:.2f} {currency.upper()}"


class Payments:
    """PaymentIntents, Charges, Refunds and Disputes by id, and which session each intent pays."""

    def __init__(self) -> None:
        self.intents: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.disputes: dict[str, dict[str, Any]] = {}
        self.session_of_intent: dict[str, str] = {}

    # --- the session's side: its payment appears, settles or fails ---

    def sync(
        self,
        session: dict[str, Any],
        processing_status: str,
        intent_data: dict[str, Any] | None = None,
    ) -> None:
        """Bring a session's PaymentIntent and Charge in line with the session.

        `processing_status` is the intent's status while the session is unpaid: `processing` for
        a delayed payment still settling, `requires_payment_method` once it failed.
        `intent_data` is the session's `payment_intent_data`, which the PaymentIntent copies.
        """
        intent_id = session.get("payment_intent")
        if session["mode"] != "payment" or not intent_id or session["status"] != "complete":
            return
        paid = session["payment_status"] in ("paid", "no_payment_required")
        status = "succeeded" if paid else processing_status
        now = int(time.time())
        intent = self.intents.get(intent_id)
        if intent is None:
            intent = self.intents[intent_id] = _new_intent(session, intent_data or {}, now)
            self.session_of_intent[intent_id] = session["id"]
        if intent["status"] == status:
            return
        charge = self.charges.get(intent["latest_charge"] or "")
        if charge is None and session["payment_status"] != "no_payment_required":
            # A card pays at once; a delayed method (bank debit) is pending until it settles.
            charge = _new_charge(intent, session, now, delayed=status == "processing")
            self.charges[charge["id"]] = charge
            intent["latest_charge"] = charge["id"]
        intent["status"] = status
        if status == "succeeded":
            intent["amount_received"] = intent["amount"]
            if charge is not None:
                charge.update(
                    status="succeeded", paid=True, captured=True, amount_captured=charge["amount"]
                )
        elif status == FAILED_INTENT_STATUS and charge is not None:
            charge.update(
                status="failed",
                failure_code="insufficient_funds",
                failure_message="The account has insufficient funds to cover this payment.",
            )
            intent["last_payment_error"] = shapes.build(
                stripe.PaymentIntent.LastPaymentError,
                {
                    "code": "insufficient_funds",
                    "message": charge["failure_message"],
                    "type": "invalid_request_error",
                },
            )

    # --- lookups, as a key of one mode may see them ---

    def intent(self, intent_id: str, livemode: bool | None = None) -> dict[str, Any]:
        return _visible(self.intents, "payment_intent", intent_id, livemode, "intent")

    def charge(self, charge_id: str, livemode: bool | None = None) -> dict[str, Any]:
        return _visible(self.charges, "charge", charge_id, livemode, "charge")

    def refund(self, refund_id: str, livemode: bool | None = None) -> dict[str, Any]:
        refund = self.refunds.get(refund_id)
        # A Refund has no livemode field: its charge's mode is its mode.
        if refund is None or livemode not in (None, self.charges[refund["charge"]]["livemode"]):
            raise _no_such("refund", refund_id)
        return refund

    def dispute(self, dispute_id: str, livemode: bool | None = None) -> dict[str, Any]:
        return _visible(self.disputes, "dispute", dispute_id, livemode, "dispute")

    def session_of_charge(self, charge: dict[str, Any]) -> str | None:
        return self.session_of_intent.get(charge["payment_intent"] or "")

    def refunds_of(self, charge: dict[str, Any]) -> dict[str, Any]:
        """A Charge's `refunds` list (sent only when expanded), newest first."""
        found = [r for r in reversed(self.refunds.values()) if r["charge"] == charge["id"]]
        url = f"/v1/charges/{charge['id']}/refunds"
        return {"object": "list", "data": found, "has_more": False, "url": url}

    # --- refunds ---

    def create_refund(
        self, params: dict[str, Any], livemode: bool
    ) -> tuple[dict[str, Any], list[Change]]:
        """POST /v1/refunds, its parameters checked: refund, and say what changed."""
        charge = self._refundable_charge(params, livemode)
        remaining = charge["amount"] - charge["amount_refunded"]
        if charge["refunded"] or remaining <= 0:
            raise _invalid(
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        if charge["disputed"] and self._open_dispute_of(charge["id"]) is not None:
            raise _invalid(
                f"Charge {charge['id']} has been charged back; cannot issue a refund.",
                code="charge_disputed",
            )
        amount = remaining
        if params.get("amount") is not None:
            amount = int(params["amount"])
            if amount > remaining:
                raise _invalid(
                    f"Refund amount ({_money(amount, charge['currency'])}) is greater than "
                    f"unrefunded amount on charge ({_money(remaining, charge['currency'])})",
                    "amount",
                    code="amount_too_large",
                )
        refund = shapes.build(
            stripe.Refund,
            {
                "id": _random_id("re_"),
                "object": "refund",
                "amount": amount,
                "balance_transaction": _random_id("txn_"),
                "charge": charge["id"],
                "created": int(time.time()),
                "currency": charge["currency"],
                "destination_details": _refund_destination(charge),
                "metadata": _metadata(params.get("metadata")),
                "payment_intent": charge["payment_intent"],
                "payment_method": charge["payment_method"],
                "reason": params.get("reason"),
                "status": "succeeded",
            },
        )
        self.refunds[refund["id"]] = refund
        previous = {"amount_refunded": charge["amount_refunded"], "refunded": charge["refunded"]}
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        return dict(refund), [
            Change("charge.refunded", dict(charge), previous),
            Change("refund.created", dict(refund), livemode=charge["livemode"]),
        ]

    def fail_refund(self, refund_id: str, status: str) -> tuple[dict[str, Any], list[Change]]:
        """A succeeded refund fails (the bank returned it) or is cancelled: the money stays
        (what changes and what is emitted: docs/local-browser.md)."""
        if status not in ("failed", "canceled"):
            raise _invalid("status must be one of failed, canceled", "status")
        refund = self.refund(refund_id)
        if refund["status"] != "succeeded":
            raise _invalid(f"Refund {refund_id} is {refund['status']}: only a succeeded one can.")
        charge = self.charges[refund["charge"]]
        refund["status"] = status
        if status == "failed":
            refund["failure_reason"] = "unknown"
            refund["failure_balance_transaction"] = _random_id("txn_")
        charge["amount_refunded"] -= refund["amount"]
        charge["refunded"] = False
        livemode = charge["livemode"]
        previous = {"status": "succeeded"}
        changes = [
            Change("refund.updated", dict(refund), previous, livemode=livemode),
            Change("charge.refund.updated", dict(refund), previous, livemode=livemode),
        ]
        if status == "failed":
            changes.append(Change("refund.failed", dict(refund), livemode=livemode))
        return dict(refund), changes

    def _refundable_charge(self, params: dict[str, Any], livemode: bool) -> dict[str, Any]:
        charge_id, intent_id = params.get("charge"), params.get("payment_intent")
        if intent_id is not None:
            intent = self._param_object(self.intents, "payment_intent", intent_id, livemode)
            if charge_id is not None and intent["latest_charge"] != charge_id:
                raise _invalid(
                    f"The charge {charge_id} does not belong to the PaymentIntent {intent_id}.",
                    "charge",
                )
            charge_id = intent["latest_charge"]
            if charge_id is None or intent["status"] != "succeeded":
                raise _invalid(
                    f"This PaymentIntent ({intent_id}) does not have a successful charge to "
                    "refund.",
                    "payment_intent",
                )
        charge = self._param_object(self.charges, "charge", charge_id, livemode)
        if charge["status"] != "succeeded":
            raise _invalid(
                f"Charge {charge['id']} has not succeeded, so it cannot be refunded.", "charge"
            )
        return charge

    @staticmethod
    def _param_object(
        store: dict[str, dict[str, Any]], kind: str, object_id: Any, livemode: bool
    ) -> dict[str, Any]:
        found = store.get(object_id) if isinstance(object_id, str) else None
        if found is None or found["livemode"] != livemode:
            raise _no_such(kind, object_id, kind)
        return found

    # --- disputes (a cardholder's bank, through the emulator's helpers) ---

    def open_dispute(
        self,
        payment: str,
        *,
        amount: int | None = None,
        reason: str = "fraudulent",
        inquiry: bool = False,
    ) -> tuple[dict[str, Any], list[Change]]:
        """A cardholder disputes the charge of `payment` (a `pi_` or `ch_` id)."""
        if not isinstance(inquiry, bool):
            raise _invalid("inquiry must be true or false", "inquiry")
        if not isinstance(payment, str) or not payment:
            raise _missing("payment")
        if payment.startswith("pi_"):
            intent = self.intent(payment)
            charge = self.charges.get(intent["latest_charge"] or "")
            if charge is None:
                raise _invalid(f"PaymentIntent {payment} has no charge to dispute.", "payment")
        else:
            charge = self.charge(payment)
        if charge["status"] != "succeeded":
            raise _invalid(f"Charge {charge['id']} has not succeeded: nothing to dispute.")
        if self._open_dispute_of(charge["id"]) is not None:
            raise _invalid(f"Charge {charge['id']} already has an open dispute.", "charge")
        if reason not in DISPUTE_REASONS:
            raise _invalid(f"reason must be one of {', '.join(DISPUTE_REASONS)}", "reason")
        if amount is None:
            amount = charge["amount"]
        elif isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise _invalid("amount must be a positive integer", "amount")
        elif amount > charge["amount"]:
            raise _invalid("amount cannot exceed the charge's amount", "amount")
        now = int(time.time())
        status = "warning_needs_response" if inquiry else "needs_response"
        network_reason_code = "10.4" if reason == "fraudulent" else "13.1"
        dispute = shapes.build(
            stripe.Dispute,
            {
                "id": _random_id("dp_"),
                "object": "dispute",
                "amount": amount,
                "charge": charge["id"],
                "created": now,
                "currency": charge["currency"],
                "evidence": {},  # every piece of evidence null until the merchant submits some
                "evidence_details": {
                    "due_by": now + DISPUTE_RESPONSE_SECONDS,
                    "enhanced_eligibility": {},
                    "submission_count": 0,
                    "submission_method": "not_submitted",
                },
                "is_charge_refundable": inquiry,  # a chargeback has already taken the money back
                "livemode": charge["livemode"],
                "metadata": {},
                "network_reason_code": network_reason_code,
                "payment_intent": charge["payment_intent"],
                "payment_method_details": {
                    "card": {
                        "brand": "visa",
                        "case_type": "inquiry" if inquiry else "chargeback",
                        "network_reason_code": network_reason_code,
                    },
                    "type": "card",
                },
                "reason": reason,
                "status": status,
            },
        )
        self.disputes[dispute["id"]] = dispute
        charge["disputed"] = True
        changes = [Change("charge.dispute.created", dict(dispute))]
        if not inquiry:  # Stripe debits a chargeback's amount as soon as it opens
            changes.append(Change("charge.dispute.funds_withdrawn", dict(dispute)))
        return dict(dispute), changes

    def close_dispute(self, dispute_id: str, status: str) -> tuple[dict[str, Any], list[Change]]:
        """The bank decides: `won` or `lost` (`warning_closed` for an inquiry that went away)."""
        dispute = self.dispute(dispute_id)
        allowed = CLOSED_DISPUTE_STATUSES.get(dispute["status"])
        if allowed is None:
            raise _invalid(f"Dispute {dispute_id} is already closed ({dispute['status']}).")
        if status not in allowed:
            raise _invalid(f"status must be one of {', '.join(allowed)}", "status")
        previous = {"status": dispute["status"]}
        withdrew = dispute["status"] == "needs_response"
        dispute["status"] = status
        dispute["is_charge_refundable"] = False
        changes = []
        if status == "won" and withdrew:
            changes.append(Change("charge.dispute.funds_reinstated", dict(dispute)))
        changes.append(Change("charge.dispute.closed", dict(dispute), previous))
        return dict(dispute), changes

    def _open_dispute_of(self, charge_id: str) -> dict[str, Any] | None:
        return next(
            (
                d
                for d in self.disputes.values()
                if d["charge"] == charge_id and d["status"] in OPEN_DISPUTE_STATUSES
            ),
            None,
        )


def _visible(
    store: dict[str, dict[str, Any]],
    kind: str,
    object_id: str,
    livemode: bool | None,
    param: str,
) -> dict[str, Any]:
    found = store.get(object_id)
    if found is None or (livemode is not None and found["livemode"] != livemode):
        raise _no_such(kind, object_id, param)
    return found


def _new_intent(session: dict[str, Any], intent_data: dict[str, Any], now: int) -> dict[str, Any]:
    """The PaymentIntent Checkout makes for a session: its amount, and its payment_intent_data."""
    intent_id = session["payment_intent"]
    copied = {name: intent_data[name] for name in COPIED_INTENT_DATA if name in intent_data}
    return shapes.build(
        stripe.PaymentIntent,
        {
            "id": intent_id,
            "object": "payment_intent",
            "amount": session["amount_total"] or 0,
            "amount_capturable": 0,
            "amount_received": 0,
            "capture_method": "automatic_async",
            "client_secret": _random_id(f"{intent_id}_secret_"),
            "confirmation_method": "automatic",
            "created": now,
            "currency": session["currency"],
            "customer": session.get("customer"),
            "livemode": session["livemode"],
            # payment_intent_data.metadata, never the session's own metadata.
            "metadata": _metadata(intent_data.get("metadata")),
            "payment_method": _random_id("pm_"),
            "payment_method_types": list(session.get("payment_method_types") or ["card"]),
            "status": "",  # set by sync(), which then creates the charge
            **{name: value or None for name, value in copied.items()},
        },
    )


def _new_charge(
    intent: dict[str, Any], session: dict[str, Any], now: int, *, delayed: bool
) -> dict[str, Any]:
    details = session.get("customer_details") or {}
    charge_id = _random_id("ch_")
    method = (
        {"type": "us_bank_account", "us_bank_account": dict(_BANK_ACCOUNT)}
        if delayed
        else {"type": "card", "card": dict(_CARD)}
    )
    return shapes.build(
        stripe.Charge,
        {
            "id": charge_id,
            "object": "charge",
            "amount": intent["amount"],
            "amount_captured": 0,
            "amount_refunded": 0,
            "balance_transaction": _random_id("txn_"),
            "billing_details": {
                "address": details.get("address"),
                "email": details.get("email"),
                "name": details.get("name"),
                "phone": details.get("phone"),
            },
            "captured": False,
            "created": now,
            "currency": intent["currency"],
            "customer": intent["customer"],
            "description": intent["description"],
            "disputed": False,
            "fraud_details": {},
            "livemode": intent["livemode"],
            # A charge made by a PaymentIntent starts with the intent's metadata.
            "metadata": dict(intent["metadata"]),
            "outcome": {
                "network_status": "approved_by_network",
                "reason": None,
                "risk_level": "normal",
                "seller_message": "Payment complete.",
                "type": "authorized",
            },
            "paid": False,
            "payment_intent": intent["id"],
            "payment_method": intent["payment_method"],
            "payment_method_details": method,
            "receipt_email": intent["receipt_email"],
            "receipt_url": f"https://pay.stripe.com/receipts/payment/{charge_id}",
            "refunded": False,
            "statement_descriptor": intent["statement_descriptor"],
            "statement_descriptor_suffix": intent["statement_descriptor_suffix"],
            "status": "pending",
            "transfer_group": intent["transfer_group"],
        },
    )


def _refund_destination(charge: dict[str, Any]) -> dict[str, Any]:
    """Where a refund's money goes: back to the card, or to the debited bank account."""
    if charge["payment_method_details"]["type"] == "card":
        return {"type": "card", "card": {"type": "refund"}}
    return {"type": "us_bank_transfer", "us_bank_transfer": {}}
