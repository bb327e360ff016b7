"""Stripe's JSON made typed: a Checkout Session (`session_status`), and an event checked as Stripe
documents its fields with the fact it states (`fact_of_event`), else MalformedEvent, a logged
refusal, never a 500 (docs/webhooks.md). The order model reads no Stripe JSON."""

from __future__ import annotations

import re
from typing import Any, Protocol

from checkout.errors import CheckoutError
from checkout.orders.model import (
    CHARGE_EVENTS,
    DISPUTE_EVENTS,
    PAYMENT_FAILED_EVENT,
    REFUND_EVENTS,
    SESSION_EVENTS,
    ChargeFact,
    DisputeFact,
    Fact,
    RefundFact,
    SessionFact,
    iso_utc,
)
from checkout.orders.session import MARKER_KEY, OUR_METADATA_KEYS, SessionStatus

# 9999-12-31T23:59:59Z: the last second a datetime can hold.
MAX_TIMESTAMP = 253_402_300_799
# Far above any amount Stripe accepts (8 digits for most currencies), far below any overflow.
MAX_AMOUNT = 10**12
MAX_TEXT = 5000
SESSION_STATUSES = frozenset({"open", "complete", "expired"})
PAYMENT_STATUSES = frozenset({"paid", "unpaid", "no_payment_required"})
_ID = re.compile(r"[A-Za-z0-9_]{1,250}")
# PaymentIntent statuses that mean a submitted payment failed (the intent went back to asking
# for a payment method) or was abandoned: a complete but unpaid session will never be paid.
FAILED_PAYMENT_INTENT = frozenset({"requires_payment_method", "canceled"})


class MalformedEvent(ValueError, CheckoutError):
    """An event whose fields are not what Stripe documents: acknowledged, refused, logged."""


