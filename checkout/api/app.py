"""Dispatch: the API object that builds the service once, routes each request, answers as JSON."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from checkout.api.errors import api_error_for
from checkout.api.http import (
    BASE_HEADERS,
    CorsPolicy,
    check_canonical_path,
    check_header_sizes,
    error_response,
)
from checkout.api.routes import Endpoint, endpoint_at, match
from checkout.config import ConfigError, Settings, load_settings, server_limits
from checkout.errors import ApiError, RetryLater, api_error
from checkout.keys import check_named_secrets, check_secret_shapes
from checkout.logs import (
    crash_fields,
    current_request,
    new_request_id,
    redact,
    setup_logging,
    trace_of,
    traceparent_of,
)
from checkout.orders.delivery import (
    BadMessage,
    DeliverOrder,
    DeliveryFailed,
    DeliveryInProgress,
    change_in,
    deliver_order_from_settings,
)
from checkout.orders.ledger import LedgerUnavailable
from checkout.runtime import Service

log = logging.getLogger("checkout")
request_log = logging.getLogger("checkout.request")
worker_log = logging.getLogger("checkout.worker")

setup_logging()


class CheckoutApi:
    """The checkout API for one process: `handle` serves a request.

    The Service is built on first use, after gunicorn forks and never at import, from the
    environment (or `load`); `deliver` replaces the function that DELIVER_ORDER names (for the
    in-process delivery, without a topic). main.py owns the process's instance; a test builds its
    own.
    """

    def __init__(
        self,
        deliver: DeliverOrder | None = None,
        load: Callable[[], Settings] = load_settings,
    ) -> None:
        self._deliver = deliver
        self._load = load
        self._built: Service | ApiError | None = None  # the service, or why it cannot be
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        return isinstance(self._built, Service)

    def service(self) -> Service:
        """The Service, built on first use; ApiError 500 if the settings are wrong."""
        built = self._built
        if built is None:
            with self._lock:
                built = self._built
                if built is None:
                    built = self._built = self._build()
        if isinstance(built, ApiError):
            raise built
        return built

    def close(self) -> None:
        """Close the Stripe connection pool on its loop (when the process, or a test, is done)."""
        if isinstance(self._built, Service):
            self._built.gateway.close()
            self._built.publisher.close()
            self._built.worker.close()

    def _build(self) -> Service | ApiError:
        try:
            service = Service.from_settings(self._load(), self._deliver)
        except ConfigError as error:
            # The environment cannot change under a running process: keep the verdict.
            log.error("configuration error: %s", error)
            return api_error("payment_configuration_error", str(error))
        _announce(service.settings)
        return service

    async def handle(self, request: Request) -> Response:
        """Serve one request: route, check CORS, run the handler, log one line."""
        started = time.perf_counter()
        context: dict[str, Any] = {"request_id": new_request_id()}
        token = current_request.set(context)
        method, path = request.method, request.scope["path"]
        origin = request.headers.get("Origin")
        endpoint: Endpoint | None = None
        error: ApiError | None = None
        try:
            check_header_sizes(request)
            check_canonical_path(request)
            endpoint = match(path, method)
            context["public"] = endpoint.browser  # its Stripe calls may not take the reserve
            service = self.service()
            context["trace"] = trace_of(request.headers, service.trace_project)
            context["traceparent"] = traceparent_of(request.headers)
            if endpoint.browser and origin is not None and not service.cors.allows(origin):
                raise service.cors.refuse(origin)
            if method == "OPTIONS":
                response = CorsPolicy.preflight(endpoint.allowed_methods)
            else:
                response = await endpoint.handler(request, service)
        except Exception as caught:
            error = api_error_for(caught)  # an ApiError, or one of ours that the table answers
            if error is None:
                # A bug: its type, message and traceback go into this request's one log line
                # (below), secrets blanked; the client gets a sentence and the id.
                context["crash"] = caught
                error = api_error("internal_error")
            response = error_response(error, context["request_id"])
        try:
            # A 405 still knows its endpoint: whether CORS applies depends on the path alone.
            endpoint = endpoint or endpoint_at(path)
            self._finish(response, context["request_id"], endpoint, origin)
            _log_request(
                method, path, response, error, context, seconds=time.perf_counter() - started
            )
        finally:
            current_request.reset(token)
        after = context.get("after_response")
        if after:
            # Local in-process delivery only (no ORDER_EVENTS_TOPIC, never on Cloud Run): the
            # worker runs once the answer is sent, as it would behind Pub/Sub.
            response.background = BackgroundTask(_run_after_response, after)
        return response

    def _finish(
        self, response: Response, request_id: str, endpoint: Endpoint | None, origin: str | None
    ) -> None:
        headers = response.headers
        for name, value in BASE_HEADERS:
            headers[name] = value
        headers["X-Request-Id"] = request_id
        if endpoint is not None and not endpoint.browser:
            return
        CorsPolicy.decorate(
            response, origin if origin is not None and self._allows(origin) else None
        )

    def _allows(self, origin: str) -> bool:
        # A 404/405 is answered before the service is needed; CORS still wants the allowlist.
        try:
            return self.service().cors.allows(origin)
        except ApiError:
            return False  # misconfigured: the error response says so, without CORS


class FulfilApi:
    """`fulfil_order` for one process: the same Service as the API's, built on first use.

    Each CloudEvent carries one Pub/Sub message of the order topic. The answer is what Pub/Sub
    acts on: 2xx acknowledges it (delivered now, or before); anything else makes it redeliver
    later, and after the subscription's maximum attempts send it to the dead-letter topic.
    """

    def __init__(
        self, deliver: DeliverOrder | None = None, load: Callable[[], Settings] = load_settings
    ) -> None:
        self._api = CheckoutApi(deliver, load)

    async def handle(self, event_id: str, data: object) -> None:
        """Deliver one message's change; HTTPException (non-2xx) when Pub/Sub must retry."""
        started = time.perf_counter()
        fields: dict[str, Any] = {"ce_id": str(event_id)[:100]}
        status, outcome = 200, "delivered"
        # The change's trace (a message attribute): every record of this delivery joins it.
        context: dict[str, Any] = {"request_id": fields["ce_id"], "delivery": True}
        token = current_request.set(context)
        try:
            change = change_in(data)
            fields.update(change_id=change.change_id, type=change.type)
            service = self._api.service()
            attributes = _attributes_of(data)
            context["trace"] = trace_of(attributes, service.trace_project)
            context["traceparent"] = traceparent_of(attributes)
            if not await service.worker.deliver(change):
                outcome = "duplicate"
        except DeliveryInProgress:
            # Queued behind the run that holds the change or its order, which publishes it again
            # when it ends: acknowledged, so that a duplicate uses up none of Pub/Sub's attempts.
            outcome = "in_progress"
        except BadMessage as error:
            status, outcome = 400, "bad_message"
            fields["detail"] = redact(str(error))[:300]
        except ApiError as error:  # the settings are wrong: logged when the service was built
            status, outcome = 500, "misconfigured"
            fields["detail"] = error.code
        except DeliveryFailed as error:
            status, outcome = 500, "failed"
            fields["detail"] = redact(str(error))[:300]
        except RetryLater as error:  # the ledger (or another part) is away: Pub/Sub retries
            status = 503
            outcome = (
                "ledger_unavailable" if isinstance(error, LedgerUnavailable) else "unavailable"
            )
            fields["detail"] = redact(str(error))[:300]
        fields.update(
            outcome=outcome, status=status, latency=f"{time.perf_counter() - started:.6f}s"
        )
        level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
        try:
            worker_log.log(level, "fulfil_order %s", outcome, extra={"fields": fields})
        finally:
            current_request.reset(token)
        if status >= 300:
            raise HTTPException(status, outcome)

    def close(self) -> None:
        self._api.close()


