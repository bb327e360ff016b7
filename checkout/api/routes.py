"""The endpoints: the URL map and one handler per endpoint, readable top to bottom."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule

from checkout.api.http import json_response, read_json_object
from checkout.api.limits import TokenBuckets
from checkout.api.status_cache import NotFoundCache, Rechecks, StatusCache
from checkout.api.webhook import StripeWebhook
from checkout.errors import RetryLater, SessionNotFound, StripeFailure, api_error
from checkout.orders.intake import UNSETTLED, Intake
from checkout.orders.ledger import Ledger, LedgerUnavailable
from checkout.orders.ledger.outages import OutageLog
from checkout.orders.model import Order, is_chargeback
from checkout.orders.recorder import Recorder
from checkout.orders.session import SessionStatus
from checkout.stripe_access.gateway import StripeGateway

Handler = Callable[[Request], Awaitable[Response]]
ClientOf = Callable[[Request], str]  # who sent a request, for per-client limits (docs/abuse.md)

MAX_IMAGE_ID_CHARS = 500
MAX_IDEMPOTENCY_KEY_CHARS = 255
_SESSION_ID = re.compile(r"cs_(test|live)_[A-Za-z0-9]{1,250}")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")
# Control characters (C0, DEL, C1) and lone surrogates (JSON allows "\ud800"; UTF-8 cannot hold it).
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# What one status call may spend on the ledger in total, reads and writes together: past it the
# answer is Stripe's, kept like any other (docs/ledger.md, "A slow ledger").
STATUS_LEDGER_BUDGET_S = 1.0


@dataclass(frozen=True)
class CreateSession:
    """POST /api/checkout/embedded-session → {client_secret, session_id}."""

    gateway: StripeGateway
    create_limit: TokenBuckets  # per client
    client_of: ClientOf
    deployment_id: str  # hashed into the idempotency keys sent to Stripe

    async def __call__(self, request: Request) -> Response:
        body = await read_json_object(request)
        image_id = _image_id_from(body)
        client_key = _idempotency_key_from(request)
        client = self.client_of(request)
        self.create_limit.charge(client)
        idempotency_key = _stripe_idempotency_key(self.deployment_id, client, client_key)
        created = await self.gateway.create_session(image_id, idempotency_key)
        return json_response(
            200, {"client_secret": created.client_secret, "session_id": created.session_id}
        )


@dataclass(frozen=True)
class StatusPoll:
    """GET /api/checkout/session-status?session_id=cs_... → {status, payment_status, outcome, …}."""

    gateway: StripeGateway
    ledger: Ledger
    recorder: Recorder
    intake: Intake  # a settled session read from Stripe, recorded as the webhook records it
    status_cache: StatusCache  # answers kept per session; the webhook forgets what changed
    unknown_sessions: NotFoundCache  # ids Stripe said it does not know
    rechecks: Rechecks  # which polled paid orders to read again from Stripe (late refunds)
    status_limit: TokenBuckets  # per client: status calls past the cache (ledger, then Stripe)
    client_of: ClientOf
    ledger_outages: OutageLog

    async def __call__(self, request: Request) -> Response:
        session_id = _session_id_from(request)
        answer = self.status_cache.get(session_id)  # free: no limit, no Firestore, no Stripe
        ledger_until = asyncio.get_running_loop().time() + STATUS_LEDGER_BUDGET_S
        if answer is None:
            if session_id in self.unknown_sessions:
                raise SessionNotFound("remembered as unknown to Stripe")
            self.status_limit.charge(self.client_of(request))
            # What any instance recorded, from this deployment's order ledger; only then Stripe.
            answer, recheck = await _answer_from_ledger(self, session_id, ledger_until)
            if recheck is not None:
                answer = await _rechecked(self, session_id, recheck, ledger_until)
        if answer is None:
            answer = await _answer_from_stripe(self, session_id, ledger_until)
        return json_response(200, answer)


async def _answer_from_ledger(
    service: StatusPoll, session_id: str, ledger_until: float
) -> tuple[dict[str, Any] | None, Order | None]:
    """The ledger's answer for an order whose session is settled (None: none, or unreachable),
    or the paid order to read again from Stripe now (a refund whose webhook never came).

    The ledger holds only this deployment's orders (checkout/orders/ledger), so an answer from it is
    never another deployment's session.
    """
    try:
        async with asyncio.timeout_at(ledger_until):
            found = await service.ledger.order(session_id, quick=True)
    except (LedgerUnavailable, TimeoutError) as error:
        service.ledger_outages.failed(_slow(error), "answered from Stripe")
        return None, None
    if found is None or not found.settled:
        return None, None
    if found.paid and service.rechecks.due(session_id):
        return None, found
    order = found
    try:
        if order.unpublished():
            # A change a failed publish left (rare: Pub/Sub was away): published now, under the
            # ledger's and the publisher's own deadlines, not cut short, since a publish cut in
            # the middle would hold its claim, and so the change, for PUBLISH_CLAIM_SECONDS.
            await service.recorder.publish_pending(order)
    except RetryLater as error:
        service.ledger_outages.failed(_slow(error), "answered from the ledger, not yet published")
        return order.public(), None  # not kept: the next poll tries to publish it again
    service.ledger_outages.succeeded()
    answer = order.public()
    service.status_cache.put(session_id, answer, final=order.final)
    return answer, None


async def _rechecked(
    service: StatusPoll, session_id: str, order: Order, ledger_until: float
) -> dict[str, Any]:
    """A paid order read again from Stripe (recording what it shows); the ledger's answer if
    Stripe cannot say now: a recheck never turns a poll the ledger can answer into an error."""
    try:
        return await _answer_from_stripe(service, session_id, ledger_until)
    except SessionNotFound:
        raise
    except StripeFailure:
        answer = order.public()
        service.status_cache.put(session_id, answer, final=order.final)
        return answer


async def _answer_from_stripe(
    service: StatusPoll, session_id: str, ledger_until: float
) -> dict[str, Any]:
    """Ask Stripe; a settled session is recorded (and its change published) before the answer.

    The return page can beat the webhook (or none is set up): this is the same path the webhook
    takes. If recording fails or the call's ledger budget is spent, the customer gets Stripe's
    status, kept like any answer (so a slow ledger costs one Stripe read per session per cache
    period), and the next call after that, Stripe's retry or the reconciler records it.
    """
    try:
        session = await service.gateway.retrieve_session(session_id)
    except SessionNotFound:
        service.unknown_sessions.add(session_id)
        raise
    try:
        taken = await service.intake.record_polled_session(session, ledger_until)
    except (RetryLater, TimeoutError) as error:
        service.ledger_outages.failed(_slow(error), "answered from Stripe, not recorded")
        answer = await _without_ledger(service, session)
        service.status_cache.put(session_id, answer, final=not session.paid)
        return answer
    if taken.not_ours:
        # Another integration's session on the same account: answered exactly as an
        # unknown id, so that not even its existence leaks (checkout/orders/catalogue.py).
        service.unknown_sessions.add(session_id)
        raise SessionNotFound("the session exists but is not this deployment's")
    if taken.reason == UNSETTLED:
        answer = session.public()
        service.status_cache.put(session_id, answer, final=False)  # open: STATUS_OPEN_TTL_MS only
        return answer
    if taken.order is None:  # not what this deployment sells: not recorded, not kept
        return session.public()
    service.ledger_outages.succeeded()
    answer = taken.order.public()
    service.status_cache.put(session_id, answer, final=taken.order.final)
    return answer


def _stripe_length(value: str) -> int:
    """`value`'s length as strictly as Stripe could count it against a metadata limit.

    Stripe documents "value: 500-character limit" (https://docs.stripe.com/metadata) without the
    unit. A character may be counted as a code point, a UTF-16 code unit (2 per emoji) or a UTF-8
    byte (up to 4): UTF-8 bytes are never fewer than the other two, so a value within them is
    within any. A lone surrogate (refused below) counts 3, as CESU-8 would write it.
    """
    return len(value.encode("utf-8", "surrogatepass"))


async def _without_ledger(service: StatusPoll, session: SessionStatus) -> dict[str, Any]:
    """Stripe's answer when the ledger cannot give one: a disputed Charge's disputes are read
    too (one more Stripe read, kept with the answer), so an open chargeback is not told `paid`."""
    answer = session.public()
    if not (session.paid and session.disputed and session.payment_intent):
        return answer
    try:
        statuses = await service.gateway.dispute_statuses(session.payment_intent)
    except StripeFailure:
        return answer  # Stripe's session and Charge alone: docs/ledger.md says what that misses
    if any(is_chargeback(status) for status in statuses):
        answer["outcome"] = "disputed"
    return answer


def _slow(error: Exception) -> Exception:
    if isinstance(error, TimeoutError):
        return LedgerUnavailable(f"the ledger took the status call's {STATUS_LEDGER_BUDGET_S:g} s")
    return error


def _image_id_from(body: dict[str, Any]) -> str | None:
    if "imageId" not in body:
        return None
    image_id = body["imageId"]
    if not isinstance(image_id, str) or not 1 <= _stripe_length(image_id) <= MAX_IMAGE_ID_CHARS:
        raise api_error(
            "invalid_image_id",
            rule=f"be a string of 1 to {MAX_IMAGE_ID_CHARS} characters (UTF-8 bytes)",
        )
    if _CONTROL_CHARS.search(image_id):
        raise api_error("invalid_image_id", rule="not contain control characters or broken text")
    return image_id


def _idempotency_key_from(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not _PRINTABLE_ASCII.fullmatch(key):
        raise api_error("invalid_idempotency_key", limit=MAX_IDEMPOTENCY_KEY_CHARS)
    return key


def _stripe_idempotency_key(deployment_id: str, client: str, key: str | None) -> str | None:
    """The key sent to Stripe for a client's Idempotency-Key: same inputs, same key.

    Stripe's key space is the whole account's. Hashing in this deployment's id keeps our keys
    apart from other integrations' and other deployments'; hashing in the client's address keeps
    two customers who send the same predictable key ("1", "checkout") from sharing a session.
    """
    if key is None:
        return None
    digest = hashlib.sha256(f"{deployment_id}\n{client}\n{key}".encode()).hexdigest()
    return f"{deployment_id}-{digest}"


def _session_id_from(request: Request) -> str:
    values = request.query_params.getlist("session_id")
    if len(values) != 1 or not _SESSION_ID.fullmatch(values[0]):
        raise api_error("invalid_session_id")
    return values[0]


@dataclass(frozen=True)
class Handlers:
    """One handler per endpoint, each built once with its own collaborators (api/parts.py)."""

    create_session: CreateSession
    session_status: StatusPoll
    stripe_webhook: StripeWebhook


@dataclass(frozen=True)
class Endpoint:
    path: str
    handler: Callable[[Handlers], Handler]  # this endpoint's, among the process's handlers
    methods: tuple[str, ...]
    browser: bool  # called cross-origin by the frontend, so CORS and preflight apply

    @property
    def allowed_methods(self) -> tuple[str, ...]:
        return (*self.methods, "OPTIONS") if self.browser else self.methods


ENDPOINTS: dict[str, Endpoint] = {
    "create_session": Endpoint(
        "/api/checkout/embedded-session", lambda h: h.create_session, ("POST",), browser=True
    ),
    "session_status": Endpoint(
        "/api/checkout/session-status", lambda h: h.session_status, ("GET",), browser=True
    ),
    # Called by Stripe, not by browsers: no CORS, and an Origin header is ignored.
    "stripe_webhook": Endpoint(
        "/api/checkout/webhook", lambda h: h.stripe_webhook, ("POST",), browser=False
    ),
}

URL_MAP = Map(
    [Rule(e.path, endpoint=name, methods=e.allowed_methods) for name, e in ENDPOINTS.items()],
    merge_slashes=False,
)
_ROUTER = URL_MAP.bind("")


_BY_PATH = {e.path: e for e in ENDPOINTS.values()}


def endpoint_at(path: str) -> Endpoint | None:
    """The endpoint at a path whatever the method (one trailing slash optional), if any."""
    return _BY_PATH.get(_without_trailing_slash(path))


def match(path: str, method: str) -> Endpoint:
    """The endpoint for a path (one trailing slash optional), or ApiError 404/405."""
    path = _without_trailing_slash(path)
    try:
        # HEAD would run the GET handler, and so spend a Stripe call, to answer no body at all.
        name, _ = _ROUTER.match(path, "HEAD-IS-NOT-SERVED" if method == "HEAD" else method)
    except NotFound:
        raise api_error("not_found") from None
    except MethodNotAllowed as exc:
        allowed = ", ".join(sorted(set(exc.valid_methods or ()) - {"HEAD"}))
        raise api_error(
            "method_not_allowed", headers={"Allow": allowed}, method=method[:20], allowed=allowed
        ) from None
    return ENDPOINTS[name]


def _without_trailing_slash(path: str) -> str:
    return path[:-1] if len(path) > 1 and path.endswith("/") else path
