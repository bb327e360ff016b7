"""Fulfilment of paid checkouts: one routine, called by the webhook and by the status endpoint.

Stripe's advice is to fulfil from the webhook, since a customer may close the tab before the
return page loads, and from the return page too, since it may beat the webhook. Both end up in
`Fulfilment.fulfil`, which runs `deliver_order` once per session and then logs one
`checkout_fulfilled` record: the integration point for Cloud Logging sinks and log-based metrics.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from checkout.catalogue import Catalogue, Refusal
from checkout.once import OncePerKey, StillRunning
from checkout.status_cache import StatusCache
from checkout.stripe_gateway import SessionStatus

log = logging.getLogger("checkout.fulfilment")

# An attempt at `deliver_order` that takes longer has failed, and a later call retries it.
DELIVER_TIMEOUT_S = 45.0
# How long a status call waits for the attempt it started itself before answering anyway.
STATUS_WAIT_S = 1.0
# Threads for plain-function `deliver_order`s, apart from the loop's default pool (secret reads).
DELIVERY_THREADS = 4


async def deliver_order(session: SessionStatus) -> None:
    """Add your own fulfilment here: it runs once per paid session per instance.

    It may be an `async def` (awaited on the event loop: use async clients, never block) or a
    plain function (run in a worker thread, so blocking I/O there does not stall other requests).

    `session` carries the session id, `metadata["imageId"]`, `amount_total` (minor units),
    `currency`, `payment_status` and `livemode`. Raise to report a failure: the webhook then
    answers 500 and Stripe retries it (for up to 3 days), and the `checkout_fulfilled` record is
    not logged until a later attempt succeeds.

    Instances do not share memory, so a webhook and a status call served by two instances can
    both get here for one session: make what you do idempotent by session id (for example, a
    Firestore document created only if absent). An attempt that runs past DELIVER_TIMEOUT_S
    (45 s) counts as failed, and a later call tries again: keep it well under that.

    The default does nothing: the `checkout_fulfilled` log record is the whole fulfilment.
    """


class FulfilmentFailed(Exception):
    """`deliver_order` raised; the session is not marked fulfilled, so a retry runs it again."""


class FulfilmentInProgress(Exception):
    """Another request's attempt at this session is still running; the caller did not wait."""


class Fulfilment:
    """Fulfils each paid session once per instance, however often and concurrently it is asked.

    Every wait is bounded: an attempt that runs past DELIVER_TIMEOUT_S has failed (and is retried
    later), a caller waits for an attempt at most its own `wait`, and a blocking `deliver_order`
    runs on threads of its own, so a hung one cannot starve the threads that read secrets.
    """

    def __init__(
        self,
        status_cache: StatusCache,
        max_sessions: int,
        catalogue: Catalogue,
        deliver_timeout: float = DELIVER_TIMEOUT_S,
    ) -> None:
        self._status_cache = status_cache
        self._fulfilled = OncePerKey(max_sessions)
        self._catalogue = catalogue
        self._deliver_timeout = deliver_timeout
        self._threads = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="deliver_order")

    async def fulfil(
        self,
        session: SessionStatus,
        *,
        event_id: str | None = None,
        wait: float | None = None,
        wait_for_others: float | None = None,
    ) -> bool:
        """Fulfil a complete, paid session that sold what we sell; True if this call did it.

        False if there is nothing to do: not paid (yet), fulfilled before, or not ours to fulfil
        (checkout/catalogue.py; a session of ours that sold something else is logged at ERROR).
        Waits at most `wait` s (default: the attempt's own bound) for the attempt, and at most
        `wait_for_others` for one that another request started; FulfilmentInProgress past that,
        while the attempt goes on. FulfilmentFailed if the attempt failed (logged already).
        """
        if not is_paid(session) or self.refusal(session, event_id) is not None:
            return False
        try:
            return await self._fulfilled.run(
                session.session_id,
                lambda: self._fulfil_now(session, event_id),
                wait=self._deliver_timeout + 1.0 if wait is None else wait,
                wait_for_others=wait_for_others,
            )
        except StillRunning as running:
            raise FulfilmentInProgress(str(running)) from None

    def refusal(self, session: SessionStatus, event_id: str | None = None) -> Refusal | None:
        """Why `session` is not ours to fulfil (logged), or None if it sold what we sell."""
        refusal = self._catalogue.refusal(session)
        if refusal is None:
            return None
        fields = {**record_of(session, event_id), "reason": refusal.reason}
        fields["detail"] = refusal.detail
        # Ours but not what we sell (the price changed while it was open?): a paying customer
        # is waiting, and only an operator can decide. Another integration's: nothing to do.
        level = logging.ERROR if refusal.ours else logging.INFO
        log.log(level, "checkout_not_fulfilled", extra={"fields": fields})
        return refusal

    async def _fulfil_now(self, session: SessionStatus, event_id: str | None) -> None:
        try:
            async with asyncio.timeout(self._deliver_timeout):
                await self._deliver(session)
        except Exception as error:
            if isinstance(error, TimeoutError):
                detail = f"deliver_order did not finish within {self._deliver_timeout:g} s"
            else:
                detail = str(error)[:300]
            # Logged here, once per attempt, whether or not a caller is still waiting for it.
            log.exception(
                "checkout_fulfilment_failed",
                extra={"fields": {**record_of(session, event_id), "detail": detail}},
            )
            raise FulfilmentFailed(f"fulfilment of {session.session_id} failed") from error
        # After success only: until then a status call finds no cache entry and tries too.
        self._status_cache.put(session)
        log.info("checkout_fulfilled", extra={"fields": record_of(session, event_id)})

    async def _deliver(self, session: SessionStatus) -> None:
        # Looked up at call time, so a test (or a team) can swap in its own.
        deliver = deliver_order
        if inspect.iscoroutinefunction(deliver):
            await deliver(session)
        else:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._threads, deliver, session)


def is_paid(session: SessionStatus) -> bool:
    """Complete, and paid or free (`no_payment_required`): what Stripe says may be fulfilled."""
    return session.status == "complete" and session.payment_status != "unpaid"


def record_of(session: SessionStatus, event_id: str | None = None) -> dict[str, Any]:
    """The fields of a checkout log record: ids and amounts, never secrets or customer details."""
    return {
        "session_id": session.session_id,
        "imageId": session.metadata.get("imageId"),
        "amount_total": session.amount_total,
        "currency": session.currency,
        "payment_status": session.payment_status,
        "livemode": session.livemode,
        "event_id": event_id,
    }
