"""The /v1 endpoints beyond a session's create, retrieve and expire: which request is which, and
what it reads or writes (PaymentIntents, Charges, Refunds, Disputes, the session and event lists,
webhook endpoints).

`api` authenticates, injects faults and keeps idempotency for these as for sessions, then calls
`read` (GET) or `write` (POST, DELETE) under its lock.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from email.message import Message
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote

from devtools.stripe_emulator.events import LoggedEvent
from devtools.stripe_emulator.form_params import reject_unknown
from devtools.stripe_emulator.listing import PAGINATION_PARAMS, page, parse_created
from devtools.stripe_emulator.state import _invalid

if TYPE_CHECKING:
    from devtools.stripe_emulator.api import StripeEmulator

# By (method, path under /v1 with `*` for an id); the names are calls()'s counters.
ROUTES = {
    ("GET", "checkout/sessions"): "list_sessions",
    ("GET", "payment_intents/*"): "retrieve_payment_intent",
    ("GET", "charges/*"): "retrieve_charge",
    ("POST", "refunds"): "create_refund",
    ("GET", "refunds/*"): "retrieve_refund",
    ("GET", "disputes/*"): "retrieve_dispute",
    ("GET", "events"): "list_events",
    ("GET", "events/*"): "retrieve_event",
    ("POST", "webhook_endpoints"): "create_webhook_endpoint",
    ("GET", "webhook_endpoints"): "list_webhook_endpoints",
    ("GET", "webhook_endpoints/*"): "retrieve_webhook_endpoint",
    ("POST", "webhook_endpoints/*"): "update_webhook_endpoint",
    ("DELETE", "webhook_endpoints/*"): "delete_webhook_endpoint",
}
ENDPOINTS = tuple(ROUTES.values())
_WORDS = frozenset(
    {"checkout", "sessions", "expire"}
    | {word for _, pattern in ROUTES for word in pattern.split("/") if word != "*"}
)
_EXPAND = frozenset({"expand"})
_SESSION_LIST_PARAMS = PAGINATION_PARAMS | {
    "created", "customer", "customer_account", "customer_details", "payment_intent",
    "payment_link", "status", "subscription",
}  # fmt: skip


class Request(NamedTuple):
    """One of these requests, once `api` has authenticated it."""

    endpoint: str
    object_id: str
    query: str
    headers: Message
    body: bytes
    request_id: str
    livemode: bool


def route(method: str, path: str) -> tuple[str, str] | None:
    """The endpoint (a ROUTES name) and object id of a /v1 request, or None if not one of these."""
    parts = path.split("/")[2:]  # "", "v1", then e.g. "refunds", id
    ids = [unquote(part) for part in parts if part not in _WORDS]
    pattern = "/".join(part if part in _WORDS else "*" for part in parts)
    endpoint = ROUTES.get((method, pattern))
    if endpoint is None or len(ids) > 1 or any(not i for i in ids):
        return None
    return endpoint, ids[0] if ids else ""


def read(
    emulator: StripeEmulator,
    endpoint: str,
    object_id: str,
    params: dict[str, Any],
    livemode: bool,
    old_names: bool,
) -> dict[str, Any]:
    """A GET; the caller holds the emulator's lock."""
    if endpoint == "list_sessions":
        return _list_sessions(emulator, params, livemode, old_names)
    bus = emulator._bus
    if endpoint == "list_events":
        return bus.list_page(params, livemode)
    reject_unknown(params, PAGINATION_PARAMS if endpoint.startswith("list_") else _EXPAND)
    if endpoint == "list_webhook_endpoints":
        items = bus.endpoints.newest_first(livemode)
        return page(items, lambda _: True, params, "/v1/webhook_endpoints", "webhook_endpoint")
    if endpoint == "retrieve_event":
        return bus.retrieve(object_id, livemode)
    if endpoint == "retrieve_webhook_endpoint":
        return bus.endpoints.retrieve(object_id, livemode)
    payments = emulator._payments
    lookups: dict[str, Callable[[str, bool], dict[str, Any]]] = {
        "retrieve_payment_intent": payments.intent,
        "retrieve_charge": payments.charge,
        "retrieve_refund": payments.refund,
        "retrieve_dispute": payments.dispute,
    }
    found = lookups[endpoint](object_id, livemode)
    return _expanded(emulator, found, _expand_list(params.get("expand")))