def timestamp(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TIMESTAMP:
        raise MalformedEvent(f"{name} is not a Unix timestamp")
    return value


def amount(value: object, name: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_AMOUNT:
        raise MalformedEvent(f"{name} is not an amount in minor units")
    return value


def flag(value: object, name: str, *, default: bool | None = None) -> bool:
    if value is None and default is not None:
        return default
    if not isinstance(value, bool):
        raise MalformedEvent(f"{name} is not a boolean")
    return value


def text(value: object, name: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise MalformedEvent(f"{name} is not a string")
    return value


def object_id(value: object, prefix: str, name: str, *, optional: bool = False) -> str | None:
    """An id (`pi_…`), or an expanded object's; None only when `optional` and absent."""
    if isinstance(value, dict):
        value = value.get("id")
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.startswith(prefix):
        raise MalformedEvent(f"{name} is not a {prefix}… id")
    if not _ID.fullmatch(value[len(prefix) :]):
        raise MalformedEvent(f"{name} is not a {prefix}… id")
    return value


def dictionary(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedEvent(f"{name} is not an object")
    return value


def check_session(session: dict[str, Any]) -> None:
    """A Checkout Session as Stripe documents the fields this service reads."""
    object_id(session.get("id"), "cs_", "the session's id")
    for name, choices in (("status", SESSION_STATUSES), ("payment_status", PAYMENT_STATUSES)):
        value = session.get(name)  # absent: as a retrieve without it reads (open, unpaid)
        if value is not None and (not isinstance(value, str) or value not in choices):
            raise MalformedEvent(f"the session's {name} is not one Stripe documents")
    amount(session.get("amount_total"), "amount_total", optional=True)
    text(session.get("currency"), "currency", optional=True)
    flag(session.get("livemode"), "the session's livemode", default=False)
    metadata = session.get("metadata")
    if isinstance(metadata, dict) and not all(
        isinstance(v, str) and len(v) <= MAX_TEXT for v in metadata.values()
    ):
        raise MalformedEvent("the session's metadata values are not strings")
    intent = session.get("payment_intent")
    object_id(intent, "pi_", "payment_intent", optional=True)
    if isinstance(intent, dict):
        text(intent.get("status"), "the PaymentIntent's status", optional=True)
        charge = intent.get("latest_charge")
        if isinstance(charge, dict):
            amount(charge.get("amount_refunded"), "amount_refunded", optional=True)
            flag(charge.get("refunded"), "refunded", default=False)
        elif charge is not None and not isinstance(charge, str):
            raise MalformedEvent("latest_charge is neither an id nor a Charge")
    _check_line_items(session.get("line_items"))


def _check_line_items(items: object) -> None:
    if items is None or isinstance(items, str):
        return
    rows = dictionary(items, "line_items").get("data")
    if not isinstance(rows, list):
        raise MalformedEvent("line_items.data is not a list")
    for row in rows:
        price = dictionary(row, "a line item").get("price")
        if price is not None and not isinstance(price, str):
            text(dictionary(price, "a line item's price").get("id"), "a price's id", optional=True)
        amount(row.get("quantity"), "a line item's quantity", optional=True)


def livemode(event: dict[str, Any]) -> bool | None:
    """The event's mode, or None when it does not say."""
    value = event.get("livemode")
    if value is None:
        return None
    if not isinstance(value, bool):
        raise MalformedEvent("livemode is not a boolean")
    return value


def fact_of_event(event: dict[str, Any]) -> Fact | None:  # noqa: PLR0911
    """The fact a handled Stripe event states, or None when it holds nothing we act on.

    Raises MalformedEvent when a field this reads is not what Stripe documents (its type, its
    range), or the event's object is not what its type promises.
    """
    kind = event["type"]
    obj = dictionary(dictionary(event.get("data"), "data").get("object"), "object")
    occurred_at = iso_utc(timestamp(event.get("created"), "created"))
    if kind in SESSION_EVENTS:
        check_session(obj)
        if not isinstance(obj.get("metadata"), dict):
            obj = {**obj, "metadata": {}}
        session = session_status(obj, payment_failed=kind == PAYMENT_FAILED_EVENT)
        intent = object_id(obj.get("payment_intent"), "pi_", "payment_intent", optional=True)
        return SessionFact(session, intent, occurred_at)
    intent = object_id(obj.get("payment_intent"), "pi_", "payment_intent", optional=True)
    if kind in CHARGE_EVENTS:
        object_id(obj.get("id"), "ch_", "the Charge's id")
        refunded = amount(obj.get("amount_refunded"), "amount_refunded", optional=True)
        full = flag(obj.get("refunded"), "refunded", default=False)
        if intent is None:
            return None  # a charge outside Checkout: not an order of ours
        return ChargeFact(intent, refunded or 0, full, occurred_at)
    if kind in REFUND_EVENTS:
        refund_id = object_id(obj.get("id"), "re_", "the Refund's id") or ""
        refund_amount = amount(obj.get("amount"), "the Refund's amount") or 0
        status = text(obj.get("status"), "the Refund's status") or ""
        if intent is None:
            return None
        return RefundFact(refund_id, intent, refund_amount, status, occurred_at)
    if kind in DISPUTE_EVENTS:
        dispute_id = object_id(obj.get("id"), "dp_", "the Dispute's id") or ""
        disputed = amount(obj.get("amount"), "the Dispute's amount", optional=True)
        dispute_status = text(obj.get("status"), "the Dispute's status", optional=True)
        evidence = obj.get("evidence_details")
        due = evidence.get("due_by") if isinstance(evidence, dict) else None
        due_by = None if due is None else timestamp(due, "evidence_details.due_by")
        if intent is None:
            return None
        return DisputeFact(
            dispute_id=dispute_id,
            payment_intent=intent,
            amount=disputed,
            status=dispute_status or "needs_response",
            evidence_due_by=None if due_by is None else iso_utc(due_by),
            occurred_at=occurred_at,
        )
    return None


class SessionFields(Protocol):
    """What a session read from Stripe offers: `in` and [] (a StripeObject is not a dict)."""

    def __contains__(self, name: object, /) -> bool: ...
    def __getitem__(self, name: str, /) -> Any: ...


def session_status(session: SessionFields, *, payment_failed: bool = False) -> SessionStatus:
    """A Checkout Session as Stripe sends it (a StripeObject, or an event's dict), typed.

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
    return SessionStatus(
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
