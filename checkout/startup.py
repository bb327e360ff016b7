"""The checks before a server starts: on Cloud Run a revision whose settings cannot work exits
before it listens, so traffic stays on the previous one (docs/deploy.md)."""

from __future__ import annotations

import logging
import os

from checkout.config import ConfigError, Settings, load_settings, server_limits
from checkout.keys import check_named_secrets, check_secret_shapes
from checkout.orders.delivery import deliver_order_from_settings

log = logging.getLogger("checkout")


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
