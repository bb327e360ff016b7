"""Fulfilment of paid checkouts: one routine, called by the webhook and by the status endpoint.

Stripe's advice is to fulfil from the webhook, since a customer may close the tab before the
return page loads, and from the return page too, since it may beat the webhook. Both end up in
`Fulfilment.fulfil`, which runs the deliver function (`deliver_order` below, or the one
DELIVER_ORDER names) once per session through the order ledger
(checkout/ledger: every instance with Firestore, docs/ledger.md) and then logs one
`checkout_fulfilled` record: the integration point for Cloud Logging sinks and log-based metrics.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Callable

from checkout.config import ConfigError, Settings
from checkout.ledger import FulfilmentInProgress, Ledger, LedgerUnavailable
from checkout.session import SessionStatus
from checkout.status_cache import StatusCache

log = logging.getLogger("checkout.fulfilment")

# A fulfilment function: `async def` (awaited on the loop) or plain (run in a worker thread).
DeliverOrder = Callable[[SessionStatus], object]


async def deliver_order(session: SessionStatus) -> None:
    """Add your own fulfilment here: it runs to success once per paid session.

    It may be an `async def` (awaited on the event loop: use async clients, never block) or a
    plain function (run in a worker thread, so blocking I/O there does not stall other requests).

    `session` carries the session id, `metadata["imageId"]`, `amount_total` (minor units),
    `currency`, `payment_status` and `livemode`. Raise to report a failure: the webhook then
    answers 500 and Stripe retries it (for up to 3 days), and the `checkout_fulfilled` record is
    not logged until a later attempt succeeds.

    With ORDER_LEDGER=firestore (the deploy's setting) that holds across every instance; with
    `memory` (local), per process. Finish well within LEDGER_LEASE_SECONDS (60 s): past it another
    instance may take the session over. docs/ledger.md names the one narrow case in which it can
    run twice.

    The default does nothing: the `checkout_fulfilled` log record is the whole fulfilment.
    """


class FulfilmentFailed(Exception):
    """`deliver_order` raised; the session is not marked fulfilled, so a retry runs it again."""


class Fulfilment:
    """Fulfils each paid session once, however often, concurrently and widely it is asked.

    The ledger's LedgerUnavailable and FulfilmentInProgress pass through: the caller answers a
    retryable error (the webhook) or the status alone (the status endpoint).
    """

    def __init__(
        self, status_cache: StatusCache, ledger: Ledger, deliver: DeliverOrder = deliver_order
    ) -> None:
        self._status_cache = status_cache
        self._ledger = ledger
        self._deliver = deliver

    async def fulfil(
        self, session: SessionStatus, *, event_id: str | None = None, wait: bool = True
    ) -> bool:
        """Fulfil a complete, paid session; True if this call did it, False if nothing to do.

        `wait=False`: do not wait for an attempt held elsewhere (FulfilmentInProgress at once).
        """
        if not session.paid:
            return False
        try:
            fulfilled = await self._ledger.fulfil_once(
                session, lambda: _run(self._deliver, session), event_id=event_id, wait=wait
            )
        except (LedgerUnavailable, FulfilmentInProgress):
            raise
        except Exception as error:
            log.exception(
                "checkout_fulfilment_failed",
                extra={"fields": {**session.log_record(event_id), "detail": str(error)[:300]}},
            )
            raise FulfilmentFailed(f"fulfilment of {session.session_id} failed") from error
        # Fulfilled, now or before: until then a status call finds no cache entry and tries too.
        self._status_cache.put(session)
        if fulfilled:
            # Only the attempt whose record of it became durable logs it: once per session.
            log.info("checkout_fulfilled", extra={"fields": session.log_record(event_id)})
        return fulfilled


async def _run(deliver: DeliverOrder, session: SessionStatus) -> None:
    if inspect.iscoroutinefunction(deliver):
        await deliver(session)
    else:
        await asyncio.to_thread(deliver, session)


def deliver_order_from_settings(settings: Settings) -> DeliverOrder:
    """The function DELIVER_ORDER names (`package.module:function`), else `deliver_order`."""
    path = settings.deliver_order
    if path is None:
        return deliver_order
    module_name, _, name = path.partition(":")
    try:
        deliver: object = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"DELIVER_ORDER names {path!r}, which cannot be imported: {error}"
        ) from None
    if not callable(deliver):
        raise ConfigError(f"DELIVER_ORDER names {path!r}, which is not a function")
    return deliver
