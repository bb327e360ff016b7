"""The only module that talks to Stripe: creates and reads Checkout Sessions, maps its errors."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import stripe

from checkout.config import Settings, is_live_key
from checkout.http import ApiError
from checkout.keys import SecretConfigError, SecretSource, SecretUnavailable
from checkout.limits import InFlightCap
from checkout.logs import current_request
from checkout.once import SingleFlight
from checkout.stripe_transport import StripeTransport

log = logging.getLogger("checkout.stripe")

# Metadata keys this service sets that status responses return; nothing else is returned.
OUR_METADATA_KEYS = ("imageId",)
# The metadata key that marks a session as this deployment's (its value: DEPLOYMENT_ID). Server
# side only: the browser never sets it and the status response never shows it (docs/webhooks.md).
MARKER_KEY = "checkout_deployment"
# PaymentIntent statuses that mean a submitted payment failed (the intent went back to asking
# for a payment method) or was abandoned: a complete but unpaid session will never be paid.
FAILED_PAYMENT_INTENT = frozenset({"requires_payment_method", "canceled"})
# The retrieve expands the PaymentIntent: its status tells a settling payment from a failed one.
RETRIEVE_EXPAND = ("payment_intent",)

BUSY_RETRY_AFTER = "2"
KEY_RETRY_AFTER = "5"

T = TypeVar("T")


@dataclass(frozen=True)
class SessionStatus:
    """What the status endpoint may reveal, plus the order facts fulfilment needs."""

    session_id: str
    status: str
    payment_status: str
    metadata: dict[str, str]
    # A delayed payment (bank debit) failed: `complete` + `unpaid` for good.
    payment_failed: bool = False
    amount_total: int | None = field(default=None, compare=False)
    currency: str | None = field(default=None, compare=False)
    livemode: bool = field(default=False, compare=False)
    marker: str | None = field(default=None, compare=False)  # metadata[MARKER_KEY], never shown
    # (price id, quantity) per line item, when Stripe sent them (expand[]=line_items); else None.
    line_items: tuple[tuple[str | None, int], ...] | None = field(default=None, compare=False)

    @property
    def terminal(self) -> bool:
        """Nothing about it can change again, so it may be cached forever.

        `complete` + `unpaid` is final only once the delayed payment failed: until then a
        bank debit may still turn it `paid` (checkout.session.async_payment_succeeded).
        """
        if self.status == "complete":
            return self.payment_status != "unpaid" or self.payment_failed
        return self.status == "expired"

    @property
    def outcome(self) -> str:
        """open, processing, paid, failed or expired: what the customer should be told."""
        if self.status != "complete":
            return "expired" if self.status == "expired" else "open"
        if self.payment_status != "unpaid":
            return "paid"
        return "failed" if self.payment_failed else "processing"

    def public(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "payment_status": self.payment_status,
            "outcome": self.outcome,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_stripe(cls, session: Any, *, payment_failed: bool = False) -> SessionStatus:
        """From a stripe Session object (attribute access: it is not a dict).

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
        return cls(
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
        )


def _field(obj: Any, name: str) -> Any:
    # StripeObject supports `in` and [] but not .get(): it is not a dict.
    return obj[name] if name in obj else None  # noqa: SIM401


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


