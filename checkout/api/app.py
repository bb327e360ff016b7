"""Dispatch: the API object that builds its parts once, routes each request, answers as JSON."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.background import BackgroundTask
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
from checkout.api.parts import HttpParts
from checkout.api.routes import Endpoint, endpoint_at, match
from checkout.config import ConfigError, Settings, load_settings
from checkout.errors import ApiError, api_error
from checkout.logs import (
    crash_fields,
    new_request_id,
    redact,
    trace_of,
    traceparent_of,
)
from checkout.orders.delivery import DeliverOrder
from checkout.request_context import RequestContext, current_request
from checkout.runtime import OnFirstUse, Runtime

log = logging.getLogger("checkout")
request_log = logging.getLogger("checkout.request")


class CheckoutApi:
    """The checkout API for one process: `handle` serves a request.

    Its parts are built on first use, after gunicorn forks and never at import, from the
    environment (or `load`); `deliver` replaces the function that DELIVER_ORDER names (for the
    in-process delivery, without a topic). main.py owns the process's instance; a test builds its
    own.
    """

    def __init__(
        self,
        deliver: DeliverOrder | None = None,
        load: Callable[[], Settings] = load_settings,
    ) -> None:
        self._runtime = OnFirstUse(deliver, load, announce=_announce)
        self._parts: HttpParts | None = None
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        return self._runtime.built

    def runtime(self) -> Runtime:
        """The shared parts, built on first use; ApiError 500 if the settings are wrong."""
        try:
            return self._runtime.get()
        except ConfigError as error:
            raise api_error("payment_configuration_error", str(error)) from None

    def parts(self) -> HttpParts:
        """The API's own parts, built from the runtime on first use (ApiError as `runtime`)."""
        parts = self._parts
        if parts is None:
            runtime = self.runtime()
            with self._lock:
                parts = self._parts
                if parts is None:
                    parts = self._parts = HttpParts.from_runtime(runtime)
        return parts

    def close(self) -> None:
        """Close the Stripe connection pool on its loop (when the process, or a test, is done)."""
        self._runtime.close()

    async def handle(self, request: Request) -> Response:
        """Serve one request: route, check CORS, run the handler, log one line."""
        started = time.perf_counter()
        context = RequestContext(request_id=new_request_id())
        token = current_request.set(context)
        method, path = request.method, request.scope["path"]
        origin = request.headers.get("Origin")
        endpoint: Endpoint | None = None
        error: ApiError | None = None
        crash: Exception | None = None
        try:
            check_header_sizes(request)
            check_canonical_path(request)
            endpoint = match(path, method)
            context.public = endpoint.browser  # its Stripe calls may not take the reserve
            runtime, parts = self.runtime(), self.parts()
            context.trace = trace_of(request.headers, runtime.trace_project)
            context.traceparent = traceparent_of(request.headers)
            if endpoint.browser and origin is not None and not parts.cors.allows(origin):
                raise parts.cors.refuse(origin)
            if method == "OPTIONS":
                response = CorsPolicy.preflight(endpoint.allowed_methods)
            else:
                response = await endpoint.handler(parts.handlers)(request)
        except Exception as caught:
            error = api_error_for(caught)  # an ApiError, or one of ours that the table answers
            if error is None:
                # A bug: its type, message and traceback go into this request's one log line
                # (below), secrets blanked; the client gets a sentence and the id.
                crash = caught
                error = api_error("internal_error")
            response = error_response(error, context.request_id)
        try:
            # A 405 still knows its endpoint: whether CORS applies depends on the path alone.
            endpoint = endpoint or endpoint_at(path)
            self._finish(response, context.request_id, endpoint, origin)
            _log_request(
                method,
                path,
                response,
                error,
                crash=crash,
                stripe_request_id=context.stripe_request_id,
                seconds=time.perf_counter() - started,
            )
        finally:
            current_request.reset(token)
        after = context.after_response
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
        # A 404/405 is answered before the parts are needed; CORS still wants the allowlist.
        try:
            return self.parts().cors.allows(origin)
        except ApiError:
            return False  # misconfigured: the error response says so, without CORS


async def _run_after_response(tasks: list[Callable[[], Awaitable[None]]]) -> None:
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
    *,
    crash: Exception | None,
    stripe_request_id: str | None,
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
    if stripe_request_id:
        fields["stripe_request_id"] = stripe_request_id
    if error is not None:
        fields["code"] = error.code
        if error.detail:
            # A detail can quote what the client sent (its address, its Origin): blank secrets.
            fields["detail"] = redact(error.detail)
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
