"""`python -m checkout register-webhook --url URL [--secret NAME]`: the one Stripe webhook
endpoint for URL, with every event the service handles and the API version the SDK pins; its
signing secret stored before it is needed (docs/deploy.md "The webhook and the reconciler")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlsplit

import stripe

from checkout.config import Settings
from checkout.errors import CheckoutError, StripeFailure
from checkout.keys import SecretConfigError, SecretError, SecretUnavailable
from checkout.ops.secrets import add_secret_version, secret_exists
from checkout.orders.model import HANDLED_EVENTS
from checkout.stripe_access.gateway import StripeGateway

PINNED_API_VERSION: str = stripe.api_version
ENABLED_EVENTS = tuple(sorted(HANDLED_EVENTS))


class SetupError(CheckoutError):
    """The command cannot do what it was asked; the message says what to change."""


@dataclass(frozen=True)
class Registered:
    endpoint_id: str
    action: str  # created, updated, replaced
    secret_version: str | None  # where the new signing secret was stored
    secret: str | None  # only when no --secret was given and a new endpoint was made


def check_webhook_url(url: str, *, emulator: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SetupError(f"--url must be an absolute URL, got {url[:100]!r}")
    if parts.scheme != "https" and not emulator:
        raise SetupError("--url must be https: Stripe delivers live events only to https")
    if not parts.path.rstrip("/").endswith("/api/checkout/webhook"):
        raise SetupError("--url must end with /api/checkout/webhook (this service's webhook path)")


async def register_webhook(
    gateway: StripeGateway, settings: Settings, url: str, secret_name: str | None
) -> Registered:
    check_webhook_url(url, emulator=settings.stripe_api_base is not None)
    existing = [e for e in await gateway.webhook_endpoints() if e.get("url") == url]
    current = [e for e in existing if e.get("api_version") == PINNED_API_VERSION]
    if current:
        keep, *extra = current
        await gateway.update_webhook_endpoint(keep["id"], ENABLED_EVENTS)
        for endpoint in [*extra, *(e for e in existing if e not in current)]:
            await gateway.delete_webhook_endpoint(endpoint["id"])
        return Registered(keep["id"], "updated", None, None)
    if secret_name is not None:
        try:
            await secret_exists(settings, secret_name)
        except SecretConfigError as error:
            raise SetupError(f"{error}; no endpoint was made") from None
    created = await gateway.create_webhook_endpoint(url, ENABLED_EVENTS, PINNED_API_VERSION)
    secret = str(created["secret"])
    stored = None
    if secret_name is not None:
        try:
            stored = await add_secret_version(settings, secret_name, secret)
        except SecretError as error:
            await _discard(gateway, str(created["id"]), error)
    for endpoint in existing:  # an older API version's: replaced, never a second endpoint
        await gateway.delete_webhook_endpoint(endpoint["id"])
    action = "replaced" if existing else "created"
    return Registered(str(created["id"]), action, stored, secret if secret_name is None else None)


async def _discard(gateway: StripeGateway, endpoint_id: str, error: Exception) -> NoReturn:
    """Delete the endpoint just made, whose signing secret could not be stored, and say so."""
    try:
        await gateway.delete_webhook_endpoint(endpoint_id)
    except StripeFailure as failed:
        raise SecretUnavailable(
            f"the signing secret could not be stored ({error}), and the new endpoint "
            f"{endpoint_id} could not be deleted ({type(failed).__name__}): delete it in the "
            "Dashboard, then run this again"
        ) from None
    raise SecretUnavailable(
        f"the signing secret could not be stored ({error}); the new endpoint {endpoint_id} was "
        "deleted again, so nothing changed: fix the secret (or your access to it) and run again"
    )