@dataclass(frozen=True)
class CreatedSession:
    session_id: str
    client_secret: str


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
        # price, the line items tell whether the session sold it (checkout/catalogue.py).
        expand = [*RETRIEVE_EXPAND, *(["line_items"] if settings.stripe_price_id else [])]
        self._retrieve_params: dict[str, Any] = {"expand": expand}
        self._in_flight = InFlightCap(settings.stripe_max_in_flight)
        self._retrieves: SingleFlight[SessionStatus] = SingleFlight()

    async def create_session(
        self, image_id: str | None, idempotency_key: str | None
    ) -> CreatedSession:
        params = dict(self._session_template)
        # The marker is what makes the session ours: see checkout/catalogue.py.
        params["metadata"] = {MARKER_KEY: self._settings.deployment_id}
        if image_id is not None:
            params["metadata"]["imageId"] = image_id

        def call(client: stripe.StripeClient, options: dict[str, Any]) -> Awaitable[Any]:
            if idempotency_key is not None:
                options["idempotency_key"] = idempotency_key
            return client.v1.checkout.sessions.create_async(params=params, options=options)

        session = await self._call("create", call)
        return CreatedSession(session_id=session["id"], client_secret=session["client_secret"])

    async def retrieve_session(self, session_id: str) -> SessionStatus:
        """The session as Stripe has it now; concurrent reads of one session share one call."""

        def call(client: stripe.StripeClient, options: dict[str, Any]) -> Awaitable[Any]:
            return client.v1.checkout.sessions.retrieve_async(
                session_id, params=self._retrieve_params, options=options
            )

        async def retrieve() -> SessionStatus:
            return SessionStatus.from_stripe(await self._call("retrieve", call))

        return await self._retrieves.run(session_id, retrieve)

    def close(self) -> None:
        """Close the connection pool on its own loop (tests rebuild the service; nothing else)."""
        transport, self._client, self._transport = self._transport, None, None
        if transport is not None:
            transport.close_soon()

    async def _call(
        self, operation: str, call: Callable[[stripe.StripeClient, dict[str, Any]], Awaitable[T]]
    ) -> T:
        if not self._in_flight.try_enter():
            # Queueing behind a slow Stripe only makes every customer wait; the client retries.
            raise ApiError(
                503,
                "payment_provider_busy",
                "The payment provider is busy. Please retry shortly.",
                headers={"Retry-After": BUSY_RETRY_AFTER},
                detail=f"{self._settings.stripe_max_in_flight} Stripe calls already in flight",
            )
        try:
            return await self._call_in_flight(operation, call)
        finally:
            self._in_flight.leave()

    async def _call_in_flight(
        self, operation: str, call: Callable[[stripe.StripeClient, dict[str, Any]], Awaitable[T]]
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

    async def _key(self) -> str:
        try:
            key = await self._api_key.get_async()
        except SecretUnavailable as error:
            raise _key_unavailable(error) from None
        except SecretConfigError as error:
            raise _misconfigured(str(error)) from None
        return self._sendable(key)

    def _sendable(self, key: str) -> str:
        if self._settings.stripe_api_base and is_live_key(key):
            # Checked at startup for STRIPE_SECRET_KEY; a key from Secret Manager arrives here.
            raise _misconfigured(
                "the Stripe key is a live key but STRIPE_API_BASE is set: refusing to send it "
                "anywhere but Stripe"
            )
        return key

    async def _refreshed_key(self, stale: str) -> str:
        log.warning("Stripe answered 401 for the API key; re-reading the key")
        try:
            fresh = await self._api_key.refresh_async(stale)
        except SecretUnavailable as error:
            raise _key_unavailable(error) from None
        except SecretConfigError as error:
            raise _misconfigured(str(error)) from None
        return self._sendable(fresh)

    def _client_for_this_loop(self, key: str) -> stripe.StripeClient:
        # One event loop per worker process, so this builds once; a pool cannot cross loops.
        client, transport = self._client, self._transport
        if client is not None and transport is not None and transport.on_running_loop():
            return client
        if transport is not None:
            transport.close_soon()
        settings = self._settings
        base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
        api = settings.stripe_api_base or stripe.DEFAULT_API_BASE
        transport = StripeTransport(api, settings.stripe_timeout_seconds)
        client = stripe.StripeClient(
            key,
            base_addresses=base,
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


def _session_template(settings: Settings) -> dict[str, Any]:
    if settings.stripe_price_id:
        line_item: dict[str, Any] = {"price": settings.stripe_price_id, "quantity": 1}
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


def _note_stripe_request_id(request_id: str | None) -> None:
    request = current_request.get()
    if request is not None and request_id:
        request["stripe_request_id"] = request_id


def _map_stripe_error(operation: str, error: stripe.StripeError) -> ApiError:
    _note_stripe_request_id(getattr(error, "request_id", None))
    kind = type(error).__name__
    code = getattr(error, "code", None)
    # Stripe's messages can echo the (redacted) key for auth errors; keep those out of logs.
    said = "(omitted)" if isinstance(error, stripe.AuthenticationError) else error.user_message
    detail = f"stripe {operation}: {kind} http={error.http_status} code={code} message={said}"

    missing = isinstance(error, stripe.InvalidRequestError) and code == "resource_missing"
    if missing and operation == "retrieve":
        return session_not_found(detail)
    if isinstance(error, stripe.IdempotencyError):
        return ApiError(
            409,
            "idempotency_conflict",
            "This Idempotency-Key was already used with a different request body.",
            detail=detail,
        )
    if isinstance(error, stripe.RateLimitError):
        return ApiError(
            503,
            "payment_provider_busy",
            "The payment provider is busy. Please retry shortly.",
            headers={"Retry-After": BUSY_RETRY_AFTER},
            detail=detail,
        )
    if isinstance(error, stripe.APIConnectionError):
        return ApiError(
            504,
            "payment_provider_unreachable",
            "The payment provider did not answer in time. Please retry.",
            detail=detail,
        )
    if isinstance(
        error, (stripe.AuthenticationError, stripe.PermissionError, stripe.InvalidRequestError)
    ):
        return _misconfigured(detail)
    return ApiError(
        502,
        "payment_provider_error",
        "The payment provider returned an error. Please retry.",
        detail=detail,
    )


def session_not_found(detail: str) -> ApiError:
    return ApiError(404, "session_not_found", "No checkout session has that id.", detail=detail)


def _misconfigured(detail: str) -> ApiError:
    return ApiError(
        500,
        "payment_configuration_error",
        "Payments are not configured correctly on the server.",
        detail=detail,
    )


def _key_unavailable(error: Exception) -> ApiError:
    return ApiError(
        503,
        "payment_provider_unavailable",
        "Payments are temporarily unavailable. Please retry shortly.",
        headers={"Retry-After": KEY_RETRY_AFTER},
        detail=f"Stripe key unavailable: {error}",
    )
