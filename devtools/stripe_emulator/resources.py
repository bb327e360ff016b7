"""The /v1 endpoints beyond a session's create, retrieve and expire: PaymentIntents, Charges,
Refunds, Disputes, the session and event lists, webhook endpoints; `api` checks, then calls
`read` (GET) or `write` (POST, DELETE) under its lock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol
from urllib.parse import unquote

import stripe

from devtools.stripe_emulator import expansions, shapes
from devtools.stripe_emulator.events import EventBus, LoggedEvent
from devtools.stripe_emulator.listing import page, parse_created
from devtools.stripe_emulator.payments import Change, Payments
from devtools.stripe_emulator.state import (
    UI_MODE_NEW_TO_OLD,
    StripeEmulatorError,
    _invalid,
    _Session,
)


class Store(Protocol):
    """What the endpoints read and write of the emulator (api.Store), under its lock."""

    @property
    def _payments(self) -> Payments: ...

    @property
    def _sessions(self) -> dict[str, _Session]: ...

    @property
    def _products(self) -> dict[str, dict[str, Any]]: ...

    @property
    def _bus(self) -> EventBus: ...

    def _emit_changes(
        self, changes: list[Change], request: tuple[str | None, str | None] = (None, None)
    ) -> list[LoggedEvent]: ...


class Route(NamedTuple):
    name: str  # calls()'s counter
    params: str  # the pinned SDK's TypedDict of its parameters (params.register)
    answers: str  # the SDK class of what it answers, or of a list's items


def _route(name: str, answers: str) -> Route:
    """`list_disputes`, `Dispute` -> the TypedDict `stripe.params.DisputeListParams`."""
    package, _, cls = answers.rpartition(".")
    action = name.partition("_")[0].capitalize()
    params = f"stripe.params.{package + '.' if package else ''}{cls}{action}Params"
    return Route(name, params, f"stripe.{answers}")


# By (method, path under /v1 with `*` for an id).
ROUTES = {
    ("GET", "checkout/sessions"): _route("list_sessions", "checkout.Session"),
    ("GET", "payment_intents/*"): _route("retrieve_payment_intent", "PaymentIntent"),
    ("GET", "charges/*"): _route("retrieve_charge", "Charge"),
    ("POST", "refunds"): _route("create_refund", "Refund"),
    ("GET", "refunds/*"): _route("retrieve_refund", "Refund"),
    ("GET", "disputes"): _route("list_disputes", "Dispute"),
    ("GET", "disputes/*"): _route("retrieve_dispute", "Dispute"),
    ("GET", "events"): _route("list_events", "Event"),
    ("GET", "events/*"): _route("retrieve_event", "Event"),
    ("POST", "webhook_endpoints"): _route("create_webhook_endpoint", "WebhookEndpoint"),
    ("GET", "webhook_endpoints"): _route("list_webhook_endpoints", "WebhookEndpoint"),
    ("GET", "webhook_endpoints/*"): _route("retrieve_webhook_endpoint", "WebhookEndpoint"),
    ("POST", "webhook_endpoints/*"): _route("update_webhook_endpoint", "WebhookEndpoint"),
    ("DELETE", "webhook_endpoints/*"): _route("delete_webhook_endpoint", "WebhookEndpoint"),
}
_BY_NAME = {route.name: route for route in ROUTES.values()}
ENDPOINTS = tuple(_BY_NAME)
_WORDS = frozenset(
    {"checkout", "sessions", "expire"}
    | {word for _, pattern in ROUTES for word in pattern.split("/") if word != "*"}
)


class Request(NamedTuple):
    """One of these requests, once `api` has authenticated it and checked its parameters."""

    endpoint: str
    object_id: str
    params: dict[str, Any]  # without `expand`
    expand: list[str]
    livemode: bool
    old_names: bool  # the API version predates the ui_mode rename
    origin: tuple[str | None, str | None]  # request id and idempotency key, for its events


def route(method: str, path: str) -> tuple[str, str] | None:
    """The endpoint (a ROUTES name) and object id of a /v1 request, or None if not one of these."""
    parts = path.split("/")[2:]  # "", "v1", then e.g. "refunds", id
    ids = [unquote(part) for part in parts if part not in _WORDS]
    pattern = "/".join(part if part in _WORDS else "*" for part in parts)
    found = ROUTES.get((method, pattern))
    if found is None or len(ids) > 1 or any(not i for i in ids):
        return None
    return found.name, ids[0] if ids else ""


def params_of(endpoint: str) -> str:
    return _BY_NAME[endpoint].params


def expand_paths(endpoint: str, params: dict[str, Any]) -> list[str]:
    """Take `expand` out of the checked parameters: its paths, once the SDK class allows each."""
    paths: list[str] = params.pop("expand", None) or []
    answers = shapes.resource(_BY_NAME[endpoint].answers)
    try:
        if endpoint.startswith("list_"):
            shapes.check_list_expand(answers, paths)
        else:
            shapes.check_expand(answers, paths)
    except ValueError as err:
        raise _invalid(str(err), "expand") from None
    return paths


def objects(emulator: Store) -> expansions.Objects:
    """Every object an expansion may put in place of an id, and the lists made on request."""
    payments, sessions = emulator._payments, emulator._sessions
    return expansions.Objects(
        stores={
            stripe.PaymentIntent: payments.intents,
            stripe.Charge: payments.charges,
            stripe.Refund: payments.refunds,
            stripe.Dispute: payments.disputes,
            stripe.Product: emulator._products,
        },
        lists={
            (shapes.session_class(), "line_items"): lambda s: sessions[s["id"]].line_items_list(),
            (stripe.Charge, "refunds"): payments.refunds_of,
        },
    )


def read(emulator: Store, request: Request) -> dict[str, Any]:
    """A GET, its objects expanded; the caller holds the emulator's lock."""
    found = _READS[request.endpoint](emulator, request)
    answers = shapes.resource(_BY_NAME[request.endpoint].answers)
    found_objects = objects(emulator)
    if request.endpoint.startswith("list_"):
        paths = [path.partition(".")[2] for path in request.expand]  # "data." went
        found["data"] = [
            expansions.expand(answers, item, paths, found_objects, "data.")
            for item in found["data"]
        ]
        if request.old_names and request.endpoint == "list_sessions":
            found["data"] = [_old_names(session) for session in found["data"]]
        return found
    return expansions.expand(answers, found, request.expand, found_objects)