def _attributes_of(data: object) -> dict[str, str]:
    message = data.get("message") if isinstance(data, dict) else None
    attributes = message.get("attributes") if isinstance(message, dict) else None
    if not isinstance(attributes, dict):
        return {}
    return {str(k): str(v) for k, v in attributes.items()}


def exit_if_misconfigured() -> None:
    """On Cloud Run, check the settings before serving, and exit at once if they are wrong.

    Called when main.py is imported, in the server's first process, before it listens: a revision
    whose process exits never becomes ready, so traffic stays on the previous one. Locally the
    error is answered per request instead (and `make run` refuses to start).
    """
    if not os.environ.get("K_SERVICE", "").strip():
        # Locally the same checks of the secrets' shapes, said as loudly, before any request.
        try:
            check_secret_shapes(load_settings())
            server_limits()
        except ConfigError as error:
            log.error("configuration error: %s", error)
        return
    try:
        settings = load_settings()
        check_secret_shapes(settings)
        server_limits()
        deliver_order_from_settings(settings)
        if os.environ.get("FUNCTION_TARGET", "checkout_api") != "fulfil_order":
            check_api_can_start(settings)
        # Last, after the checks that need no network: one Secret Manager read per named secret.
        check_named_secrets(settings)
    except ConfigError as error:
        log.critical("configuration error, not starting: %s", error)
        raise SystemExit(1) from None


