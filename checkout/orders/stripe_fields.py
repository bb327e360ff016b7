"""A Stripe event's fields read as Stripe documents them (types and ranges), or MalformedEvent,
which the webhook logs as a refusal rather than answering 500 (docs/webhooks.md)."""

from __future__ import annotations

import re
from typing import Any

from checkout.errors import CheckoutError

# 9999-12-31T23:59:59Z: the last second a datetime can hold.
MAX_TIMESTAMP = 253_402_300_799
# Far above any amount Stripe accepts (8 digits for most currencies), far below any overflow.
MAX_AMOUNT = 10**12
MAX_TEXT = 5000
SESSION_STATUSES = frozenset({"open", "complete", "expired"})
PAYMENT_STATUSES = frozenset({"paid", "unpaid", "no_payment_required"})
_ID = re.compile(r"[A-Za-z0-9_]{1,250}")


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
