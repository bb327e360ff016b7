"""A stateful emulator of Stripe's Checkout Sessions API, for local development and tests.

stripe-mock, Stripe's own mock, is stateless: it answers with fixtures, so a retrieved session never
shows what happened to it. This emulator keeps sessions in memory, enforces the Stripe rules this
project depends on, and answers with Stripe's status codes and error bodies, so that the real
stripe-python SDK raises its real exception classes. It also signs and delivers webhook events, and
injects faults (latency, 500, 429, hangs) for reliability tests and benchmarks.

    python -m devtools.stripe_emulator --port 12111      # then STRIPE_API_BASE=http://127.0.0.1:12111

    with StripeEmulator() as emulator:                   # in tests: port 0 picks a free port
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": emulator.url})

Test helpers live under /_emulator/ (JSON, no auth); see `StripeEmulator._helper_routes`.
Standard library only: it is dev tooling, must start fast, and is never deployed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import http
import json
import random
import signal
import socket
import string
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

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
_REASONS = {status.value: status.phrase for status in http.HTTPStatus}
_WEBHOOK_USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
# Deliveries go to loopback; an http_proxy in the environment must not intercept them.
_webhook_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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

    __slots__ = ("_json", "data", "line_items")

    def __init__(self, data: dict[str, Any], line_items: list[dict[str, Any]]) -> None:
        self.data = data
        self.line_items = line_items
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
                "status": "succeeded" if data["payment_status"] == "paid" else "processing",
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


class StripeEmulator:
    """Stripe's Checkout Sessions API in memory, served over HTTP from a background thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_ms: float = 0,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._base_latency_ms = float(latency_ms)
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._release_hangs = threading.Event()
        self._prices: dict[str, dict[str, Any]] = {}
        self._webhook_url = webhook_url
        self._webhook_secret = webhook_secret
        self._clear_state()

    def _clear_state(self) -> None:
        self._sessions: dict[str, _Session] = {}
        self._idempotency: dict[tuple[bool, str], _StoredResponse] = {}
        self._calls = dict.fromkeys(
            ("total", "create_session", "retrieve_session", "expire_session", "other"), 0
        )
        self._sessions_created = 0
        self._connections_opened = 0
        self._faults = {**DEFAULT_FAULTS, "latency_ms": self._base_latency_ms}
        self._rng = random.Random()
        self._valid_keys: frozenset[str] | None = None
        self._events: dict[str, _StoredEvent] = {}
        self._deliveries: list[dict[str, Any]] = []

    # --- lifecycle ---

    def start(self) -> StripeEmulator:
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="stripe-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._release_hangs.set()
        self._server.shutdown()
        self._server.server_close()
        # Idle keep-alive connections would otherwise keep being answered after stop().
        self._server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> StripeEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    # --- Python helpers (the /_emulator/ endpoints call these) ---

    def reset(self) -> None:
        """Forget sessions, idempotency keys, counters, faults, events and the key allowlist.

        Prices, the webhook target and the constructor's latency are configuration, and stay.
        """
        with self._lock:
            self._clear_state()
            self._release_hangs.set()  # requests hanging from the last test answer now
            self._release_hangs = threading.Event()

    def calls(self) -> dict[str, int]:
        """Requests that reached /v1 by endpoint, plus `sessions_created` (replays excluded)."""
        with self._lock:
            return {**self._calls, "sessions_created": self._sessions_created}

    def connections_opened(self) -> int:
        """TCP connections accepted since the last reset: shows whether clients keep them alive."""
        with self._lock:
            return self._connections_opened

    def _count_connection(self) -> None:
        with self._lock:
            self._connections_opened += 1

    def faults(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._faults)

    def set_faults(self, **fields: Any) -> dict[str, Any]:
        """Update the given fault fields (the others keep their values); return the result."""
        unknown = set(fields) - set(DEFAULT_FAULTS)
        if unknown:
            raise _invalid(f"Unknown fault fields: {', '.join(sorted(unknown))}")
        faults = {**self.faults(), **fields}
        if faults["mode"] not in FAULT_MODES:
            raise _invalid(f"mode must be one of {', '.join(FAULT_MODES)}", "mode")
        for name in ("latency_ms", "probability", "hang_seconds"):
            value = faults[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise _invalid(f"{name} must be a number >= 0", name)
            faults[name] = float(value)
        if faults["probability"] > 1:
            raise _invalid("probability must be between 0 and 1", "probability")
        for name in ("remaining", "seed"):
            value = faults[name]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise _invalid(f"{name} must be an integer or null", name)
        if faults["remaining"] is not None and faults["remaining"] < 0:
            raise _invalid("remaining must be >= 0", "remaining")
        with self._lock:
            self._faults = faults
            if "seed" in fields and faults["seed"] is not None:
                self._rng = random.Random(faults["seed"])
            if faults["remaining"] == 0:
                self._faults = {**DEFAULT_FAULTS, "latency_ms": self._base_latency_ms}
            return dict(self._faults)

    def set_valid_keys(self, keys: list[str] | None) -> None:
        """Accept only these API keys from now on (None accepts any well-formed key)."""
        if keys is not None and not all(isinstance(key, str) for key in keys):
            raise _invalid("valid must be a list of strings or null", "valid")
        with self._lock:
            self._valid_keys = None if keys is None else frozenset(keys)

    def add_price(
        self,
        price_id: str,
        unit_amount: int,
        currency: str = "usd",
        product_name: str = "Emulator product",
    ) -> dict[str, Any]:
        """Register a Dashboard-style price that line items can refer to with `price`."""
        if not isinstance(price_id, str) or not price_id:
            raise _invalid("id must be a non-empty string", "id")
        if isinstance(unit_amount, bool) or not isinstance(unit_amount, int) or unit_amount < 0:
            raise _invalid("unit_amount must be an integer >= 0", "unit_amount")
        _parse_currency(currency, "currency")
        price = {
            "id": price_id,
            "object": "price",
            "active": True,
            "currency": currency,
            "product": _random_id("prod_", 14),
            "type": "one_time",
            "unit_amount": unit_amount,
            "product_name": product_name,
        }
        with self._lock:
            self._prices[price_id] = price
        return dict(price)

    def set_webhook(self, url: str | None, secret: str | None = None) -> None:
        """Deliver events for completions and expirations to `url` (None turns delivery off)."""
        with self._lock:
            self._webhook_url, self._webhook_secret = url, secret

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        with self._lock:
            session = self._sessions.get(session_id)
            return None if session is None else json.loads(session.render())

    def complete_session(self, session_id: str, payment_status: str = "paid") -> dict[str, Any]:
        """Pay an open session, as a customer would; deliver checkout.session.completed."""
        if payment_status not in PAYMENT_STATUSES:
            raise _invalid(
                f"payment_status must be one of {', '.join(PAYMENT_STATUSES)}", "payment_status"
            )
        with self._lock:
            session = self._open_session(session_id, "completed")
            session.update(**_completed_fields(session.data, payment_status))
            data, event = session.data, self._auto_event(session, "checkout.session.completed")
        self._deliver_auto_event(event)
        return json.loads(_to_json(data))

    def expire_session(self, session_id: str) -> dict[str, Any]:
        """Expire an open session; deliver checkout.session.expired."""
        with self._lock:
            session = self._open_session(session_id, "expired")
            session.update(status="expired")
            data, event = session.data, self._auto_event(session, "checkout.session.expired")
        self._deliver_auto_event(event)
        return json.loads(_to_json(data))

    def deliver_event(
        self,
        session_id: str,
        event_type: str,
        *,
        url: str | None = None,
        secret: str | None = None,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        """Send one signed event now; an `event_id` seen before redelivers that same event."""
        if event_type not in EVENT_TYPES:
            raise _invalid(f"type must be one of {', '.join(EVENT_TYPES)}", "type")
        with self._lock:
            url = url or self._webhook_url
            secret = secret or self._webhook_secret
            if not url:
                raise _invalid("No webhook URL: pass `url` or configure one first.", "url")
            stored = self._events.get(event_id) if event_id else None
            if stored is not None:
                if stored.type != event_type or session_id not in ("", None, stored.session_id):
                    raise _invalid(f"Event {event_id} is for another session or type.", "event_id")
                payload = stored.payload
            else:
                session = self._session_for(session_id)
                _apply_event(session, event_type)
                payload = self._new_event(session, event_type, event_id)
        status, body = _post_event(url, secret, payload)
        self._record_delivery(payload, url, status, body)
        return {"event": json.loads(payload), "status": status, "body": body}

    def deliveries(self) -> list[dict[str, Any]]:
        """Every webhook delivery attempt since the last reset, oldest first."""
        with self._lock:
            return [dict(delivery) for delivery in self._deliveries]

    # --- events ---

    def _open_session(self, session_id: str, verb: str, livemode: bool | None = None) -> _Session:
        session = self._session_for(session_id, livemode)
        if session.data["status"] != "open":
            raise _invalid(f'Only Checkout Sessions with a status in ["open"] can be {verb}.')
        return session

    def _new_event(self, session: _Session, event_type: str, event_id: str | None = None) -> bytes:
        event_id = event_id or _random_id("evt_")
        event = {
            "id": event_id,
            "object": "event",
            "api_version": LATEST_API_VERSION,
            "created": int(time.time()),
            "data": {"object": session.data},
            "livemode": session.data["livemode"],
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
        payload = _to_json(event)
        self._events[event_id] = _StoredEvent(payload, session.data["id"], event_type)
        return payload

    def _auto_event(self, session: _Session, event_type: str) -> _Event:
        """The event Stripe would send for this change, if a webhook target is configured."""
        if not self._webhook_url:
            return _NO_EVENT
        payload = self._new_event(session, event_type)
        return _Event(payload, self._webhook_url, self._webhook_secret)

    def _deliver_auto_event(self, event: _Event) -> None:
        if event.payload:
            status, body = _post_event(event.url, event.secret, event.payload)
            self._record_delivery(event.payload, event.url, status, body)

    def _record_delivery(self, payload: bytes, url: str, status: int, body: str) -> None:
        event = json.loads(payload)
        with self._lock:
            self._deliveries.append(
                {
                    "event_id": event["id"],
                    "type": event["type"],
                    "session_id": event["data"]["object"]["id"],
                    "url": url,
                    "status": status,
                    "body": body[:1000],
                }
            )
            del self._deliveries[:-1000]

    # --- HTTP: /v1 ---

    def _handle(self, method: str, target: str, headers: Message, body: bytes) -> _Response | None:
        request_id = _random_id("req_", 14)
        path, _, query = target.partition("?")
        try:
            if path.startswith("/v1/"):
                return self._handle_api(method, path, query, headers, body, request_id)
            if path.startswith("/_emulator/"):
                return self._handle_helper(method, path, body, request_id)
            raise _unrecognized(method, path)
        except StripeEmulatorError as err:
            log_id = request_id if path.startswith("/v1/") else None
            return err.status, _to_json(err.error(log_id)), _headers(request_id, err.headers)
        except Exception:
            # A bug in the emulator: say so loudly, and answer like Stripe's own 500s.
            traceback.print_exc()
            error = StripeEmulatorError(500, "An unknown error occurred", type="api_error")
            return 500, _to_json(error.error(request_id)), _headers(request_id)

    def _handle_api(
        self, method: str, path: str, query: str, headers: Message, body: bytes, request_id: str
    ) -> _Response | None:
        endpoint, session_id = _route(method, path)
        with self._lock:
            self._calls["total"] += 1
            self._calls[endpoint] += 1
            latency_ms, fault, hang_seconds = self._take_fault()
            release = self._release_hangs
        if latency_ms:
            time.sleep(latency_ms / 1000)
        if fault == "hang":
            release.wait(hang_seconds)
            return None  # a hung upstream never answers: the client must time out
        if fault == "error_500":
            raise StripeEmulatorError(500, "An unknown error occurred", type="api_error")
        if fault == "rate_limit_429":
            raise StripeEmulatorError(
                429,
                "Too many requests hit the API too quickly. We recommend an exponential backoff "
                "of your requests.",
                code="rate_limit",
            )

        livemode = "_live_" in self._authenticate(headers.get("Authorization"))[:8]
        version = headers.get("Stripe-Version") or LATEST_API_VERSION
        version_date = _version_date(version)
        old_names = version_date < RENAMED_UI_MODES_SINCE
        response_headers = _headers(request_id, (("Stripe-Version", version),))
        if endpoint == "other":
            raise _unrecognized(method, path)
        if endpoint == "retrieve_session":
            expand = _parse_expand(_query_params(query).get("expand"))
            with self._lock:
                session = self._session_for(session_id, livemode)
                return 200, session.render(old_names=old_names, expand=expand), response_headers

        params = decode_form(body.decode("utf-8", "replace"))
        idempotency_key = headers.get("Idempotency-Key") or ""
        if len(idempotency_key) > IDEMPOTENCY_KEY_MAX_LENGTH:
            raise _invalid(
                f"Idempotency-Key must be no longer than {IDEMPOTENCY_KEY_MAX_LENGTH} characters."
            )
        # Stripe scopes keys to the account, and so does this: a rotated key still replays.
        scope = (livemode, idempotency_key)
        fingerprint = (path, body)
        event: _Event = _NO_EVENT
        # One lock over lookup, execution and storage, so a double submit creates one session.
        with self._lock:
            stored = self._idempotency.get(scope) if idempotency_key else None
            if stored is not None:
                return _replay(stored, fingerprint, idempotency_key, response_headers)
            if endpoint == "create_session":
                data, line_items = _build_session(
                    params, version_date=version_date, livemode=livemode, prices=self._prices
                )
                session = self._sessions[data["id"]] = _Session(data, line_items)
                self._sessions_created += 1
            else:
                _reject_unknown(params, frozenset({"expand"}), "")
                _parse_expand(params.get("expand"))
                session = self._open_session(session_id, "expired", livemode)
                session.update(status="expired")
                event = self._auto_event(session, "checkout.session.expired")
            payload = session.render(old_names=old_names, expand=params.get("expand"))
            # Only successes are stored: Stripe lets a request that failed validation, or hit a
            # 500, be retried with the same key.
            if idempotency_key:
                self._idempotency[scope] = _StoredResponse(fingerprint, payload, request_id)
        if event.payload:
            # Stripe sends events asynchronously; the API answer must not wait on the endpoint.
            threading.Thread(target=self._deliver_auto_event, args=(event,), daemon=True).start()
        return 200, payload, response_headers

    def _take_fault(self) -> tuple[float, str, float]:
        """Decide this request's latency and fault; the caller holds the lock."""
        faults = self._faults
        mode = faults["mode"]
        if mode == "random_500":
            mode = "error_500" if self._rng.random() < faults["probability"] else "none"
        decided = (faults["latency_ms"], mode, faults["hang_seconds"])
        if faults["remaining"] is not None:
            faults["remaining"] -= 1
            if faults["remaining"] <= 0:
                self._faults = {**DEFAULT_FAULTS, "latency_ms": self._base_latency_ms}
        return decided

    def _authenticate(self, authorization: str | None) -> str:
        if not authorization:
            raise StripeEmulatorError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
                headers=(("WWW-Authenticate", 'Basic realm="Stripe"'),),
            )
        scheme, _, credentials = authorization.partition(" ")
        key = credentials.strip()
        if scheme.lower() == "basic":  # curl -u sk_test_...:
            try:
                key = base64.b64decode(key).decode().partition(":")[0]
            except ValueError:
                key = ""
        elif scheme.lower() != "bearer":
            key = ""
        if key.startswith("pk_"):
            raise StripeEmulatorError(
                401,
                "This API call cannot be made with a publishable API key. Please use a secret API "
                "key. You can find a list of your API keys at "
                "https://dashboard.stripe.com/account/apikeys.",
            )
        valid_keys = self._valid_keys
        if not _looks_like_secret_key(key) or (valid_keys is not None and key not in valid_keys):
            raise StripeEmulatorError(
                401,
                f"Invalid API Key provided: {_redact(key)}",
                headers=(("WWW-Authenticate", 'Basic realm="Stripe"'),),
            )
        return key

    def _session_for(self, session_id: str, livemode: bool | None = None) -> _Session:
        """The session, as a key of the given mode may see it (helpers pass no mode)."""
        session = self._sessions.get(session_id)
        if session is None:
            raise _no_such_session(session_id)
        if livemode is not None and session.data["livemode"] != livemode:
            used, other = ("live", "test") if livemode else ("test", "live")
            raise StripeEmulatorError(
                404,
                f"No such checkout.session: '{session_id}'; a similar object exists in {other} "
                f"mode, but a {used} mode key was used to make this request.",
                code="resource_missing",
                param="session",
            )
        return session

    # --- HTTP: /_emulator/ test helpers ---

    def _helper_routes(self) -> dict[tuple[str, str], Callable[[dict[str, Any]], Any]]:
        """The /_emulator/<name> endpoints other than sessions/: each takes the JSON body."""

        def reset(_: dict[str, Any]) -> dict[str, Any]:
            self.reset()
            return {"ok": True}

        def set_keys(body: dict[str, Any]) -> dict[str, Any]:
            self.set_valid_keys(body.get("valid"))
            return {"valid": body.get("valid")}

        def add_price(body: dict[str, Any]) -> dict[str, Any]:
            return self.add_price(
                body.get("id"),
                body.get("unit_amount"),
                body.get("currency", "usd"),
                body.get("product_name", "Emulator product"),
            )

        def set_webhook(body: dict[str, Any]) -> dict[str, Any]:
            self.set_webhook(body.get("url"), body.get("secret"))
            return self._webhook_target()

        def deliver(body: dict[str, Any]) -> dict[str, Any]:
            return self.deliver_event(
                body.get("session_id"),
                body.get("type"),
                url=body.get("url"),
                secret=body.get("secret"),
                event_id=body.get("event_id"),
            )

        return {
            ("GET", "health"): lambda _: {"ok": True},
            ("POST", "reset"): reset,
            ("GET", "calls"): lambda _: self.calls(),
            ("GET", "faults"): lambda _: self.faults(),
            ("POST", "faults"): lambda body: self.set_faults(**body),
            ("POST", "keys"): set_keys,
            ("POST", "prices"): add_price,
            ("GET", "webhooks"): lambda _: self._webhook_target(),
            ("POST", "webhooks"): set_webhook,
            ("POST", "events"): deliver,
            ("GET", "events"): lambda _: {"deliveries": self.deliveries()},
        }

    def _webhook_target(self) -> dict[str, Any]:
        with self._lock:
            return {"url": self._webhook_url, "secret_set": bool(self._webhook_secret)}

    def _handle_helper(self, method: str, path: str, body: bytes, request_id: str) -> _Response:
        payload = _json_object(body) if method == "POST" else {}
        parts = path[len("/_emulator/") :].strip("/").split("/")
        if parts[0] == "sessions" and len(parts) in (2, 3):
            session_id = unquote(parts[1])
            action = parts[2] if len(parts) == 3 else ""
            if method == "GET" and not action:
                result = self.get_session(session_id)
                if result is None:
                    raise _no_such_session(session_id)
            elif method == "POST" and action == "complete":
                result = self.complete_session(session_id, payload.get("payment_status", "paid"))
            elif method == "POST" and action == "expire":
                result = self.expire_session(session_id)
            else:
                raise _unrecognized(method, path)
        else:
            handler = self._helper_routes().get((method, "/".join(parts)))
            if handler is None:
                raise _unrecognized(method, path)
            try:
                result = handler(payload)
            except TypeError as err:  # wrong field types, e.g. a list where an id belongs
                raise _invalid(f"Invalid request body: {err}") from err
        return 200, _to_json(result), _headers(request_id)


def _route(method: str, path: str) -> tuple[str, str]:
    """The /v1 endpoint a request is for (a calls() counter name), and its session id if any."""
    parts = path.split("/")  # "", "v1", "checkout", "sessions", id, "expire"
    if parts[1:4] != ["v1", "checkout", "sessions"]:
        return "other", ""
    session_id = unquote(parts[4]) if len(parts) > 4 else ""
    if len(parts) == 4 and method == "POST":
        return "create_session", ""
    if len(parts) == 5 and session_id and method == "GET":
        return "retrieve_session", session_id
    if len(parts) == 6 and session_id and parts[5] == "expire" and method == "POST":
        return "expire_session", session_id
    return "other", ""


def _replay(
    stored: _StoredResponse,
    fingerprint: tuple[str, bytes],
    key: str,
    headers: list[tuple[str, str]],
) -> _Response:
    if stored.fingerprint != fingerprint:
        raise StripeEmulatorError(
            400,
            "Keys for idempotent requests can only be used with the same parameters they were "
            f"first used with. Try using a key other than '{key}' if you meant to execute a "
            "different request.",
            type="idempotency_error",
        )
    replayed = [("Idempotent-Replayed", "true"), ("Original-Request", stored.request_id)]
    return 200, stored.body, headers + replayed


def _headers(request_id: str, extra: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, str]]:
    return [("Request-Id", request_id), *extra]


def _unrecognized(method: str, path: str) -> StripeEmulatorError:
    return StripeEmulatorError(
        404,
        f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we "
        "can help at https://support.stripe.com/.",
    )


def _version_date(version: str) -> str:
    date = version[:10]
    if not (len(date) == 10 and date[4] == date[7] == "-" and date.replace("-", "").isdigit()):
        raise _invalid(f"Invalid Stripe API version: {version}")
    return date


def _query_params(query: str) -> dict[str, Any]:
    params = decode_form(query)
    _reject_unknown(params, frozenset({"expand"}), "")
    return params


def _looks_like_secret_key(key: str) -> bool:
    body = key[8:]
    return (
        key.startswith(SECRET_KEY_PREFIXES)
        and bool(body)
        and body.isascii()
        and body.replace("_", "").isalnum()
    )


def _redact(key: str) -> str:
    """Stripe's way of naming a bad key: keep its prefix and last four characters."""
    prefix = next((p for p in (*SECRET_KEY_PREFIXES, "sk_", "rk_") if key.startswith(p)), "")
    hidden = key[len(prefix) : -4] if len(key) - len(prefix) > 4 else key[len(prefix) :]
    visible = key[len(prefix) + len(hidden) :]
    return prefix + "*" * len(hidden) + visible


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError as err:
        raise _invalid(f"Invalid JSON body: {err}") from err
    if not isinstance(value, dict):
        raise _invalid("The JSON body must be an object.")
    return value


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
    elif data["status"] == "open":  # completed, or async_payment_failed: complete but unpaid
        paid = "paid" if event_type == "checkout.session.completed" else "unpaid"
        session.update(**_completed_fields(data, paid))


def _post_event(url: str, secret: str | None, payload: bytes) -> tuple[int, str]:
    """POST a signed event as Stripe does; errors come back as (0, text), never raised."""
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": _WEBHOOK_USER_AGENT,
    }
    if secret:  # without a secret the event goes unsigned, to test that it is refused
        headers["Stripe-Signature"] = sign_payload(payload, secret)
    request = urllib.request.Request(url, data=payload, headers=headers, method="POST")
    try:
        with _webhook_opener.open(request, timeout=10) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")
    except (OSError, ValueError) as err:
        return 0, f"{type(err).__name__}: {err}"


