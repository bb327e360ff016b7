"""The HTTP layer's own parts, built once per process from the runtime's, in this one place."""

from __future__ import annotations

from dataclasses import dataclass

from checkout.api.http import CorsPolicy
from checkout.api.limits import ClientAddresses, TokenBuckets
from checkout.api.routes import CreateSession, Handlers, StatusPoll
from checkout.api.status_cache import NotFoundCache, Rechecks, StatusCache
from checkout.api.webhook import StripeWebhook
from checkout.once import SingleFlight
from checkout.orders.ledger.outages import OutageLog
from checkout.runtime import Runtime


@dataclass(frozen=True)
class HttpParts:
    """What the API adds to the runtime: its CORS policy, and each endpoint's handler."""

    cors: CorsPolicy
    handlers: Handlers

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> HttpParts:
        settings = runtime.settings
        client_of = ClientAddresses(settings.trusted_proxy_hops).of
        status_cache = StatusCache(
            settings.status_cache_size,
            settings.status_open_ttl_ms,
            paid_ttl=settings.status_paid_ttl_seconds,
        )
        create_session = CreateSession(
            runtime.gateway,
            TokenBuckets(settings.create_limit_per_minute),
            client_of,
            settings.deployment_id,
        )
        session_status = StatusPoll(
            runtime.gateway,
            runtime.ledger,
            runtime.recorder,
            runtime.catalogue,
            status_cache,
            NotFoundCache(settings.status_cache_size),
            Rechecks(
                settings.status_cache_size,
                settings.status_recheck_seconds,
                settings.status_recheck_per_minute,
            ),
            TokenBuckets(settings.status_limit_per_minute),
            client_of,
            OutageLog(),
        )
        stripe_webhook = StripeWebhook(
            runtime.webhook_secret, SingleFlight(), runtime.intake, status_cache
        )
        return cls(
            CorsPolicy.from_settings(settings),
            Handlers(create_session, session_status, stripe_webhook),
        )