def write(emulator: Store, request: Request) -> tuple[dict[str, Any], list[LoggedEvent]]:
    """A POST or DELETE, and the events it emits; the caller holds the emulator's lock."""
    endpoint, object_id, params, livemode = (
        request.endpoint, request.object_id, request.params, request.livemode,
    )  # fmt: skip
    endpoints = emulator._bus.endpoints
    events: list[LoggedEvent] = []
    if endpoint == "create_refund":
        result, changes = emulator._payments.create_refund(params, livemode)
        events = emulator._emit_changes(changes, request.origin)
    elif endpoint == "create_webhook_endpoint":
        result = endpoints.create(params, livemode)
    elif endpoint == "update_webhook_endpoint":
        result = endpoints.update(object_id, params, livemode)
    else:
        return endpoints.delete(object_id, livemode), []
    answers = shapes.resource(_BY_NAME[endpoint].answers)
    return expansions.expand(answers, result, request.expand, objects(emulator)), events


def _retrieve_payment_intent(emulator: Store, request: Request) -> dict[str, Any]:
    intent = emulator._payments.intent(request.object_id, request.livemode)
    secret = request.params.get("client_secret")
    if secret is not None and secret != intent["client_secret"]:
        raise StripeEmulatorError(
            400,
            "The client_secret provided does not match the client_secret associated with the "
            "PaymentIntent.",
            param="client_secret",
        )
    return intent


