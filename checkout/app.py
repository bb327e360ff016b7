"""Wiring and dispatch: build the service once, route each request, answer errors as JSON."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from checkout.catalogue import Catalogue
from checkout.config import ConfigError, Settings, load_settings
from checkout.fulfilment import DELIVER_TIMEOUT_S, Fulfilment
from checkout.http import (
    BASE_HEADERS,
    ApiError,
    CorsPolicy,
    check_header_sizes,
    error_response,
)
from checkout.keys import SecretSource, stripe_api_key_source, webhook_secret_source
from checkout.ledger import Ledger, OutageLog, ledger_from_settings
from checkout.limits import TokenBuckets, client_address
from checkout.logs import crash_fields, current_request, setup_logging, trace_of
from checkout.once import OncePerKey
from checkout.routes import Endpoint, endpoint_at, match
from checkout.status_cache import NotFoundCache, StatusCache
from checkout.stripe_gateway import StripeGateway

log = logging.getLogger("checkout")
request_log = logging.getLogger("checkout.request")

setup_logging()


@dataclass(frozen=True)
class Service:
    """Everything a handler may use, built once per process from the settings."""

    settings: Settings
    cors: CorsPolicy
    api_key: SecretSource
    gateway: StripeGateway
    status_cache: StatusCache
    trace_project: str | None
    webhook_secret: SecretSource
    webhook_events: OncePerKey  # ids of the Stripe events this process handled
    ledger: Ledger  # fulfilment and handled events: this process, or every instance (Firestore)
    ledger_outages: OutageLog
    catalogue: Catalogue  # what this deployment sells, and how its sessions are marked
    fulfilment: Fulfilment
    unknown_sessions: NotFoundCache  # ids Stripe said it does not know
    create_limit: TokenBuckets  # per client: creates
    status_limit: TokenBuckets  # per client: status calls past the cache (ledger, then Stripe)

    def client_of(self, request: Request) -> str:
        """Who sent `request`, for per-client limits (docs/abuse.md)."""
        peer = request.client.host if request.client is not None else None
        return client_address(request.headers, peer, self.settings.trusted_proxy_hops)

    @classmethod
    def from_settings(cls, settings: Settings) -> Service:
        api_key = stripe_api_key_source(settings)
        status_cache = StatusCache(settings.status_cache_size, settings.status_open_ttl_ms)
        ledger = ledger_from_settings(settings)
        catalogue = Catalogue.from_settings(settings)
        return cls(
            settings=settings,
            cors=CorsPolicy(settings.allowed_origins, settings.allow_any_origin),
            api_key=api_key,
            gateway=StripeGateway(settings, api_key),
            status_cache=status_cache,
            trace_project=settings.google_cloud_project or _project_in(settings.stripe_secret_name),
            webhook_secret=webhook_secret_source(settings),
            webhook_events=OncePerKey(settings.webhook_dedupe_size),
            ledger=ledger,
            ledger_outages=OutageLog(),
            catalogue=catalogue,
            fulfilment=Fulfilment(
                status_cache,
                ledger,
                catalogue,
                # Under the claim's lease: past it another instance may take the session over.
                deliver_timeout=min(DELIVER_TIMEOUT_S, 0.75 * settings.ledger_lease_seconds),
            ),
            unknown_sessions=NotFoundCache(settings.status_cache_size),
            create_limit=TokenBuckets(settings.create_limit_per_minute),
            status_limit=TokenBuckets(settings.status_limit_per_minute),
        )


_service: Service | None = None
_service_error: ApiError | None = None
_service_lock = threading.Lock()


def get_service() -> Service:
    """The process's Service, built on first use (after gunicorn forks, never at import)."""
    global _service, _service_error
    if _service is not None:
        return _service
    with _service_lock:
        if _service is None and _service_error is None:
            try:
                _service = Service.from_settings(load_settings())
                _announce(_service.settings)
            except ConfigError as error:
                # The environment cannot change under a running process: remember the verdict.
                log.error("configuration error: %s", error)
                _service_error = ApiError(
                    500,
                    "payment_configuration_error",
                    "Payments are not configured correctly on the server.",
                    detail=str(error),
                )
    if _service_error is not None:
        raise _service_error
    return _service  # type: ignore[return-value]  # built above, or the error was raised


