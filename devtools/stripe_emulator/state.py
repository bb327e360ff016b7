"""The emulator's model: Stripe's constants, errors, form decoding, and Checkout Session validation.

Everything here is pure: it validates parameters and builds session objects the way Stripe does,
and holds no lock and no server. `api` keeps the sessions and serves them.
"""

from __future__ import annotations

import json
import random
import string
import time
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

LATEST_API_VERSION = "2026-10-28.endive"
# API version 2026-03-25.dahlia renamed the ui_mode values; older versions only know the old names.
RENAMED_UI_MODES_SINCE = "2026-03-25"
UI_MODE_NEW_TO_OLD = {"hosted_page": "hosted", "embedded_page": "embedded", "elements": "custom"}
UI_MODE_OLD_TO_NEW = {old: new for new, old in UI_MODE_NEW_TO_OLD.items()}

SECRET_KEY_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_")
MODES = ("payment", "setup", "subscription")
REDIRECT_ON_COMPLETION = ("always", "if_required", "never")
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
# Stripe's minimum charge, in minor units (docs.stripe.com/currencies#minimum-and-maximum).
MINIMUM_AMOUNTS = {"usd": 50, "eur": 50, "cad": 50, "aud": 50, "chf": 50, "gbp": 30}
MAXIMUM_AMOUNT = 99_999_999
SESSION_LIFETIME_SECONDS = 24 * 3600
MIN_EXPIRES_IN_SECONDS = 30 * 60
METADATA_MAX_KEYS, METADATA_MAX_KEY_LENGTH, METADATA_MAX_VALUE_LENGTH = 50, 40, 500
IDEMPOTENCY_KEY_MAX_LENGTH = 255

# Parameters Stripe accepts on create. Only the ones this project relies on are validated; the rest
# are accepted so that a valid request is never refused for a parameter the emulator ignores.
CREATE_PARAMS = frozenset(
    {
        "ui_mode", "mode", "line_items", "return_url", "success_url", "cancel_url",
        "redirect_on_completion", "metadata", "expand", "customer_email", "client_reference_id",
        "expires_at", "payment_method_types", "locale", "currency", "customer",
        "customer_creation", "allow_promotion_codes", "billing_address_collection",
        "submit_type", "automatic_tax", "payment_intent_data", "subscription_data",
        "setup_intent_data", "phone_number_collection", "shipping_address_collection",
        "custom_text", "custom_fields", "consent_collection", "invoice_creation",
        "tax_id_collection", "discounts", "payment_method_configuration",
    }
)  # fmt: skip
LINE_ITEM_PARAMS = frozenset(
    {"price", "price_data", "quantity", "adjustable_quantity", "dynamic_tax_rates", "tax_rates"}
)
PRICE_DATA_PARAMS = frozenset(
    {"currency", "unit_amount", "product", "product_data", "recurring", "tax_behavior"}
)
PRODUCT_DATA_PARAMS = frozenset({"name", "description", "images", "metadata", "tax_code"})
EXPANDABLE = frozenset(
    {"line_items", "payment_intent", "customer", "subscription", "setup_intent", "invoice"}
)

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


class StripeEmulatorError(Exception):
    """A Stripe error response: raised by the emulator's logic, and by its Python helpers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # Stripe's own field name
        code: str | None = None,
        param: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers

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
    return _invalid(f"Missing required param: {param}.", param)


def _no_such_session(session_id: str) -> StripeEmulatorError:
    return StripeEmulatorError(
        404,
        f"No such checkout.session: '{session_id}'",
        code="resource_missing",
        param="session",
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


# --- Validation of POST /v1/checkout/sessions ----------------------------------------------------


def _parse_int(value: Any, param: str, minimum: int | None = None) -> int:
    text = value if isinstance(value, str) else ""
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()):
        raise _invalid(f"Invalid integer: {value}", param)
    number = int(text)
    if minimum is not None and number < minimum:
        raise _invalid(f"This value must be greater than or equal to {minimum}.", param)
    return number


def _parse_string(params: dict[str, Any], name: str, param: str | None = None) -> str | None:
    value = params.get(name)
    if value is None or isinstance(value, str):
        return value
    raise _invalid(f"Invalid string: {value!r}", param or name)


def _parse_url(params: dict[str, Any], name: str) -> str | None:
    value = _parse_string(params, name)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _invalid("Not a valid URL", name)
    return value  # `{CHECKOUT_SESSION_ID}` stays literal: Stripe substitutes it on redirect


def _parse_ui_mode(params: dict[str, Any], version_date: str) -> tuple[str, str]:
    """The ui_mode as stored (current name) and as the request's API version names it."""
    renamed = version_date >= RENAMED_UI_MODES_SINCE
    allowed = tuple(UI_MODE_NEW_TO_OLD) if renamed else tuple(UI_MODE_OLD_TO_NEW)
    value = params.get("ui_mode", allowed[0])
    if value not in allowed:
        raise _invalid(f"Invalid ui_mode: must be one of {', '.join(allowed)}", "ui_mode")
    return (value if renamed else UI_MODE_OLD_TO_NEW[value]), value