def sign_payload(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header value for `payload`, exactly as Stripe computes it."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{timestamp}.".encode() + payload
    signature = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={signature}"


# --- HTTP server ---------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: load tests reuse connections
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._write((400, _to_json({"error": {"message": "Bad Content-Length"}}), []))
            return
        body = self.rfile.read(length) if length else b""
        response = self.server.emulator._handle(method, self.path, self.headers, body)
        if response is None:
            self.close_connection = True
            return
        self._write(response)

    def _write(self, response: _Response) -> None:
        status, body, headers = response
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in headers),
        ]
        if self.close_connection:
            lines.append("Connection: close")
        # One write for head and body: two small writes per answer stall keep-alive clients.
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per request would cost more than answering it


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: StripeEmulator) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        self.emulator._count_connection()
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client went away mid-answer (timeouts, stop()): expected, not a bug
        super().handle_error(request, client_address)


# --- Command line --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.stripe_emulator",
        description="A stateful Stripe Checkout Sessions emulator for local development and tests.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0, help="delay every /v1 answer")
    parser.add_argument("--webhook-url", help="deliver checkout.session.* events here")
    parser.add_argument("--webhook-secret", help="sign events with this whsec_ secret")
    args = parser.parse_args(argv)

    emulator = StripeEmulator(
        args.host,
        args.port,
        latency_ms=args.latency_ms,
        webhook_url=args.webhook_url,
        webhook_secret=args.webhook_secret,
    )
    try:
        emulator.start()
    except OSError as err:
        print(f"Cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    stop_requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_requested.set())
    print(f"Stripe emulator listening on {emulator.url}", flush=True)
    stop_requested.wait()
    emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
