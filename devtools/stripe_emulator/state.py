"""The emulator's model: Stripe's constants, errors, form decoding, and Checkout Session validation.

Pure: no lock and no server; `api` keeps the sessions and serves them."""

from __future__ import annotations

import json
import random
import string
import time
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from devtools.stripe_emulator import shapes

LATEST_API_VERSION = "2026-10-28.endive"
# API version 2026-03-25.dahlia renamed the ui_mode values; older versions only know the old names.
RENAMED_UI_MODES_SINCE = "2026-03-25"
UI_MODE_NEW_TO_OLD = {"hosted_page": "hosted", "embedded_page": "embedded", "elements": "custom"}
UI_MODE_OLD_TO_NEW = {old: new for new, old in UI_MODE_NEW_TO_OLD.items()}

SECRET_KEY_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_")
PAYMENT_STATUSES = ("paid", "unpaid", "no_payment_required")
EVENT_TYPES = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
)
# A PaymentIntent whose payment failed asks for another payment method.
FAILED_INTENT_STATUS = "requires_payment_method"
FAULT_MODES = ("none", "error_500", "rate_limit_429", "hang", "random_500")
SESSION_LIFETIME_SECONDS = 24 * 3600
MIN_EXPIRES_IN_SECONDS = 30 * 60
METADATA_MAX_KEYS, METADATA_MAX_KEY_LENGTH, METADATA_MAX_VALUE_LENGTH = 50, 40, 500
IDEMPOTENCY_KEY_MAX_LENGTH = 255


DEFAULT_FAULTS: dict[str, Any] = {
    "latency_ms": 0.0,
    "mode": "none",
    "probability": 0.5,
    "hang_seconds": 30.0,
    "remaining": None,
    "seed": None,
}

_ALPHANUMERIC = string.ascii_letters + string.digits
_ids = random.Random()  # private, so that a test seeding `random` cannot make ids collide


def _random_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(_ids.choices(_ALPHANUMERIC, k=length))


def _to_json(value: Any) -> bytes:
    return json.dumps(value, indent=2).encode()