def _parse_redirects(params: dict[str, Any], ui_mode: str, shown_ui_mode: str) -> dict[str, Any]:
    return_url = _parse_url(params, "return_url")
    success_url = _parse_url(params, "success_url")
    cancel_url = _parse_url(params, "cancel_url")
    redirect = params.get("redirect_on_completion")
    if ui_mode == "hosted_page":
        if return_url is not None:
            raise _invalid(
                "You can only specify `return_url` when `ui_mode` is `embedded_page` or "
                f"`elements`, not `{shown_ui_mode}`.",
                "return_url",
            )
        if redirect is not None:
            raise _invalid(
                "You can only specify `redirect_on_completion` when `ui_mode` is "
                f"`embedded_page` or `elements`, not `{shown_ui_mode}`.",
                "redirect_on_completion",
            )
        return {"return_url": None, "success_url": success_url, "cancel_url": cancel_url}

    for name, value in (("success_url", success_url), ("cancel_url", cancel_url)):
        if value is not None:
            raise _invalid(
                f"You cannot specify `{name}` when `ui_mode` is `{shown_ui_mode}`. "
                "Use `return_url` instead.",
                name,
            )
    redirect = "always" if redirect is None else redirect
    if redirect not in REDIRECT_ON_COMPLETION:
        raise _invalid(
            "Invalid redirect_on_completion: must be one of always, if_required or never",
            "redirect_on_completion",
        )
    if redirect == "never" and return_url is not None:
        raise _invalid(
            "You cannot specify `return_url` when `redirect_on_completion` is `never`.",
            "return_url",
        )
    if redirect != "never" and return_url is None:
        raise _invalid(
            f"Missing required param: return_url. It is required when `ui_mode` is "
            f"`{shown_ui_mode}`, unless `redirect_on_completion` is `never`.",
            "return_url",
        )
    return {
        "return_url": return_url,
        "success_url": None,
        "cancel_url": None,
        "redirect_on_completion": redirect,
    }


def _reject_unknown(values: dict[str, Any], allowed: frozenset[str], prefix: str) -> None:
    for name in values:
        if name not in allowed:
            param = f"{prefix}[{name}]" if prefix else name
            raise _invalid(f"Received unknown parameter: {param}", param)


def _parse_metadata(value: Any, param: str = "metadata") -> dict[str, str]:
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise _invalid("Invalid hash", param)
    if len(value) > METADATA_MAX_KEYS:
        raise _invalid(
            f"Invalid metadata: metadata can have up to {METADATA_MAX_KEYS} keys, "
            f"but you passed in {len(value)} keys.",
            param,
        )
    metadata = {}
    for key, item in value.items():
        if len(key) > METADATA_MAX_KEY_LENGTH or "[" in key or "]" in key:
            raise _invalid(
                f"Invalid metadata key '{key}': keys can have up to {METADATA_MAX_KEY_LENGTH} "
                "characters and cannot contain square brackets.",
                param,
            )
        if not isinstance(item, str):
            raise _invalid(f"Invalid value for metadata key '{key}': must be a string.", param)
        if len(item) > METADATA_MAX_VALUE_LENGTH:
            raise _invalid(
                f"Metadata values can have up to {METADATA_MAX_VALUE_LENGTH} characters, but you "
                f"passed in a value that is {len(item)} characters.",
                f"{param}[{key}]",
            )
        if item:  # an empty value unsets the key
            metadata[key] = item
    return metadata


def _parse_currency(value: Any, param: str) -> str:
    if value is None:
        raise _missing(param)
    if not (isinstance(value, str) and len(value) == 3 and value.isascii() and value.islower()):
        raise _invalid(
            f"Invalid currency: {value}. Use a three-letter ISO code in lowercase.", param
        )
    if not value.isalpha():
        raise _invalid(f"Invalid currency: {value}.", param)
    return value


