"""A paid session's money: its PaymentIntent and Charge, then refunds and disputes against them.

Pure bookkeeping, as in `state`: the emulator calls these under its lock and turns the changes they
return into events. Objects carry the fields Stripe's API reference (and stripe-python's resource
classes) give them; nested details this project never reads are left out.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from devtools.stripe_emulator.form_params import parse_int, parse_metadata, reject_unknown
from devtools.stripe_emulator.state import (
    FAILED_INTENT_STATUS,
    StripeEmulatorError,
    _invalid,
    _missing,
    _random_id,
)

REFUND_PARAMS = frozenset(
    {
        "amount", "charge", "currency", "customer", "expand", "instructions_email", "metadata",
        "origin", "payment_intent", "reason", "refund_application_fee", "reverse_transfer",
    }
)  # fmt: skip
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
DISPUTE_REASONS = (
    "bank_cannot_process", "check_returned", "credit_not_processed", "customer_initiated",
    "debit_not_authorized", "duplicate", "fraudulent", "general", "incorrect_account_details",
    "insufficient_funds", "noncompliant", "product_not_received", "product_unacceptable",
    "subscription_canceled", "unrecognized",
)  # fmt: skip
# How long a merchant has to answer a dispute here; card networks give 7 to 21 days.
DISPUTE_RESPONSE_SECONDS = 7 * 24 * 3600
DISPUTE_EVIDENCE_FIELDS = (
    "access_activity_log", "billing_address", "cancellation_policy",
    "cancellation_policy_disclosure", "cancellation_rebuttal", "customer_communication",
    "customer_email_address", "customer_name", "customer_purchase_ip", "customer_signature",
    "duplicate_charge_documentation", "duplicate_charge_explanation", "duplicate_charge_id",
    "product_description", "receipt", "refund_policy", "refund_policy_disclosure",
    "refund_refusal_explanation", "service_date", "service_documentation", "shipping_address",
    "shipping_carrier", "shipping_date", "shipping_documentation", "shipping_tracking_number",
    "uncategorized_file", "uncategorized_text",
)  # fmt: skip
# An inquiry (warning_*) moves no money and closes as warning_closed; a dispute is won or lost.
OPEN_DISPUTE_STATUSES = ("needs_response", "warning_needs_response")
CLOSED_DISPUTE_STATUSES = {"needs_response": ("won", "lost"), "warning_needs_response": (
    "warning_closed", "won", "lost")}  # fmt: skip
_CARD = {
    "brand": "visa", "country": "US", "exp_month": 12, "exp_year": 2034, "funding": "credit",
    "last4": "4242", "network": "visa",
}  # fmt: skip
_BANK_ACCOUNT = {
    "account_holder_type": "individual", "account_type": "checking",
    "bank_name": "STRIPE TEST BANK", "last4": "6789", "routing_number": "110000000",
}  # fmt: skip


class Change(NamedTuple):
    """An event to emit: its type, the object it carries, and the fields it changed (or None)."""

    type: str
    object: dict[str, Any]
    previous_attributes: dict[str, Any] | None = None
    livemode: bool | None = None  # for objects without a livemode field (Refund)


def _no_such(kind: str, object_id: Any, param: str = "id") -> StripeEmulatorError:
    return StripeEmulatorError(
        404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param
    )


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

    def sync(self, session: dict[str, Any], processing_status: str) -> None:
        """Bring a session's PaymentIntent and Charge in line with the session.

        `processing_status` is the intent's status while the session is unpaid: `processing` for
        a delayed payment still settling, `requires_payment_method` once it failed.
        """
        intent_id = session.get("payment_intent")
        if session["mode"] != "payment" or not intent_id or session["status"] != "complete":
            return
        paid = session["payment_status"] in ("paid", "no_payment_required")
        status = "succeeded" if paid else processing_status
        now = int(time.time())
        intent = self.intents.get(intent_id)
        if intent is None:
            intent = self.intents[intent_id] = _new_intent(session, now)
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
            intent["last_payment_error"] = {
                "code": "insufficient_funds",
                "message": charge["failure_message"],
                "type": "invalid_request_error",
            }

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

    # --- refunds ---

    def create_refund(
        self, params: dict[str, Any], livemode: bool
    ) -> tuple[dict[str, Any], list[Change]]:
        """POST /v1/refunds: validate as Stripe does, refund, and say what changed."""
        reject_unknown(params, REFUND_PARAMS)
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
            amount = parse_int(params["amount"], "amount", minimum=1)
            if amount > remaining:
                raise _invalid(
                    f"Refund amount ({_money(amount, charge['currency'])}) is greater than "
                    f"unrefunded amount on charge ({_money(remaining, charge['currency'])})",
                    "amount",
                    code="amount_too_large",
                )
        reason = params.get("reason")
        if reason is not None and reason not in REFUND_REASONS:
            raise _invalid(
                "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer",
                "reason",
            )
        metadata = parse_metadata(params.get("metadata"))
        refund = {
            "id": _random_id("re_"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": _random_id("txn_"),
            "charge": charge["id"],
            "created": int(time.time()),
            "currency": charge["currency"],
            "destination_details": None,
            "metadata": metadata,
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "succeeded",
            "transfer_reversal": None,
        }
        self.refunds[refund["id"]] = refund
        previous = {"amount_refunded": charge["amount_refunded"], "refunded": charge["refunded"]}
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        return dict(refund), [
            Change("charge.refunded", dict(charge), previous),
            Change("refund.created", dict(refund), livemode=charge["livemode"]),
        ]

    def _refundable_charge(self, params: dict[str, Any], livemode: bool) -> dict[str, Any]:
        charge_id, intent_id = params.get("charge"), params.get("payment_intent")
        if charge_id is None and intent_id is None:
            raise _invalid(
                "One of the following params should be provided for this request: "
                "payment_intent or charge.",
                "payment_intent",
            )
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
        dispute = {
            "id": _random_id("dp_"),
            "object": "dispute",
            "amount": amount,
            "balance_transactions": [],
            "charge": charge["id"],
            "created": now,
            "currency": charge["currency"],
            "enhanced_eligibility_types": [],
            "evidence": dict.fromkeys(DISPUTE_EVIDENCE_FIELDS),
            "evidence_details": {
                "due_by": now + DISPUTE_RESPONSE_SECONDS,
                "enhanced_eligibility": {},
                "has_evidence": False,
                "past_due": False,
                "submission_count": 0,
                "submission_method": "not_submitted",
            },
            "is_charge_refundable": inquiry,  # a chargeback has already taken the money back
            "livemode": charge["livemode"],
            "metadata": {},
            "network_reason_code": "10.4" if reason == "fraudulent" else "13.1",
            "payment_intent": charge["payment_intent"],
            "payment_method_details": {
                "card": {"brand": "visa", "case_type": "inquiry" if inquiry else "chargeback"},
                "type": "card",
            },
            "reason": reason,
            "status": status,
        }
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


def _new_intent(session: dict[str, Any], now: int) -> dict[str, Any]:
    intent_id = session["payment_intent"]
    return {
        "id": intent_id,
        "object": "payment_intent",
        "amount": session["amount_total"] or 0,
        "amount_capturable": 0,
        "amount_received": 0,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic_async",
        "client_secret": _random_id(f"{intent_id}_secret_"),
        "confirmation_method": "automatic",
        "created": now,
        "currency": session["currency"],
        "customer": session.get("customer"),
        "description": None,
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": session["livemode"],
        # Checkout copies payment_intent_data.metadata here, never the session's metadata.
        "metadata": {},
        "next_action": None,
        "payment_method": _random_id("pm_"),
        "payment_method_types": list(session.get("payment_method_types") or ["card"]),
        "processing": None,
        "receipt_email": None,
        "setup_future_usage": None,
        "shipping": None,
        "statement_descriptor": None,
        "status": "",  # set by sync(), which then creates the charge
    }


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
    return {
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
        "description": None,
        "disputed": False,
        "failure_code": None,
        "failure_message": None,
        "livemode": intent["livemode"],
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
        "receipt_email": None,
        "receipt_url": f"https://pay.stripe.com/receipts/payment/{charge_id}",
        "refunded": False,
        "status": "pending",
    }
