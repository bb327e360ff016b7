"""The service: every part a handler may use, built once per process from the settings."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from starlette.requests import Request

from checkout.api.http import CorsPolicy
from checkout.api.limits import TokenBuckets, client_address
from checkout.api.status_cache import NotFoundCache, Rechecks, StatusCache
from checkout.config import Settings
from checkout.keys import SecretSource, stripe_api_key_source, webhook_secret_source
from checkout.logs import OutageLog
from checkout.once import SingleFlight
from checkout.orders.catalogue import Catalogue
from checkout.orders.delivery import DeliverOrder, Worker, deliver_order_from_settings
from checkout.orders.intake import Intake, Outcome
from checkout.orders.ledger import Ledger, ledger_from_settings
from checkout.orders.publisher import InProcessPublisher, Publisher, PubSubPublisher
from checkout.orders.recorder import Recorder
from checkout.stripe_access.gateway import StripeGateway

T = TypeVar("T")


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
    webhook_events: SingleFlight[Outcome]  # concurrent duplicates of one event share one attempt
    ledger: Ledger  # orders, events, deliveries: this process, or every instance (Firestore)
    ledger_outages: OutageLog
    catalogue: Catalogue  # what this deployment sells, and how its sessions are marked
    publisher: Publisher  # the order topic, or this process's worker (local)
    recorder: Recorder  # record a fact, then publish its changes: the one way orders change
    intake: Intake  # events and session reads made order facts: every caller's one path
    worker: Worker  # fulfil_order's: delivers each change once
    unknown_sessions: NotFoundCache  # ids Stripe said it does not know
    rechecks: Rechecks  # which polled paid orders to read again from Stripe (late refunds)
    create_limit: TokenBuckets  # per client: creates
    status_limit: TokenBuckets  # per client: status calls past the cache (ledger, then Stripe)

    def client_of(self, request: Request) -> str:
        """Who sent `request`, for per-client limits (docs/abuse.md)."""
        peer = request.client.host if request.client is not None else None
        forwarded_for = request.headers.getlist("X-Forwarded-For")
        return client_address(forwarded_for, peer, self.settings.trusted_proxy_hops)

    def run(self, work: Callable[[Service], Awaitable[T]]) -> T:
        """`work(self)` in a loop of its own (a command's, a job's); then close what it opened."""

        async def run() -> T:
            try:
                return await work(self)
            finally:
                self.gateway.close()  # on the loop its pool was opened on
                await asyncio.sleep(0)  # the close it schedules runs before the loop ends

        try:
            return asyncio.run(run())
        finally:
            self.publisher.close()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        deliver: DeliverOrder | None = None,
    ) -> Service:
        """Build every part once; `deliver` defaults to DELIVER_ORDER's function, or ours."""
        api_key = stripe_api_key_source(settings)
        status_cache = StatusCache(
            settings.status_cache_size,
            settings.status_open_ttl_ms,
            paid_ttl=settings.status_paid_ttl_seconds,
        )
        ledger = ledger_from_settings(settings)
        catalogue = Catalogue.from_settings(settings)
        worker = Worker(
            ledger,
            deliver or deliver_order_from_settings(settings),
            settings.ledger_lease_seconds,
            settings.delivery_timeout_seconds,
        )
        publisher: Publisher = (
            PubSubPublisher(settings.order_events_topic)
            if settings.order_events_topic
            else InProcessPublisher(worker.deliver, ledger.mark_unpublished)
        )
        worker.redeliver = publisher.publish  # hands on what was queued behind a run
        gateway = StripeGateway(settings, api_key)
        recorder = Recorder(ledger, publisher)
        return cls(
            settings=settings,
            cors=CorsPolicy(settings.allowed_origins, settings.allow_any_origin),
            api_key=api_key,
            gateway=gateway,
            status_cache=status_cache,
            trace_project=settings.google_cloud_project or _project_in(settings.stripe_secret_name),
            webhook_secret=webhook_secret_source(settings),
            webhook_events=SingleFlight(),
            ledger=ledger,
            ledger_outages=OutageLog(),
            catalogue=catalogue,
            publisher=publisher,
            recorder=recorder,
            intake=Intake(ledger, recorder, gateway, catalogue),
            worker=worker,
            unknown_sessions=NotFoundCache(settings.status_cache_size),
            rechecks=Rechecks(
                settings.status_cache_size,
                settings.status_recheck_seconds,
                settings.status_recheck_per_minute,
            ),
            create_limit=TokenBuckets(settings.create_limit_per_minute),
            status_limit=TokenBuckets(settings.status_limit_per_minute),
        )


def _project_in(secret_name: str | None) -> str | None:
    if secret_name and secret_name.startswith("projects/"):
        return secret_name.split("/")[1] or None
    return None