def _parse_line_item(item: Any, index: int, prices: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """One line item as Stripe shows it when `line_items` is expanded."""
    prefix = f"line_items[{index}]"
    if not isinstance(item, dict):
        raise _invalid("Invalid hash", prefix)
    _reject_unknown(item, LINE_ITEM_PARAMS, prefix)
    if "quantity" not in item:
        raise _missing(f"{prefix}[quantity]")
    quantity = _parse_int(item["quantity"], f"{prefix}[quantity]", minimum=1)
    has_price, has_price_data = "price" in item, "price_data" in item
    if has_price and has_price_data:
        raise _invalid(
            "You may only specify one of these parameters: price, price_data.", f"{prefix}[price]"
        )
    if has_price:
        price_id = item["price"]
        price = prices.get(price_id) if isinstance(price_id, str) else None
        if price is None:
            raise _invalid(
                f"No such price: '{price_id}'", f"{prefix}[price]", code="resource_missing"
            )
        description = price["product_name"]
        price = {key: value for key, value in price.items() if key != "product_name"}
    elif has_price_data:
        price, description = _parse_price_data(item["price_data"], f"{prefix}[price_data]")
    else:
        raise _invalid(
            f"You must specify either `price` or `price_data` in `{prefix}`.", f"{prefix}[price]"
        )
    amount = price["unit_amount"] * quantity
    return {
        "id": _random_id("li_"),
        "object": "item",
        "amount_discount": 0,
        "amount_subtotal": amount,
        "amount_tax": 0,
        "amount_total": amount,
        "currency": price["currency"],
        "description": description,
        "price": price,
        "quantity": quantity,
    }


def _parse_price_data(data: Any, prefix: str) -> tuple[dict[str, Any], str]:
    if not isinstance(data, dict):
        raise _invalid("Invalid hash", prefix)
    _reject_unknown(data, PRICE_DATA_PARAMS, prefix)
    currency = _parse_currency(data.get("currency"), f"{prefix}[currency]")
    if "unit_amount" not in data:
        raise _missing(f"{prefix}[unit_amount]")
    unit_amount = _parse_int(data["unit_amount"], f"{prefix}[unit_amount]", minimum=0)
    product = data.get("product")
    product_data = data.get("product_data")
    if product is not None and product_data is not None:
        raise _invalid(
            "You may only specify one of these parameters: product, product_data.",
            f"{prefix}[product]",
        )
    if product is None:
        if product_data is None:
            raise _missing(f"{prefix}[product_data]")
        if not isinstance(product_data, dict):
            raise _invalid("Invalid hash", f"{prefix}[product_data]")
        _reject_unknown(product_data, PRODUCT_DATA_PARAMS, f"{prefix}[product_data]")
        name = product_data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _missing(f"{prefix}[product_data][name]")
        product, description = _random_id("prod_", 14), name
    elif not isinstance(product, str) or not product:
        raise _invalid("Invalid string", f"{prefix}[product]")
    else:
        description = product
    price = {
        "id": _random_id("price_"),
        "object": "price",
        "active": False,  # an inline price_data price is never reusable
        "currency": currency,
        "product": product,
        "type": "recurring" if "recurring" in data else "one_time",
        "unit_amount": unit_amount,
    }
    return price, description


def _check_amount(currency: str, amount: int) -> None:
    minimum = MINIMUM_AMOUNTS.get(currency, 0)
    if amount < minimum:
        raise _invalid(
            "The Checkout Session's total amount due must add up to at least "
            f"{minimum / 100:.2f} {currency}.",
            "line_items",
            code="amount_too_small",
        )
    if amount > MAXIMUM_AMOUNT:
        raise _invalid(
            f"The Checkout Session's total amount due must be no more than {MAXIMUM_AMOUNT} "
            f"(in the smallest unit of {currency}).",
            "line_items",
            code="amount_too_large",
        )


def _parse_expand(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _invalid("Invalid array", "expand")
    for item in value:
        if item.split(".", 1)[0] not in EXPANDABLE:
            raise _invalid(f"This property cannot be expanded ({item}).", "expand")
    return value


def _build_session(
    params: dict[str, Any],
    *,
    version_date: str,
    livemode: bool,
    prices: Mapping[str, dict[str, Any]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Validate create parameters as Stripe does; return the new session and its line items."""
    _reject_unknown(params, CREATE_PARAMS, "")
    ui_mode, shown_ui_mode = _parse_ui_mode(params, version_date)
    mode = params.get("mode")
    if mode is None:
        raise _missing("mode")
    if mode not in MODES:
        raise _invalid("Invalid mode: must be one of payment, setup or subscription", "mode")
    redirects = _parse_redirects(params, ui_mode, shown_ui_mode)

    raw_items = params.get("line_items")
    if mode == "setup":
        if raw_items is not None:
            raise _invalid("You cannot pass `line_items` in `setup` mode.", "line_items")
        line_items: list[dict[str, Any]] = []
    elif raw_items is None or raw_items == []:
        raise _missing("line_items")
    elif not isinstance(raw_items, list):
        raise _invalid("Invalid array", "line_items")
    else:
        line_items = [_parse_line_item(item, i, prices) for i, item in enumerate(raw_items)]

    currency = params.get("currency")
    amount_total = None
    if line_items:
        currencies = {item["currency"] for item in line_items}
        if len(currencies) > 1:
            raise _invalid("All line items must have the same currency.", "line_items")
        currency = currencies.pop()
        amount_total = sum(item["amount_total"] for item in line_items)
        if mode == "payment":
            _check_amount(currency, amount_total)

    metadata = _parse_metadata(params.get("metadata"))
    now = int(time.time())
    expires_at = now + SESSION_LIFETIME_SECONDS
    if "expires_at" in params:
        expires_at = _parse_int(params["expires_at"], "expires_at")
        # A little slack, because the caller computed its timestamp a moment ago.
        if not now + MIN_EXPIRES_IN_SECONDS - 10 <= expires_at <= now + SESSION_LIFETIME_SECONDS:
            raise _invalid(
                "The `expires_at` timestamp must be between 30 minutes and 24 hours from "
                "Checkout Session creation.",
                "expires_at",
            )
    customer_email = _parse_string(params, "customer_email")
    if customer_email is not None and "@" not in customer_email:
        raise _invalid(f"Invalid email address: {customer_email}", "customer_email")
    client_reference_id = _parse_string(params, "client_reference_id")
    if client_reference_id is not None and len(client_reference_id) > 200:
        raise _invalid("client_reference_id can have up to 200 characters.", "client_reference_id")
    payment_method_types = params.get("payment_method_types", ["card"])
    if not isinstance(payment_method_types, list):
        raise _invalid("Invalid array", "payment_method_types")
    _parse_expand(params.get("expand"))

    session_id = _random_id("cs_live_" if livemode else "cs_test_", 58)
    embedded = ui_mode != "hosted_page"
    session = {
        "id": session_id,
        "object": "checkout.session",
        "amount_subtotal": amount_total,
        "amount_total": amount_total,
        "cancel_url": redirects["cancel_url"],
        "client_reference_id": client_reference_id,
        "client_secret": _random_id(f"{session_id}_secret_") if embedded else None,
        "created": now,
        "currency": currency,
        "customer": params.get("customer"),
        "customer_details": None,
        "customer_email": customer_email,
        "expires_at": expires_at,
        "livemode": livemode,
        "locale": params.get("locale"),
        "metadata": metadata,
        "mode": mode,
        "payment_intent": None,
        "payment_method_types": payment_method_types,
        "payment_status": "no_payment_required" if mode == "setup" else "unpaid",
        "redirect_on_completion": redirects.get("redirect_on_completion"),
        "return_url": redirects["return_url"],
        "setup_intent": None,
        "status": "open",
        "subscription": None,
        "success_url": redirects["success_url"],
        "ui_mode": ui_mode,
        "url": None if embedded else f"https://checkout.stripe.com/c/pay/{session_id}",
    }
    return session, line_items


def _completed_fields(session: dict[str, Any], payment_status: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "status": "complete",
        "payment_status": payment_status,
        "customer_details": {
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
        },
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

    __slots__ = ("_json", "data", "intent_status", "line_items")

    def __init__(self, data: dict[str, Any], line_items: list[dict[str, Any]]) -> None:
        self.data = data
        self.line_items = line_items
        # The PaymentIntent's status while payment_status is unpaid: a delayed payment method
        # (bank debit) is `processing` until it settles; a failed one goes back to
        # `requires_payment_method`, as Stripe's PaymentIntents do.
        self.intent_status = "processing"
        self._json: bytes | None = None

    def update(self, **fields: Any) -> None:
        self.data = {**self.data, **fields}  # a new dict: snapshots already handed out stay put
        self._json = None

    def render(self, *, old_names: bool = False, expand: list[str] | None = None) -> bytes:
        """The session's JSON; `old_names` for API versions before the ui_mode rename."""
        if not old_names and not expand:
            # Retrieves dominate under load, so the common rendering is cached.
            if self._json is None:
                self._json = _to_json(self.data)
            return self._json
        data = dict(self.data)
        if old_names:
            data["ui_mode"] = UI_MODE_NEW_TO_OLD[data["ui_mode"]]
        roots = {item.split(".", 1)[0] for item in expand or ()}
        if "line_items" in roots:
            data["line_items"] = {
                "object": "list",
                "data": self.line_items,
                "has_more": False,
                "url": f"/v1/checkout/sessions/{data['id']}/line_items",
            }
        if "payment_intent" in roots and data["payment_intent"]:
            data["payment_intent"] = {
                "id": data["payment_intent"],
                "object": "payment_intent",
                "amount": data["amount_total"],
                "currency": data["currency"],
                "status": "succeeded" if data["payment_status"] == "paid" else self.intent_status,
            }
        return _to_json(data)


class _StoredResponse(NamedTuple):
    """The first answer to an idempotent request, replayed for later uses of its key."""

    fingerprint: tuple[str, bytes]  # path and raw body: stripe-python encodes params stably
    body: bytes
    request_id: str


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