def write(
    emulator: StripeEmulator,
    endpoint: str,
    object_id: str,
    params: dict[str, Any],
    livemode: bool,
    request: tuple[str | None, str | None],
) -> tuple[dict[str, Any], list[LoggedEvent]]:
    """A POST or DELETE, and the events it emits; the caller holds the emulator's lock."""
    expand = _expand_list(params.pop("expand", None))
    if endpoint == "create_refund":
        refund, changes = emulator._payments.create_refund(params, livemode)
        return _expanded(emulator, refund, expand), emulator._emit_changes(changes, request)
    endpoints = emulator._bus.endpoints
    if endpoint == "create_webhook_endpoint":
        return endpoints.create(params, livemode), []
    if endpoint == "update_webhook_endpoint":
        return endpoints.update(object_id, params, livemode), []
    return endpoints.delete(object_id, livemode), []


def _expanded(emulator: StripeEmulator, found: dict[str, Any], expand: list[str]) -> dict[str, Any]:
    """`found` with ids replaced by their objects (`latest_charge`, `payment_intent`, `charge`)."""
    payments = emulator._payments
    stores = {
        "latest_charge": payments.charges,
        "charge": payments.charges,
        "payment_intent": payments.intents,
    }
    shown = dict(found)
    for item in expand:
        field, _, rest = item.partition(".")
        store = stores.get(field)
        if store is None or field not in shown:
            raise _invalid(f"This property cannot be expanded ({item}).", "expand")
        target = store.get(shown[field]) if isinstance(shown[field], str) else None
        if target is not None:
            shown[field] = _expanded(emulator, target, [rest] if rest else [])
    return shown


def _list_sessions(
    emulator: StripeEmulator, params: dict[str, Any], livemode: bool, old_names: bool
) -> dict[str, Any]:
    """GET /v1/checkout/sessions: newest first, by status, created, payment_intent, customer."""
    reject_unknown(params, _SESSION_LIST_PARAMS)
    created = parse_created(params.get("created"))
    status = params.get("status")
    if status is not None and status not in ("complete", "expired", "open"):
        raise _invalid("Invalid status: must be one of complete, expired, or open", "status")
    equal = {
        name: params[name]
        for name in ("payment_intent", "customer", "subscription", "payment_link")
        if params.get(name) is not None
    }
    details = params.get("customer_details")
    email = details.get("email") if isinstance(details, dict) else None
    expand = [item.removeprefix("data.") for item in _expand_list(params.get("expand"))]
    if any(item.split(".", 1)[0] not in ("line_items", "payment_intent") for item in expand):
        raise _invalid("Only data.line_items and data.payment_intent expand here.", "expand")

    def keep(data: dict[str, Any]) -> bool:
        return (
            (status is None or data["status"] == status)
            and created(data["created"])
            and all(data.get(name) == value for name, value in equal.items())
            and (email is None or (data["customer_details"] or {}).get("email") == email)
        )

    sessions = emulator._sessions
    newest = sorted(
        (s for s in reversed(sessions.values()) if s.data["livemode"] == livemode),
        key=lambda s: s.data["created"],
        reverse=True,  # stable: among equal `created`, the later session comes first
    )
    listing = page(
        [s.data for s in newest], keep, params, "/v1/checkout/sessions", "checkout.session"
    )
    if old_names or expand:
        listing["data"] = [
            json.loads(sessions[data["id"]].render(old_names=old_names, expand=expand))
            for data in listing["data"]
        ]
    return listing


def _expand_list(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _invalid("Invalid array", "expand")
    return value
