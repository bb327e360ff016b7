"""`python -m checkout doctor --url URL`: is this deployment set up so that no order is lost?

One line per check, `ok` or `FAIL` with what to do; exit 0 only if all pass (docs/deploy.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from checkout.api.http import CorsPolicy
from checkout.config import Settings, is_live_key
from checkout.errors import StripeFailure
from checkout.keys import SecretError, SecretSource
from checkout.ops.register_webhook import ENABLED_EVENTS, PINNED_API_VERSION
from checkout.ops.subscriptions import Subscription, SubscriptionsUnavailable, TopicSubscriptions
from checkout.orders.ledger import Ledger, LedgerUnavailable
from checkout.orders.publisher import Publisher, PublishFailed
from checkout.runtime import Runtime
from checkout.stripe_access.gateway import StripeGateway

PROBE_SESSION = "cs_test_doctorprobe"
# The worker's request timeout in the deploy (cloudbuild.yaml's _WORKER_TIMEOUT), and Pub/Sub's
# longest ack deadline: a push answered later than the ack deadline is redelivered while it runs.
WORKER_REQUEST_TIMEOUT_S = 600
TRIGGER_FIX = (
    "fix: create the Eventarc trigger on the topic to the fulfil_order service "
    "(gcloud eventarc triggers create checkout-orders-worker --transport-topic {topic} ..., "
    "docs/deploy.md step 5)"
)


@dataclass(frozen=True)
class DoctorParts:
    """What doctor checks: the runtime's key, gateway, ledger and publisher, and the API's CORS."""

    settings: Settings
    api_key: SecretSource
    gateway: StripeGateway
    ledger: Ledger
    publisher: Publisher
    cors: CorsPolicy

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> DoctorParts:
        return runtime.hand(cls, cors=CorsPolicy.from_settings(runtime.settings))


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


async def doctor(service: DoctorParts, url: str) -> list[Check]:
    key_check, key = await _key(service)
    checks = [key_check]
    checks += await _webhook(service, url)
    checks += [_cors(service), _return_url(service, key)]
    checks += [await _ledger(service), await _topic(service)]
    checks += await _subscriptions(service)
    checks.append(await _undelivered(service))
    return checks


async def _key(service: DoctorParts) -> tuple[Check, str | None]:
    """The key check, and the key as the service resolves it (env or Secret Manager), if any."""
    try:
        key = await service.api_key.get_async()
    except SecretError as error:
        return Check("stripe key", False, f"{error}; fix: set STRIPE_SECRET_KEY or _NAME"), None
    mode = "live" if is_live_key(key) else "test"
    try:
        await _first(service.gateway.sessions_since(0, status="complete"))
    except StripeFailure as error:
        detail = f"{mode} key; Stripe answered {type(error).__name__}; fix: use a working key"
        return Check("stripe key", False, detail), key
    return Check("stripe key", True, f"works ({mode} mode)"), key


async def _webhook(service: DoctorParts, url: str) -> list[Check]:
    try:
        endpoints = [e for e in await service.gateway.webhook_endpoints() if e.get("url") == url]
    except StripeFailure as error:
        return [Check("webhook endpoint", False, f"cannot list endpoints: {type(error).__name__}")]
    register = f"fix: python -m checkout register-webhook --url {url}"
    if not endpoints:
        return [Check("webhook endpoint", False, f"none for {url}; {register}")]
    endpoint = endpoints[0]
    checks = [Check("webhook endpoint", True, f"{endpoint['id']} for {url}")]
    if len(endpoints) > 1:
        checks.append(Check("one endpoint", False, f"{len(endpoints)} for one URL; {register}"))
    status = str(endpoint.get("status"))
    enabled = status == "enabled"
    checks.append(Check("webhook enabled", enabled, status if enabled else f"{status}; {register}"))
    events = set(endpoint.get("enabled_events") or ())
    missing = sorted(set(ENABLED_EVENTS) - events) if "*" not in events else []
    checks.append(
        Check(
            "webhook events",
            not missing,
            "all handled events" if not missing else f"missing {', '.join(missing)}; {register}",
        )
    )
    version = endpoint.get("api_version")
    checks.append(
        Check(
            "webhook api version",
            version == PINNED_API_VERSION,
            f"{version}"
            + ("" if version == PINNED_API_VERSION else f", not {PINNED_API_VERSION}; {register}"),
        )
    )
    secret = service.settings.webhook_secret_configured
    checks.append(
        Check(
            "webhook secret",
            secret,
            "configured" if secret else "unset: set STRIPE_WEBHOOK_SECRET_NAME (or _SECRET)",
        )
    )
    return checks


def _cors(service: DoctorParts) -> Check:
    parts = urlsplit(service.settings.frontend_url)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    allowed = service.cors.allows(origin)
    detail = f"{origin} allowed" if allowed else f"{origin} refused: add it to ALLOWED_ORIGINS"
    return Check("cors", allowed, detail)


def _return_url(service: DoctorParts, key: str | None) -> Check:
    # The mode is the resolved key's (STRIPE_SECRET_NAME, the deploy's way, included); with no
    # key to tell, the URL must be fit for live mode.
    https = service.settings.return_url.startswith("https://")
    ok = https or (key is not None and not is_live_key(key))
    detail = service.settings.return_url.split("?")[0]
    if ok:
        return Check("return url", True, detail)
    mode = "in live mode" if key is not None else "unless the key is a test key"
    return Check("return url", False, f"{detail}: must be https {mode}; fix: FRONTEND_URL")


async def _ledger(service: DoctorParts) -> Check:
    try:
        await service.ledger.order(PROBE_SESSION)
    except LedgerUnavailable as error:
        return Check("ledger", False, str(error))
    kind = service.ledger.name
    if kind == "memory" and service.settings.on_cloud_run:
        return Check("ledger", False, "memory on Cloud Run: set ORDER_LEDGER=firestore")
    return Check("ledger", True, f"{kind} reachable")


async def _topic(service: DoctorParts) -> Check:
    topic = service.settings.order_events_topic
    if topic is None:
        ok = not service.settings.on_cloud_run
        return Check("order topic", ok, "unset: in-process delivery (local only)")
    try:
        await service.publisher.check()
    except PublishFailed as error:
        return Check("order topic", False, str(error))
    return Check("order topic", True, f"{topic} reachable")


async def _subscriptions(service: DoctorParts) -> list[Check]:
    """The worker's push subscription, its dead-letter policy and ack deadline, dead letters."""
    topic = service.settings.order_events_topic
    if topic is None:
        return []  # in-process delivery: the order topic check says whether that is allowed
    found = TopicSubscriptions(topic)
    try:
        subscriptions = await found.subscriptions()
    except SubscriptionsUnavailable as error:
        return [Check("worker subscription", False, str(error))]
    pushed = [s for s in subscriptions if s.push_endpoint]
    if not pushed:
        detail = f"{topic} has no push subscription: no change reaches fulfil_order; "
        checks = [Check("worker subscription", False, detail + TRIGGER_FIX.format(topic=topic))]
    else:
        checks = [Check("worker subscription", True, ", ".join(_name(s) for s in pushed))]
        checks += [_dead_letter_policy(s) for s in pushed]
        checks += [_ack_deadline(s) for s in pushed]
    try:
        backlog = await found.dead_letters(subscriptions)
        await found.put_back(backlog.letters)  # a look: the letters stay for reconcile
    except SubscriptionsUnavailable as error:
        return [*checks, Check("dead letters", False, str(error))]
    if backlog.count:
        oldest = backlog.summary()["oldest_age_seconds"]
        detail = (
            f"{backlog.count} waiting (oldest {oldest} s): changes the worker failed every "
            "attempt; fix: python -m checkout reconcile (delivers them again), and read "
            "checkout_delivery_failed in the worker's log"
        )
        return [*checks, Check("dead letters", False, detail)]
    return [*checks, Check("dead letters", True, "none")]