@dataclass(eq=False)
class StripeEmulatorError(Exception):
    """A Stripe error response: raised by the emulator's logic, and by its Python helpers."""

    status: int
    message: str
    _: KW_ONLY
    type: str = "invalid_request_error"  # Stripe's own field name
    code: str | None = None
    param: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def error(self, request_id: str | None = None) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type}
        if self.code:
            error["code"] = self.code
        error["message"] = self.message
        if self.param:
            error["param"] = self.param
        if request_id:
            error["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
        return {"error": error}


def _invalid(
    message: str, param: str | None = None, code: str | None = None
) -> StripeEmulatorError:
    return StripeEmulatorError(400, message, param=param, code=code)


def _missing(param: str) -> StripeEmulatorError:
    return _invalid(f"Missing required param: {param}.", param, code="parameter_missing")


def _no_such(kind: str, object_id: Any, param: str = "id") -> StripeEmulatorError:
    return StripeEmulatorError(
        404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param
    )


# --- Stripe's form encoding ------------------------------------------------------------------


def decode_form(body: str) -> dict[str, Any]:
    """Decode Stripe's bracketed form encoding (`a[b][0][c]=v`) into nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        *parents, leaf = _split_key(key)
        node = root
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        # `expand[]=x` (curl style) appends; stripe-python always sends explicit indexes.
        node[leaf or str(len(node))] = value
    return _listify(root)


def _split_key(key: str) -> list[str]:
    head, bracket, rest = key.partition("[")
    if not bracket or not rest.endswith("]"):
        return [key]
    return [head, *rest[:-1].split("][")]


def _listify(node: dict[str, Any], name: str = "") -> Any:
    for key, value in node.items():
        if isinstance(value, dict):
            node[key] = _listify(value, key)
    # Metadata keys may be digits, yet metadata is always a hash.
    if name != "metadata" and node and all(key.isdigit() for key in node):
        return [node[key] for key in sorted(node, key=int)]
    return node


# --- A new Checkout Session, from parameters params.py and rules.py have accepted -----------------

# Create parameters the builder sets itself; any other that names a Session field is echoed.
_BUILT_FROM = frozenset({"line_items", "metadata", "expand", "payment_method_types", "ui_mode"})


def _line_item(
    item: dict[str, Any], prices: Mapping[str, dict[str, Any]], livemode: bool, now: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One line item as Stripe shows it when `line_items` is expanded, and its product."""
    quantity = int(item["quantity"])
    if "price" in item:
        price = dict(prices[item["price"]])
        product = {"id": price["product"], "name": price.pop("product_name")}
    else:
        data = item["price_data"]
        product_id = data.get("product") or _random_id("prod_", 14)
        product_data = data.get("product_data", {"name": product_id})
        product = {
            "id": product_id,
            "name": product_data["name"],
            "description": product_data.get("description"),
            "images": list(product_data.get("images") or []),
            "metadata": _metadata(product_data.get("metadata")),
        }
        unit_amount = int(data["unit_amount"]) if "unit_amount" in data else None
        recurring = data.get("recurring")
        price = {
            "id": _random_id("price_"),
            "object": "price",
            "active": False,  # an inline price_data price is never reusable
            "currency": data["currency"],
            "product": product_id,
            "recurring": None if recurring is None else _recurring(recurring),
            "tax_behavior": data.get("tax_behavior", "unspecified"),
            "type": "recurring" if recurring is not None else "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": data.get("unit_amount_decimal", str(unit_amount)),
        }
    price = shapes.build(
        shapes.resource("stripe.Price"),
        {"billing_scheme": "per_unit", "created": now, "livemode": livemode, "metadata": {}}
        | price,
    )
    amount = _amount(price) * quantity
    line_item = {
        "id": _random_id("li_"),
        "object": "item",
        "amount_discount": 0,
        "amount_subtotal": amount,
        "amount_tax": 0,
        "amount_total": amount,
        "currency": price["currency"],
        "description": product["name"],
        "metadata": _metadata(item.get("metadata")),
        "price": price,
        "quantity": quantity,
    }
    product = shapes.build(
        shapes.resource("stripe.Product"),
        {"active": True, "created": now, "livemode": livemode, "updated": now, "type": "service"}
        | {"images": [], "marketing_features": [], "metadata": {}}
        | {key: value for key, value in product.items() if value is not None},
    )
    return shapes.build(shapes.resource("stripe.LineItem"), line_item), product


def _recurring(recurring: dict[str, Any]) -> dict[str, Any]:
    return {
        "interval": recurring["interval"],
        "interval_count": int(recurring.get("interval_count", 1)),
        "meter": None,
        "trial_period_days": None,
        "usage_type": "licensed",
    }


def _amount(price: dict[str, Any]) -> int:
    if price.get("unit_amount") is not None:
        return int(price["unit_amount"])
    return round(float(price["unit_amount_decimal"]))


def _metadata(value: Any) -> dict[str, str]:
    """The stored hash: an empty value unsets its key."""
    if not isinstance(value, dict):
        return {}
    return {key: item for key, item in value.items() if item}


def _echoed(params: dict[str, Any]) -> dict[str, Any]:
    """Create parameters that are also Session fields, as the Session holds them."""
    hints = shapes.fields(shapes.session_class())
    echoed = {}
    for name, value in params.items():
        if name in hints and name not in _BUILT_FROM:
            try:
                echoed[name] = shapes.from_params(hints[name], value)
            except shapes.NotConvertible:
                continue  # a parameter shaped unlike its field: the field keeps its default
    return echoed


def _build_session(
    params: dict[str, Any],
    *,
    livemode: bool,
    prices: Mapping[str, dict[str, Any]],
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The new session, its line items and their products; params.py and rules.py passed them."""
    ui_mode = params.get("ui_mode", "hosted_page")
    mode = params["mode"]
    now = int(time.time())
    built = [_line_item(item, prices, livemode, now) for item in params.get("line_items") or ()]
    line_items = [item for item, _ in built]
    products = {product["id"]: product for _, product in built}
    currency = params.get("currency")
    amount_total = None
    if line_items:
        currency = line_items[0]["currency"]
        amount_total = sum(item["amount_total"] for item in line_items)
    session_id = _random_id("cs_live_" if livemode else "cs_test_", 58)
    embedded = ui_mode != "hosted_page"
    values = {
        **_echoed(params),
        "id": session_id,
        "object": "checkout.session",
        "amount_subtotal": amount_total,
        "amount_total": amount_total,
        "client_secret": _random_id(f"{session_id}_secret_") if embedded else None,
        "created": now,
        "currency": currency,
        "customer_creation": params.get("customer_creation", "if_required"),
        "expires_at": int(params.get("expires_at", now + SESSION_LIFETIME_SECONDS)),
        "livemode": livemode,
        "metadata": _metadata(params.get("metadata")),
        "mode": mode,
        "payment_method_types": params.get("payment_method_types", ["card"]),
        "payment_status": "no_payment_required" if mode == "setup" else "unpaid",
        "status": "open",
        "ui_mode": ui_mode,
        "url": None if embedded else f"https://checkout.stripe.com/c/pay/{session_id}",
    }
    if mode != "setup":
        values["total_details"] = {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}
    if embedded:
        values["redirect_on_completion"] = params.get("redirect_on_completion", "always")
        if "return_url" in params:
            values["return_url"] = params["return_url"]
    session = shapes.build(shapes.session_class(), values)
    return session, line_items, products


def _session_class() -> Any:
    return shapes.session_class()


def _completed_fields(session: dict[str, Any], payment_status: str) -> dict[str, Any]:
    details: dict[str, Any] = {
        "address": {
            "city": None,
            "country": "US",
            "line1": None,
            "line2": None,
            "postal_code": "94107",
            "state": None,
        },
        "email": session["customer_email"] or "jenny.rosen@example.com",
        "name": "Jenny Rosen",
        "phone": None,
        "tax_exempt": "none",
        "tax_ids": [],
    }
    fields: dict[str, Any] = {
        "status": "complete",
        "payment_status": payment_status,
        "customer_details": shapes.build(_session_class().CustomerDetails, details),
    }
    intent_field = {
        "payment": ("payment_intent", "pi_"),
        "setup": ("setup_intent", "seti_"),
        "subscription": ("subscription", "sub_"),
    }[session["mode"]]
    fields[intent_field[0]] = _random_id(intent_field[1])
    return fields


# --- State ---------------------------------------------------------------------------------------


class _Session:
    """A session's public fields, its line items, and its JSON as the current API renders it."""

    __slots__ = ("_json", "data", "intent_data", "intent_status", "line_items")

    def __init__(
        self,
        data: dict[str, Any],
        line_items: list[dict[str, Any]],
        intent_data: dict[str, Any] | None = None,
    ) -> None:
        self.data = data
        self.line_items = line_items
        # The create's payment_intent_data: Checkout copies it to the PaymentIntent it makes.
        self.intent_data = intent_data or {}
        # The PaymentIntent's status while payment_status is unpaid: a delayed payment method
        # (bank debit) is `processing` until it settles; a failed one goes back to
        # `requires_payment_method`, as Stripe's PaymentIntents do.
        self.intent_status = "processing"
        self._json: bytes | None = None

    def update(self, **fields: Any) -> None:
        self.data = {**self.data, **fields}  # a new dict: snapshots already handed out stay put
        self._json = None

    def render(self, *, old_names: bool = False, shown: dict[str, Any] | None = None) -> bytes:
        """The session's JSON (or `shown`, its expanded form); `old_names` for API versions
        before the ui_mode rename."""
        if not old_names and shown is None:
            # Retrieves dominate under load, so the common rendering is cached.
            if self._json is None:
                self._json = _to_json(self.data)
            return self._json
        data = dict(self.data if shown is None else shown)
        if old_names:
            data["ui_mode"] = UI_MODE_NEW_TO_OLD.get(data["ui_mode"], data["ui_mode"])
        return _to_json(data)

    def line_items_list(self) -> dict[str, Any]:
        """The `line_items` list object, as `expand[]=line_items` shows it."""
        return {
            "object": "list",
            "data": list(self.line_items),
            "has_more": False,
            "url": f"/v1/checkout/sessions/{self.data['id']}/line_items",
        }


class _Event(NamedTuple):
    """A signed-to-be event and where it goes; an empty payload means there is nothing to send."""

    payload: bytes
    url: str
    secret: str | None


_NO_EVENT = _Event(b"", "", None)


class _StoredEvent(NamedTuple):
    """An event as first sent; redeliveries send these same bytes, as Stripe's retries do."""

    payload: bytes
    session_id: str
    type: str


# (status, body, headers); a handler returns None instead to drop the connection unanswered.
_Response = tuple[int, bytes, list[tuple[str, str]]]


def _apply_event(session: _Session, event_type: str) -> None:
    """Bring an on-demand event's session into the state that event announces."""
    data = session.data
    if event_type == "checkout.session.expired":
        if data["status"] == "open":
            session.update(status="expired")
    elif event_type == "checkout.session.async_payment_succeeded":
        if data["status"] == "open":
            session.update(**_completed_fields(data, "paid"))
        elif data["status"] == "complete":
            session.update(payment_status="paid")
    else:  # completed, or async_payment_failed: complete but unpaid
        if data["status"] == "open":
            paid = "paid" if event_type == "checkout.session.completed" else "unpaid"
            session.update(**_completed_fields(data, paid))
        if event_type == "checkout.session.async_payment_failed":
            session.intent_status = FAILED_INTENT_STATUS


def settle_delayed_payment(session: _Session, succeeded: bool) -> str:
    """A delayed payment (complete, unpaid, processing) settles; the event type it causes."""
    data = session.data
    if not (
        data["status"] == "complete"
        and data["payment_status"] == "unpaid"
        and session.intent_status == "processing"
    ):
        raise _invalid(
            "Only a completed Checkout Session whose delayed payment is still processing can "
            f"settle; this one is {data['status']}/{data['payment_status']}"
            f" (payment {session.intent_status})."
        )
    if succeeded:
        session.update(payment_status="paid")
        return "checkout.session.async_payment_succeeded"
    session.intent_status = FAILED_INTENT_STATUS
    return "checkout.session.async_payment_failed"
