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
from concurrent.futures import ThreadPoolExecutor

from checkout.catalogue import Catalogue, Refusal
from checkout.config import ConfigError, Settings
from checkout.ledger import FulfilmentInProgress, Ledger, LedgerUnavailable
from checkout.session import SessionStatus
from checkout.status_cache import StatusCache

log = logging.getLogger("checkout.fulfilment")

# A fulfilment function: `async def` (awaited on the loop) or plain (run on a delivery thread).
DeliverOrder = Callable[[SessionStatus], object]

# An attempt at `deliver_order` that takes longer has failed, and a later call retries it. The
# service lowers it to 3/4 of LEDGER_LEASE_SECONDS, so that it ends before the claim's lease does.
DELIVER_TIMEOUT_S = 45.0
# How long a status call waits for the attempt it started itself before answering anyway.
STATUS_WAIT_S = 1.0
# Threads for plain-function `deliver_order`s, apart from the loop's default pool (secret reads).
DELIVERY_THREADS = 4


async def deliver_order(session: SessionStatus) -> None:
    """Add your own fulfilment here: it runs to success once per paid session.

    It may be an `async def` (awaited on the event loop: use async clients, never block) or a
    plain function (run in a worker thread, so blocking I/O there does not stall other requests).

    `session` carries the session id, `metadata["imageId"]`, `amount_total` (minor units),
    `currency`, `payment_status` and `livemode`. Raise to report a failure: the webhook then
    answers 500 and Stripe retries it (for up to 3 days), and the `checkout_fulfilled` record is
    not logged until a later attempt succeeds.

    With ORDER_LEDGER=firestore (the deploy's setting) that holds across every instance; with
    `memory` (local), per process. An attempt that runs past DELIVER_TIMEOUT_S (45 s, and never
    past 3/4 of LEDGER_LEASE_SECONDS) counts as failed, and a later call tries again: finish well
    within that. docs/ledger.md names the one narrow case in which it can run twice.

    The default does nothing: the `checkout_fulfilled` log record is the whole fulfilment.
    """


class FulfilmentFailed(Exception):
    """`deliver_order` raised; the session is not marked fulfilled, so a retry runs it again."""


class DeliveryTimedOut(TimeoutError):
    """`deliver_order` ran past its bound: the attempt has failed, and a later call retries it."""


class Fulfilment:
    """Fulfils each paid session once, however often, concurrently and widely it is asked.

    The ledger's LedgerUnavailable and FulfilmentInProgress pass through: the caller answers a
    retryable error (the webhook) or the status alone (the status endpoint). Every wait is
    bounded: `deliver_order` by `deliver_timeout`, the ledger by its own deadlines, and a caller
    by `within` if it gives one. A blocking `deliver_order` runs on threads of its own, so a hung
    one cannot starve the threads that read secrets.
    """

    def __init__(
        self,
        status_cache: StatusCache,
        ledger: Ledger,
        catalogue: Catalogue,
        deliver: DeliverOrder = deliver_order,
        deliver_timeout: float = DELIVER_TIMEOUT_S,
    ) -> None:
        self._status_cache = status_cache
        self._ledger = ledger
        self._catalogue = catalogue
        self._deliver = deliver
        self._deliver_timeout = deliver_timeout
        self._threads = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="deliver_order")

    async def fulfil(
        self,
        session: SessionStatus,
        *,
        event_id: str | None = None,
        wait: bool = True,
        within: float | None = None,
    ) -> bool:
        """Fulfil a complete, paid session that sold what we sell; True if this call did it.

        False if there is nothing to do: not paid (yet), fulfilled before, or not ours to fulfil
        (checkout/catalogue.py; a session of ours that sold something else is logged at ERROR).
        `wait=False`: do not wait for an attempt held elsewhere (FulfilmentInProgress at once).
        `within`: give up waiting after that many seconds (FulfilmentInProgress), while this
        call's attempt goes on and logs its own outcome. A caller that goes away does not cancel
        the attempt either.
        """
        if not session.paid or self.refusal(session, event_id) is not None:
            return False
        attempt = asyncio.ensure_future(self._attempt(session, event_id, wait))
        attempt.add_done_callback(_seen)
        try:
            async with asyncio.timeout(within):
                return await asyncio.shield(attempt)
        except TimeoutError:  # only ours: the attempt raises FulfilmentFailed for its own
            raise FulfilmentInProgress(
                f"{session.session_id}: still being fulfilled after {within:g} s"
            ) from None

    def refusal(self, session: SessionStatus, event_id: str | None = None) -> Refusal | None:
        """Why `session` is not ours to fulfil (logged), or None if it sold what we sell."""
        refusal = self._catalogue.refusal(session)
        if refusal is None:
            return None
        fields = {**session.log_record(event_id), "reason": refusal.reason}
        fields["detail"] = refusal.detail
        # Ours but not what we sell (the price changed while it was open?): a paying customer
        # is waiting, and only an operator can decide. Another integration's: nothing to do.
        level = logging.ERROR if refusal.ours else logging.INFO
        log.log(level, "checkout_not_fulfilled", extra={"fields": fields})
        return refusal

    async def _attempt(self, session: SessionStatus, event_id: str | None, wait: bool) -> bool:
        try:
            fulfilled = await self._ledger.fulfil_once(
                session, lambda: self._deliver_in_time(session), event_id=event_id, wait=wait
            )
        except (LedgerUnavailable, FulfilmentInProgress):
            raise
        except Exception as error:
            # Logged here, once per attempt, whether or not a caller still waits for it.
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

    async def _deliver_in_time(self, session: SessionStatus) -> None:
        try:
            async with asyncio.timeout(self._deliver_timeout):
                await _run(self._deliver, session, self._threads)
        except TimeoutError:
            raise DeliveryTimedOut(
                f"deliver_order did not finish within {self._deliver_timeout:g} s"
            ) from None


def _seen(attempt: asyncio.Future[bool]) -> None:
    # Every caller may have stopped waiting: the outcome was logged where it happened.
    if not attempt.cancelled():
        attempt.exception()


async def _run(deliver: DeliverOrder, session: SessionStatus, threads: ThreadPoolExecutor) -> None:
    if inspect.iscoroutinefunction(deliver):
        await deliver(session)
    else:
        await asyncio.get_running_loop().run_in_executor(threads, deliver, session)


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
