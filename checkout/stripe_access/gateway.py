"""The only module that talks to Stripe: creates and reads Checkout Sessions, maps its errors."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import stripe

from checkout.api.limits import InFlightCap
from checkout.config import Settings, is_live_key
from checkout.errors import (
    IdempotencyConflict,
    ProviderBusy,
    ProviderError,
    ProviderUnavailable,
    ProviderUnreachable,
    SessionNotFound,
    StripeFailure,
    StripeMisconfigured,
)
from checkout.keys import SecretConfigError, SecretError, SecretSource, SecretUnavailable
from checkout.once import SingleFlight
from checkout.orders.session import MARKER_KEY, CreatedSession, SessionStatus
from checkout.orders.stripe_fields import session_status
from checkout.request_context import current_request
from checkout.stripe_access.transport import StripeTransport

if TYPE_CHECKING:  # the SDK's typed parameters: for the checker, never loaded at run time
    from stripe import Dispute, Event, ListObject, RequestOptions, WebhookEndpoint
    from stripe.checkout import Session
    from stripe.params import (
        DisputeListParams,
        EventListParams,
        WebhookEndpointCreateParams,
        WebhookEndpointUpdateParams,
    )
    from stripe.params.checkout import (
        SessionCreateParams,
        SessionCreateParamsLineItem,
        SessionListParams,
        SessionRetrieveParams,
    )

log = logging.getLogger("checkout.stripe")

# Stripe's largest page: the reconciler lists whole windows.
LIST_PAGE = 100
# The retrieve expands the PaymentIntent (its status tells a settling payment from a failed one)
# and its Charge (how much of it is refunded): the status is truthful even without the ledger.
RETRIEVE_EXPAND = ("payment_intent", "payment_intent.latest_charge")

T = TypeVar("T")

# Client keys remembered after a Stripe 5xx (see RetryKeys); the oldest are forgotten first.
MAX_REMEMBERED_FAILURES = 10_000


class RetryKeys:
    """The Stripe idempotency key to send for a caller's key: a fresh one after a Stripe 5xx.

    Stripe saves a keyed request's first result once its endpoint starts executing, a 500
    included, and replays it for that key for 24 hours. Without this, a client that retries a
    502 with the same Idempotency-Key (as it should after any failure) would get the same
    failure back all day. After a 5xx no session reached the client, so a new Stripe key cannot
    give it a second one; at worst Stripe holds an unused open session, which expires.
    Kept per instance: a retry that lands on another instance first gets the replayed failure
    there (Stripe answers it at once, creating nothing), and the one after that succeeds.
    """

    def __init__(self, limit: int = MAX_REMEMBERED_FAILURES) -> None:
        self._limit = limit
        self._attempts: OrderedDict[str, int] = OrderedDict()

    def current(self, key: str) -> tuple[str, int]:
        """The key to send for this attempt, and its attempt number (0: the caller's own)."""
        attempt = self._attempts.get(key, 0)
        return (key if attempt == 0 else f"{key}-retry{attempt}"), attempt

    def failed(self, key: str, attempt: int) -> None:
        """Stripe answered this attempt with a 5xx: the next one gets a new key."""
        self._attempts[key] = max(self._attempts.get(key, 0), attempt + 1)
        self._attempts.move_to_end(key)
        while len(self._attempts) > self._limit:
            self._attempts.popitem(last=False)


class StripeGateway:
    """Checkout Sessions through one StripeClient, built on first use inside the event loop.

    Never at import and never before gunicorn forks: its connection pool belongs to the loop of
    the worker that uses it.
    """

    def __init__(self, settings: Settings, api_key: SecretSource) -> None:
        self._settings = settings
        self._api_key = api_key
        self._client: stripe.StripeClient | None = None
        self._transport: StripeTransport | None = None
        self._session_template = _session_template(settings)
        # The PaymentIntent tells a failed delayed payment from a settling one; with a Dashboard
        # price, the line items tell whether the session sold it (checkout/orders/catalogue.py).
        expand = [*RETRIEVE_EXPAND, *(["line_items"] if settings.stripe_price_id else [])]
        self._retrieve_params: SessionRetrieveParams = {"expand": expand}
        self._in_flight = InFlightCap(
            settings.stripe_max_in_flight, settings.stripe_in_flight_reserve
        )
        self._retrieves: SingleFlight[SessionStatus] = SingleFlight()
        self._retry_keys = RetryKeys()

    async def create_session(
        self, image_id: str | None, idempotency_key: str | None
    ) -> CreatedSession:
        params = self._session_template.copy()
        # The marker is what makes the session ours: see checkout/orders/catalogue.py.
        metadata = {MARKER_KEY: self._settings.deployment_id}
        if image_id is not None:
            metadata["imageId"] = image_id
        params["metadata"] = metadata

        stripe_key, attempt = (None, 0)
        if idempotency_key is not None:
            stripe_key, attempt = self._retry_keys.current(idempotency_key)

        def call(client: stripe.StripeClient, options: RequestOptions) -> Awaitable[Session]:
            if stripe_key is not None:
                options["idempotency_key"] = stripe_key
            return client.v1.checkout.sessions.create_async(params=params, options=options)

        try:
            session = await self._call("create", call)
        except ProviderError:
            if idempotency_key is not None:
                self._retry_keys.failed(idempotency_key, attempt)
            raise
        return CreatedSession(session_id=session["id"], client_secret=session["client_secret"])

    async def retrieve_session(self, session_id: str) -> SessionStatus:
        """The session as Stripe has it now; concurrent reads of one session share one call."""

        def call(client: stripe.StripeClient, options: RequestOptions) -> Awaitable[Session]:
            return client.v1.checkout.sessions.retrieve_async(
                session_id, params=self._retrieve_params, options=options
            )

        async def retrieve() -> SessionStatus:
            return session_status(await self._call("retrieve", call))

        # Apart: a webhook's read must not share a public one that the cap is refusing.
        lane = "public" if _serves_public_traffic() else "reserved"
        return await self._retrieves.run(f"{lane}:{session_id}", retrieve)

    async def session_of_payment(self, payment_intent: str) -> SessionStatus | None:
        """The Checkout Session paid with `payment_intent` (a refund's or dispute's), if any."""

        def call(
            client: stripe.StripeClient, options: RequestOptions
        ) -> Awaitable[ListObject[Session]]:
            params: SessionListParams = {"payment_intent": payment_intent, "limit": 1}
            return client.v1.checkout.sessions.list_async(params=params, options=options)

        found = await self._call("list", call)
        return session_status(found.data[0]) if found.data else None

    async def dispute_statuses(self, payment_intent: str) -> list[str]:
        """The status of each dispute of `payment_intent`'s charge (one page: a charge has few)."""

        def call(
            client: stripe.StripeClient, options: RequestOptions
        ) -> Awaitable[ListObject[Dispute]]:
            params: DisputeListParams = {"payment_intent": payment_intent, "limit": LIST_PAGE}
            return client.v1.disputes.list_async(params=params, options=options)

        found = await self._call("list", call)
        return [str(dispute["status"]) for dispute in found.data]

    # -- for the operator commands (python -m checkout ...) -----------------------------------

    async def sessions_since(self, created_gte: int, status: str) -> AsyncIterator[Any]:
        """Every Checkout Session with `status` created since then, newest first, every page."""

        def page(after: str | None) -> Call[ListObject[Session]]:
            params: SessionListParams = {"status": status, "created": {"gte": created_gte}}
            return _page(lambda c, o, p: c.v1.checkout.sessions.list_async(params=p, options=o),
                         {**params, **_after(after)})  # fmt: skip

        async for session in self._every_page("list", page):
            yield session

    async def undelivered_events_since(
        self, created_gte: int, types: Sequence[str]
    ) -> AsyncIterator[dict[str, Any]]:
        """Every event of `types` since then that Stripe failed to deliver, as plain dicts."""

        def page(after: str | None) -> Call[ListObject[Event]]:
            params: EventListParams = {
                "created": {"gte": created_gte},
                "types": list(types),
                "delivery_success": False,
            }
            return _page(lambda c, o, p: c.v1.events.list_async(params=p, options=o),
                         {**params, **_after(after)})  # fmt: skip

        async for event in self._every_page("list", page):
            yield event.to_dict()

    async def webhook_endpoints(self) -> list[dict[str, Any]]:
        """Every webhook endpoint of the account, as plain dicts."""

        def page(after: str | None) -> Call[ListObject[WebhookEndpoint]]:
            return _page(lambda c, o, p: c.v1.webhook_endpoints.list_async(params=p, options=o),
                         _after(after))  # fmt: skip

        return [endpoint.to_dict() async for endpoint in self._every_page("list", page)]

    async def create_webhook_endpoint(
        self, url: str, events: Sequence[str], api_version: str
    ) -> dict[str, Any]:
        """A new endpoint; its `secret` is in this answer and never again."""
        params: WebhookEndpointCreateParams = {
            "url": url,
            "enabled_events": list(events),  # type: ignore[arg-type]
            "api_version": api_version,  # type: ignore[typeddict-item]
            "description": "checkout backend (python -m checkout register-webhook)",
        }

        def call(client: stripe.StripeClient, options: RequestOptions) -> Awaitable[Any]:
            return client.v1.webhook_endpoints.create_async(params=params, options=options)

        created: dict[str, Any] = (await self._call("create_webhook", call)).to_dict()
        return created

    async def update_webhook_endpoint(
        self, endpoint_id: str, events: Sequence[str]
    ) -> dict[str, Any]:
        params: WebhookEndpointUpdateParams = {
            "enabled_events": list(events),  # type: ignore[arg-type]
            "disabled": False,
        }

        def call(client: stripe.StripeClient, options: RequestOptions) -> Awaitable[Any]:
            return client.v1.webhook_endpoints.update_async(
                endpoint_id, params=params, options=options
            )

        updated: dict[str, Any] = (await self._call("update_webhook", call)).to_dict()
        return updated

    async def delete_webhook_endpoint(self, endpoint_id: str) -> None:
        def call(client: stripe.StripeClient, options: RequestOptions) -> Awaitable[Any]:
            return client.v1.webhook_endpoints.delete_async(endpoint_id, options=options)

        await self._call("delete_webhook", call)

    async def _every_page(
        self, operation: str, page: Callable[[str | None], Call[ListObject[Any]]]
    ) -> AsyncIterator[Any]:
        after: str | None = None
        while True:
            found = await self._call(operation, page(after))
            for item in found.data:
                yield item
            if not found.has_more or not found.data:
                return
            after = found.data[-1]["id"]

    def close(self) -> None:
        """Close the connection pool on its own loop (tests rebuild the service; nothing else)."""
        transport, self._client, self._transport = self._transport, None, None
        if transport is not None:
            transport.close_soon()

    async def _call(
        self, operation: str, call: Callable[[stripe.StripeClient, RequestOptions], Awaitable[T]]
    ) -> T:
        public = _serves_public_traffic()
        if not self._in_flight.try_enter(public=public):
            # Queueing behind a slow Stripe only makes every customer wait; the client retries.
            busy = self._in_flight.in_flight
            lane = "public" if public else "reserved"
            raise ProviderBusy(f"{busy} Stripe calls in flight, {lane} cap reached")
        try:
            return await self._call_in_flight(operation, call)
        finally:
            self._in_flight.leave()

    async def _call_in_flight(
        self, operation: str, call: Callable[[stripe.StripeClient, RequestOptions], Awaitable[T]]
    ) -> T:
        key = await self._key()
        client = self._client_for_this_loop(key)
        try:
            try:
                return self._noted(await call(client, {"api_key": key}))
            except stripe.AuthenticationError:
                # The key may have been rolled: re-read it once, and retry once if it changed.
                fresh = await self._refreshed_key(key)
                if fresh == key:
                    raise
                log.warning("Stripe rejected the cached API key; retrying once with the new one")
                return self._noted(await call(client, {"api_key": fresh}))
        except stripe.StripeError as error:
            raise _map_stripe_error(operation, error) from None

    async def livemode(self) -> bool | None:
        """Whether the key is a live one; None when no key can be had (the caller cannot tell)."""
        try:
            return is_live_key(await self._api_key.get_async())
        except SecretError:
            return None

    async def _key(self) -> str:
        with _key_errors():
            return self._sendable(await self._api_key.get_async())

    def _sendable(self, key: str) -> str:
        if self._settings.stripe_api_base and is_live_key(key):
            # Checked at startup for STRIPE_SECRET_KEY; a key from Secret Manager arrives here.
            raise StripeMisconfigured(
                "the Stripe key is a live key but STRIPE_API_BASE is set: refusing to send it "
                "anywhere but Stripe"
            )
        return key

    async def _refreshed_key(self, stale: str) -> str:
        log.warning("Stripe answered 401 for the API key; re-reading the key")
        with _key_errors():
            return self._sendable(await self._api_key.refresh_async(stale))

    def _client_for_this_loop(self, key: str) -> stripe.StripeClient:
        # One event loop per worker process, so this builds once; a pool cannot cross loops.
        client, transport = self._client, self._transport
        if client is not None and transport is not None and transport.on_running_loop():
            return client
        if transport is not None:
            transport.close_soon()
        settings = self._settings
        api = settings.stripe_api_base or stripe.DEFAULT_API_BASE
        transport = StripeTransport(api, settings.stripe_timeout_seconds)
        client = stripe.StripeClient(
            key,
            base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
            max_network_retries=settings.stripe_max_retries,
            http_client=transport,
        )
        self._client, self._transport = client, transport
        return client

    @staticmethod
    def _noted(result: T) -> T:
        response = getattr(result, "last_response", None)
        _note_stripe_request_id(getattr(response, "request_id", None))
        return result


Call = Callable[[stripe.StripeClient, "RequestOptions"], Awaitable[T]]


def _page(list_call: Callable[[stripe.StripeClient, RequestOptions, Any], Awaitable[T]],
          params: dict[str, Any]) -> Call[T]:  # fmt: skip
    def call(client: stripe.StripeClient, options: RequestOptions) -> Awaitable[T]:
        return list_call(client, options, {**params, "limit": LIST_PAGE})

    return call


def _after(after: str | None) -> dict[str, str]:
    return {"starting_after": after} if after is not None else {}


def _session_template(settings: Settings) -> SessionCreateParams:
    line_item: SessionCreateParamsLineItem
    if settings.stripe_price_id:
        line_item = {"price": settings.stripe_price_id, "quantity": 1}
    else:
        line_item = {
            "price_data": {
                "currency": settings.price_currency,
                "unit_amount": settings.price_amount,
                "product_data": {
                    "name": settings.product_name,
                    "description": settings.product_description,
                },
            },
            "quantity": 1,
        }
    return {
        "ui_mode": "embedded_page",
        "mode": "payment",
        "line_items": [line_item],
        "return_url": settings.return_url,
        "redirect_on_completion": settings.redirect_on_completion,
    }


def _serves_public_traffic() -> bool:
    """Whether this call serves a browser endpoint (app.py marks those requests); a webhook
    delivery, or anything outside a request (an operator command), may use the reserve."""
    request = current_request.get()
    return request is not None and request.public


def _note_stripe_request_id(request_id: str | None) -> None:
    request = current_request.get()
    if request is not None and request_id:
        request.stripe_request_id = request_id


@contextmanager
def _key_errors() -> Iterator[None]:
    """The key's errors as a Stripe call's: retry later, or ours to fix."""
    try:
        yield
    except SecretUnavailable as error:
        raise ProviderUnavailable(f"Stripe key unavailable: {error}") from None
    except SecretConfigError as error:
        raise StripeMisconfigured(str(error)) from None


def _map_stripe_error(operation: str, error: stripe.StripeError) -> StripeFailure:
    _note_stripe_request_id(getattr(error, "request_id", None))
    kind = type(error).__name__
    code = getattr(error, "code", None)
    # Stripe's messages can echo the (redacted) key for auth errors; keep those out of logs.
    said = "(omitted)" if isinstance(error, stripe.AuthenticationError) else error.user_message
    detail = f"stripe {operation}: {kind} http={error.http_status} code={code} message={said}"

    missing = isinstance(error, stripe.InvalidRequestError) and code == "resource_missing"
    if missing and operation == "retrieve":
        return SessionNotFound(detail)
    if isinstance(error, stripe.IdempotencyError):
        return IdempotencyConflict(detail)
    # A 409: another request with this key is still executing at Stripe (the SDK retried it).
    if isinstance(error, stripe.RateLimitError) or error.http_status == 409:
        return ProviderBusy(detail)
    if isinstance(error, stripe.APIConnectionError):
        return ProviderUnreachable(detail)
    if isinstance(
        error, (stripe.AuthenticationError, stripe.PermissionError, stripe.InvalidRequestError)
    ):
        return StripeMisconfigured(detail)
    return ProviderError(detail)