def exit_if_misconfigured() -> None:
    """On Cloud Run, check the settings before serving, and exit at once if they are wrong.

    Called when main.py is imported, in the server's first process, before it listens: a revision
    whose process exits never becomes ready, so traffic stays on the previous one. Locally the
    error is answered per request instead (and `make run` refuses to start).
    """
    if not os.environ.get("K_SERVICE", "").strip():
        return
    try:
        load_settings()
    except ConfigError as error:
        log.critical("configuration error, not starting: %s", error)
        raise SystemExit(1) from None


def reset_service() -> None:
    """Forget the built Service so the next request re-reads the environment (tests only)."""
    global _service, _service_error
    with _service_lock:
        if _service is not None:
            _service.gateway.close()
        _service, _service_error = None, None


async def handle(request: Request) -> Response:
    """Serve one request: route, check CORS, run the handler, log one line."""
    started = time.perf_counter()
    context: dict = {"request_id": _new_request_id()}
    token = current_request.set(context)
    method, path = request.method, request.scope["path"]
    origin = request.headers.get("Origin")
    endpoint: Endpoint | None = None
    error: ApiError | None = None
    try:
        check_header_sizes(request)
        endpoint = match(path, method)
        service = get_service()
        context["trace"] = trace_of(request.headers, service.trace_project)
        if endpoint.browser and origin is not None and not service.cors.allows(origin):
            raise service.cors.refuse(origin)
        if method == "OPTIONS":
            response = CorsPolicy.preflight(endpoint.allowed_methods)
        else:
            response = await endpoint.handler(request, service)
    except ApiError as caught:
        error = caught
        response = error_response(caught, context["request_id"])
    except Exception as crash:
        # A bug: its type, message and traceback go into this request's one log line (below),
        # with anything shaped like a secret blanked; the client gets a sentence and the id.
        context["crash"] = crash
        error = ApiError(500, "internal_error", "Something went wrong on our side. Please retry.")
        response = error_response(error, context["request_id"])
    try:
        # A 405 still knows its endpoint: whether CORS applies depends on the path alone.
        endpoint = endpoint or endpoint_at(path)
        _finish(response, context["request_id"], endpoint, origin)
        _log_request(method, path, response, error, context, seconds=time.perf_counter() - started)
    finally:
        current_request.reset(token)
    return response


def _new_request_id() -> str:
    # Unique, not secret, and cheaper than uuid4(), which makes a system call for os.urandom.
    return f"{random.getrandbits(128):032x}"


def _finish(response: Response, request_id: str, endpoint: Endpoint | None, origin: str | None):
    headers = response.headers
    for name, value in BASE_HEADERS:
        headers[name] = value
    headers["X-Request-Id"] = request_id
    if endpoint is not None and not endpoint.browser:
        return
    CorsPolicy.decorate(response, origin if origin is not None and _allows(origin) else None)


def _allows(origin: str) -> bool:
    # A 404/405 is answered before the service is needed; CORS still wants the allowlist.
    try:
        return get_service().cors.allows(origin)
    except ApiError:
        return False  # misconfigured: the error response says so, without CORS


def _log_request(
    method: str,
    path: str,
    response: Response,
    error: ApiError | None,
    context: dict,
    *,
    seconds: float,
) -> None:
    status = response.status_code
    path = path[:200]
    fields: dict = {
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
            fields["detail"] = error.detail
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


def _project_in(secret_name: str | None) -> str | None:
    if secret_name and secret_name.startswith("projects/"):
        return secret_name.split("/")[1] or None
    return None