def check_api_can_start(settings: Settings) -> None:
    """What the API needs on Cloud Run beyond valid settings: a webhook, and a topic for it."""
    if settings.webhook_required and not settings.webhook_secret_configured:
        raise ConfigError(
            "no webhook signing secret: set STRIPE_WEBHOOK_SECRET or STRIPE_WEBHOOK_SECRET_NAME "
            "(python -m checkout register-webhook makes one, docs/deploy.md); without a webhook a "
            "customer who pays and closes the tab is never recorded. WEBHOOK_REQUIRED=false "
            "starts anyway, at that risk"
        )
    if settings.order_events_topic is None:
        raise ConfigError(
            "ORDER_EVENTS_TOPIC is required on Cloud Run: order changes go to Pub/Sub and the "
            "fulfil_order worker delivers them (docs/pubsub.md); in-process delivery after a "
            "response would stall once Cloud Run throttles the CPU"
        )


async def _run_after_response(tasks: list[Callable[[], Any]]) -> None:
    for task in tasks:
        try:
            await task()
        except Exception as error:  # logged by the worker; the next delivery retries it
            log.warning("in-process delivery failed: %s", type(error).__name__)


def _log_request(
    method: str,
    path: str,
    response: Response,
    error: ApiError | None,
    context: dict[str, Any],
    *,
    seconds: float,
) -> None:
    status = response.status_code
    path = path[:200]
    fields: dict[str, Any] = {
        "httpRequest": {
            "requestMethod": method[:20],
            "requestUrl": path,
            "status": status,
            "latency": f"{seconds:.6f}s",
        }
    }
    if context.get("stripe_request_id"):
        fields["stripe_request_id"] = context["stripe_request_id"]
    if error is not None:
        fields["code"] = error.code
        if error.detail:
            # A detail can quote what the client sent (its address, its Origin): blank secrets.
            fields["detail"] = redact(error.detail)
    crash = context.get("crash")
    if crash is not None:
        fields.update(crash_fields(crash))
    level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
    request_log.log(level, "%s %s %s", method[:20], path, status, extra={"fields": fields})


def _announce(settings: Settings) -> None:
    if not settings.stripe_key_configured:
        where = "on Cloud Run" if settings.on_cloud_run else "locally (use `make run`)"
        log.error(
            "no Stripe key configured %s: set STRIPE_SECRET_KEY or STRIPE_SECRET_NAME; "
            "payment requests will answer 500 payment_configuration_error",
            where,
        )
    elif settings.stripe_api_base:
        log.warning("Stripe API base overridden: %s", settings.stripe_api_base)
    if not settings.webhook_secret_configured:
        log.warning(
            "no webhook signing secret configured: set STRIPE_WEBHOOK_SECRET or "
            "STRIPE_WEBHOOK_SECRET_NAME; Stripe's events will answer 500 webhook_not_configured "
            "and only status calls will fulfil orders"
        )
    if settings.order_ledger == "memory" and settings.on_cloud_run:
        log.warning(
            "ORDER_LEDGER=memory on Cloud Run: each instance remembers fulfilment and handled "
            "events on its own, so a session can be fulfilled once per instance; set "
            "ORDER_LEDGER=firestore (docs/ledger.md)"
        )