def _list_sessions(emulator: Store, request: Request) -> dict[str, Any]:
    """GET /v1/checkout/sessions: newest first, by status, created, payment_intent, customer."""
    params, livemode = request.params, request.livemode
    created = parse_created(params.get("created"))
    status = params.get("status")
    equal = {
        name: params[name]
        for name in ("payment_intent", "customer", "subscription", "payment_link")
        if params.get(name) is not None
    }
    email = (params.get("customer_details") or {}).get("email")

    def keep(data: dict[str, Any]) -> bool:
        return (
            (status is None or data["status"] == status)
            and created(data["created"])
            and all(data.get(name) == value for name, value in equal.items())
            and (email is None or (data["customer_details"] or {}).get("email") == email)
        )

    newest = sorted(
        (s for s in reversed(emulator._sessions.values()) if s.data["livemode"] == livemode),
        key=lambda s: s.data["created"],
        reverse=True,  # stable: among equal `created`, the later session comes first
    )
    return page([s.data for s in newest], keep, params, "/v1/checkout/sessions", "checkout.session")


def _old_names(session: dict[str, Any]) -> dict[str, Any]:
    return {**session, "ui_mode": UI_MODE_NEW_TO_OLD.get(session["ui_mode"], session["ui_mode"])}


def _list_disputes(emulator: Store, request: Request) -> dict[str, Any]:
    """GET /v1/disputes: newest first, by charge, payment_intent, created."""
    params, livemode = request.params, request.livemode
    created = parse_created(params.get("created"))
    equal = {name: params[name] for name in ("charge", "payment_intent") if params.get(name)}

    def keep(data: dict[str, Any]) -> bool:
        return created(data["created"]) and all(data[k] == v for k, v in equal.items())

    newest = sorted(
        (d for d in reversed(emulator._payments.disputes.values()) if d["livemode"] == livemode),
        key=lambda d: d["created"],
        reverse=True,
    )
    return page([dict(d) for d in newest], keep, params, "/v1/disputes", "dispute")


def _list_webhook_endpoints(emulator: Store, request: Request) -> dict[str, Any]:
    items = emulator._bus.endpoints.newest_first(request.livemode)
    return page(items, lambda _: True, request.params, "/v1/webhook_endpoints", "webhook_endpoint")


def _list_events(emulator: Store, request: Request) -> dict[str, Any]:
    return emulator._bus.list_page(request.params, request.livemode)


def _retrieve_event(emulator: Store, request: Request) -> dict[str, Any]:
    return emulator._bus.retrieve(request.object_id, request.livemode)


def _retrieve_webhook_endpoint(emulator: Store, request: Request) -> dict[str, Any]:
    return emulator._bus.endpoints.retrieve(request.object_id, request.livemode)


def _retrieve_payment(kind: str) -> Callable[[Store, Request], dict[str, Any]]:
    """A Charge, Refund or Dispute by id, as a key of the request's mode may see it."""

    def retrieve(emulator: Store, request: Request) -> dict[str, Any]:
        lookup: Callable[[str, bool], dict[str, Any]] = getattr(emulator._payments, kind)
        return lookup(request.object_id, request.livemode)

    return retrieve


_READS: dict[str, Callable[[Store, Request], dict[str, Any]]] = {
    "list_sessions": _list_sessions,
    "list_events": _list_events,
    "list_disputes": _list_disputes,
    "list_webhook_endpoints": _list_webhook_endpoints,
    "retrieve_event": _retrieve_event,
    "retrieve_webhook_endpoint": _retrieve_webhook_endpoint,
    "retrieve_payment_intent": _retrieve_payment_intent,
    "retrieve_charge": _retrieve_payment("charge"),
    "retrieve_refund": _retrieve_payment("refund"),
    "retrieve_dispute": _retrieve_payment("dispute"),
}