def _name(subscription: Subscription) -> str:
    return f"{subscription.name} -> {(subscription.push_endpoint or '').split('?')[0]}"


def _dead_letter_policy(subscription: Subscription) -> Check:
    name = subscription.name
    if subscription.dead_letter_topic is None:
        fix = (
            f"fix: gcloud pubsub subscriptions update {name} "
            "--dead-letter-topic=checkout-orders-dead-letter --max-delivery-attempts=10"
        )
        return Check("dead-letter policy", False, f"{name} has none: {fix}")
    if not subscription.dead_letter_subscriptions:
        fix = (
            "fix: gcloud pubsub subscriptions create checkout-orders-dead-letter-sub "
            f"--topic={subscription.dead_letter_topic} --message-retention-duration=7d"
        )
        detail = f"{subscription.dead_letter_topic} has no subscription, so it keeps nothing: "
        return Check("dead-letter policy", False, detail + fix)
    detail = (
        f"{subscription.max_delivery_attempts} attempts, then {subscription.dead_letter_topic} "
        f"({', '.join(subscription.dead_letter_subscriptions)})"
    )
    return Check("dead-letter policy", True, detail)


def _ack_deadline(subscription: Subscription) -> Check:
    seconds = subscription.ack_deadline_seconds
    if seconds >= WORKER_REQUEST_TIMEOUT_S:
        return Check("ack deadline", True, f"{seconds} s")
    detail = (
        f"{seconds} s, below the worker's request timeout ({WORKER_REQUEST_TIMEOUT_S} s): a slow "
        f"delivery is redelivered while it runs; fix: gcloud pubsub subscriptions update "
        f"{subscription.name} --ack-deadline={WORKER_REQUEST_TIMEOUT_S}"
    )
    return Check("ack deadline", False, detail)


async def _undelivered(service: DoctorParts) -> Check:
    grace = service.settings.undelivered_grace_seconds
    before = datetime.now(UTC) - timedelta(seconds=grace)
    try:
        found = await service.ledger.undelivered(published_before=before)
    except LedgerUnavailable as error:
        return Check("undelivered changes", False, str(error))
    if not found:
        return Check("undelivered changes", True, f"none older than {grace:g} s")
    oldest = min(record["published_at"] for record in found)
    age = round((datetime.now(UTC) - oldest).total_seconds())
    named = ", ".join(str(record["change_id"]) for record in found[:3])
    detail = (
        f"{len(found)} published and not delivered after {grace:g} s (oldest {age} s: {named}); "
        "fix: python -m checkout reconcile (delivers them again), then see the worker's "
        "checkout_delivery_failed records and the worker subscription check"
    )
    return Check("undelivered changes", False, detail)


async def _first(items: AsyncIterator[Any]) -> None:
    """Ask for one item: a call that proves the key works, whatever the account holds."""
    async for _ in items:
        break
