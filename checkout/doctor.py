"""`python -m checkout doctor --url URL`: is this deployment set up so that no order is lost?

One line per check, `ok` or `FAIL` with what to do; exit 0 only when every check passes. It reads
the same settings as the service, so run it with the deployment's environment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from checkout.config import is_live_key
from checkout.errors import ApiError
from checkout.keys import SecretConfigError, SecretUnavailable
from checkout.ledger import LedgerUnavailable
from checkout.publisher import PublishFailed
from checkout.service import Service
from checkout.webhook_setup import ENABLED_EVENTS, PINNED_API_VERSION

PROBE_SESSION = "cs_test_doctorprobe"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


async def doctor(service: Service, url: str) -> list[Check]:
    checks = [await _key(service)]
    checks += await _webhook(service, url)
    checks += [_cors(service), _return_url(service)]
    checks += [await _ledger(service), await _topic(service)]
    return checks


async def _key(service: Service) -> Check:
    try:
        key = await service.api_key.get_async()
        await _first(service.gateway.sessions_since(0, status="complete"))
    except (SecretConfigError, SecretUnavailable) as error:
        return Check("stripe key", False, f"{error}; fix: set STRIPE_SECRET_KEY or _NAME")
    except ApiError as error:
        return Check("stripe key", False, f"Stripe answered {error.code}; fix: use a working key")
    mode = "live" if is_live_key(key) else "test"
    return Check("stripe key", True, f"works ({mode} mode)")


async def _webhook(service: Service, url: str) -> list[Check]:
    try:
        endpoints = [e for e in await service.gateway.webhook_endpoints() if e.get("url") == url]
    except ApiError as error:
        return [Check("webhook endpoint", False, f"cannot list endpoints: {error.code}")]
    register = f"fix: python -m checkout register-webhook --url {url}"
    if not endpoints:
        return [Check("webhook endpoint", False, f"none for {url}; {register}")]
    endpoint = endpoints[0]
    checks = [Check("webhook endpoint", True, f"{endpoint['id']} for {url}")]
    if len(endpoints) > 1:
        checks.append(Check("one endpoint", False, f"{len(endpoints)} for one URL; {register}"))
    enabled = endpoint.get("status") == "enabled"
    checks.append(Check("webhook enabled", enabled, str(endpoint.get("status"))))
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


def _cors(service: Service) -> Check:
    parts = urlsplit(service.settings.frontend_url)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    allowed = service.cors.allows(origin)
    detail = f"{origin} allowed" if allowed else f"{origin} refused: add it to ALLOWED_ORIGINS"
    return Check("cors", allowed, detail)


def _return_url(service: Service) -> Check:
    live = bool(
        service.settings.stripe_secret_key and is_live_key(service.settings.stripe_secret_key)
    )
    https = service.settings.return_url.startswith("https://")
    ok = https or not live
    detail = service.settings.return_url.split("?")[0]
    return Check("return url", ok, detail if ok else f"{detail}: must be https in live mode")


async def _ledger(service: Service) -> Check:
    try:
        await service.ledger.order(PROBE_SESSION)
    except LedgerUnavailable as error:
        return Check("ledger", False, str(error))
    kind = service.ledger.name
    if kind == "memory" and service.settings.on_cloud_run:
        return Check("ledger", False, "memory on Cloud Run: set ORDER_LEDGER=firestore")
    return Check("ledger", True, f"{kind} reachable")


async def _topic(service: Service) -> Check:
    topic = service.settings.order_events_topic
    if topic is None:
        ok = not service.settings.on_cloud_run
        return Check("order topic", ok, "unset: in-process delivery (local only)")
    try:
        await service.publisher.check()
    except PublishFailed as error:
        return Check("order topic", False, str(error))
    return Check("order topic", True, f"{topic} reachable")


async def _first(items: AsyncIterator[Any]) -> None:
    """Ask for one item: a call that proves the key works, whatever the account holds."""
    async for _ in items:
        break
