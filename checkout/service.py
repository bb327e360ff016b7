"""The service: every part a handler may use, built once per process from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from checkout.catalogue import Catalogue
from checkout.config import Settings
from checkout.fulfilment import (
    DELIVER_TIMEOUT_S,
    DeliverOrder,
    Fulfilment,
    deliver_order_from_settings,
)
from checkout.http import CorsPolicy
from checkout.keys import SecretSource, stripe_api_key_source, webhook_secret_source
from checkout.ledger import Ledger, OutageLog, ledger_from_settings
from checkout.limits import TokenBuckets, client_address
from checkout.once import OncePerKey
from checkout.status_cache import NotFoundCache, StatusCache
from checkout.stripe_gateway import StripeGateway

# How long a duplicate webhook delivery waits for the first one before answering 503 (Stripe
# retries it).
DUPLICATE_EVENT_WAIT_S = 30.0


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
    duplicate_event_wait: float  # seconds a duplicate delivery waits for the first one
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
    def from_settings(
        cls,
        settings: Settings,
        deliver: DeliverOrder | None = None,
        duplicate_event_wait: float = DUPLICATE_EVENT_WAIT_S,
    ) -> Service:
        """Build every part once; `deliver` defaults to DELIVER_ORDER's function, or ours."""
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
            duplicate_event_wait=duplicate_event_wait,
            ledger=ledger,
            ledger_outages=OutageLog(),
            catalogue=catalogue,
            fulfilment=Fulfilment(
                status_cache,
                ledger,
                catalogue,
                deliver or deliver_order_from_settings(settings),
                # Under the claim's lease: past it another instance may take the session over.
                deliver_timeout=min(DELIVER_TIMEOUT_S, 0.75 * settings.ledger_lease_seconds),
            ),
            unknown_sessions=NotFoundCache(settings.status_cache_size),
            create_limit=TokenBuckets(settings.create_limit_per_minute),
            status_limit=TokenBuckets(settings.status_limit_per_minute),
        )


def _project_in(secret_name: str | None) -> str | None:
    if secret_name and secret_name.startswith("projects/"):
        return secret_name.split("/")[1] or None
    return None
