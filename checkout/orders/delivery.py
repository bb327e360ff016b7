"""`fulfil_order`: the worker that delivers each order change to DELIVER_ORDER, once.

It runs under a renewed, fenced claim, one change of an order at a time: docs/ledger.md."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import functools
import importlib
import inspect
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from checkout.config import ConfigError, Settings
from checkout.errors import CheckoutError
from checkout.orders.ledger import (
    CLAIMED,
    DELIVERED,
    NOT_HOLDER,
    RECORDED,
    Ledger,
    LedgerUnavailable,
    new_token,
)
from checkout.orders.model import BadChange, Change, OrderState

log = logging.getLogger("checkout.worker")

# A user's function: `async def` (awaited on the loop) or plain (run on a delivery thread), given
# the change, and the order's state when it takes a second argument.
DeliverOrder = Callable[..., object]
# Publishes a change again (the topic, or in-process): how queued changes are handed on.
Redeliver = Callable[[Change], Awaitable[None]]
# Threads for plain-function DELIVER_ORDERs, apart from the loop's default pool (secret reads).
DELIVERY_THREADS = 4
# Recording a success: attempts, with a pause between them, before the worker gives up.
RECORD_ATTEMPTS = 5
RECORD_PAUSE_S = 1.0
DEFAULT_DELIVERY_TIMEOUT_S = 540.0


def deliver_order(change: Change, state: OrderState | None = None) -> None:
    """The default DELIVER_ORDER: one `checkout_order_delivered` log record per change.

    Your own takes the same arguments: a `Change` with `type` (order.paid, order.refunded, ...),
    `change_id`, `session_id`, `metadata["imageId"]`, `amount_total`, `currency`, `livemode`,
    and per type `amount_refunded` or `dispute_id` and `evidence_due_by`; and the order's
    `OrderState` now (`outcome`, `access`, `amount_refunded`, `open_disputes`): act on the state,
    not on the change's type (docs/webhooks.md). It may be `async def` (use async clients) or plain
    (it runs on a worker thread). Raise to fail: Pub/Sub retries.
    """
    fields = change.data()
    if state is not None:
        fields["state"] = state.data()
    log.info("checkout_order_delivered", extra={"fields": fields})


class DeliveryInProgress(CheckoutError):
    """Another run holds this change or its order: the change is queued on the order and the
    message may be acknowledged (that run hands the queue on when it ends)."""


class DeliveryFailed(CheckoutError):
    """The user's function raised (or its success could not be recorded): Pub/Sub retries."""


class ClaimLost(CheckoutError):
    """Our claim on a change lapsed or was taken over while its delivery ran."""


class DeliveryTimedOut(CheckoutError):
    """The run outlived DELIVERY_TIMEOUT_SECONDS: it counts as failed."""

    def __init__(self, message: str, *, still_running: bool = False) -> None:
        super().__init__(message)
        self.still_running = still_running  # a plain function's thread, which nothing can stop


class BadMessage(ValueError, CheckoutError):
    """The CloudEvent does not carry an order change: it goes, retried, to the dead-letter topic."""


class Worker:
    def __init__(
        self,
        ledger: Ledger,
        deliver: DeliverOrder,
        lease_seconds: float,
        delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT_S,
    ) -> None:
        self.ledger = ledger
        self._deliver = deliver
        self._with_state = _takes_state(deliver)
        self._lease = lease_seconds
        self._timeout = delivery_timeout
        self._threads = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="deliver_order")
        self._renewals = _Renewals(ledger, lease_seconds)
        # Set by the service once its publisher exists: publishes queued changes again.
        self.redeliver: Redeliver | None = None

    async def deliver(self, change: Change) -> bool:
        """Run the user's function for `change` unless it succeeded before: True if this call did.

        DeliveryInProgress (queued: acknowledge), DeliveryFailed or LedgerUnavailable otherwise.
        """
        token = new_token()
        claim = await self.ledger.claim_delivery(change, token, self._lease)
        fields: dict[str, Any] = {"change_id": change.change_id, "type": change.type}
        if claim.outcome == DELIVERED:
            log.info("checkout_delivery_duplicate", extra={"fields": fields})
            return False
        if claim.outcome != CLAIMED:
            held_by = (claim.other or {}).get("change_id", change.change_id)
            log.info("checkout_delivery_queued", extra={"fields": {**fields, "behind": held_by}})
            raise DeliveryInProgress(f"{change.change_id} is queued behind {held_by}")
        if claim.other is not None:  # its holder's lease ran out: it died, or lost Firestore
            log.warning(
                "checkout_delivery_taken_over",
                extra={"fields": {**fields, "claim_owner": claim.other.get("owner")}},
            )
        deadline = time.monotonic() + self._timeout
        # Renewed until the success is recorded, not only while the function runs; never past
        # the time limit.
        keep_alive = self._renewals.keep(change.change_id, token, deadline)
        failed = True
        try:
            try:
                state = await self._state(change)
                await self._run(change, state, keep_alive, deadline)
            except Exception as error:
                keep_alive.cancel()
                await self._failed(change, token, error, fields)
                raise DeliveryFailed(f"DELIVER_ORDER failed for {change.change_id}") from error
            recorded = await self._record(change, token, fields)
            failed = False
            return recorded
        finally:
            keep_alive.cancel()
            await self._hand_on(change, failed)

    def close(self) -> None:
        """Stop the renewer's thread (when the process, or a test, is done)."""
        self._renewals.close()

    async def _state(self, change: Change) -> OrderState:
        """The order's state now, read under our claim (docs/webhooks.md)."""
        order = await self.ledger.order(change.session_id)
        if order is None:  # a change whose order this ledger never saw (a ledger of its own)
            return OrderState.of_change(change)
        return OrderState.of(order)

    async def _failed(
        self, change: Change, token: str, error: BaseException, fields: dict[str, Any]
    ) -> None:
        detail = f"{type(error).__name__}: {error}"[:300]
        log.error("checkout_delivery_failed", extra={"fields": {**fields, "detail": detail}})
        if isinstance(error, DeliveryTimedOut) and error.still_running:
            return  # released, a retry would run beside it: the claim lapses, unrenewed
        try:
            await self.ledger.release_delivery(change.change_id, token, detail)
        except LedgerUnavailable as unreleased:
            log.warning(
                "checkout_claim_not_released",
                extra={"fields": {**fields, "detail": str(unreleased)}},
            )

    async def _run(
        self,
        change: Change,
        state: OrderState,
        keep_alive: asyncio.Future[None],
        deadline: float,
    ) -> None:
        """Run the user's function within the time limit, while our claim holds."""
        deliver = self._deliver
        arguments = (change, state) if self._with_state else (change,)
        left = max(0.0, deadline - time.monotonic())
        if inspect.iscoroutinefunction(deliver) or inspect.iscoroutinefunction(
            getattr(deliver, "__call__", None)  # noqa: B004 (an object with async __call__)
        ):
            running: asyncio.Future[Any] = asyncio.ensure_future(
                cast(Awaitable[Any], deliver(*arguments))
            )
        else:
            loop = asyncio.get_running_loop()
            # In this delivery's context, so that its log records carry the change's trace.
            in_context = functools.partial(contextvars.copy_context().run, deliver, *arguments)
            running = loop.run_in_executor(self._threads, in_context)
        either: set[asyncio.Future[Any]] = {running, keep_alive}
        await asyncio.wait(either, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            result = running.result()
            if inspect.isawaitable(result):  # e.g. a partial of an async function
                await asyncio.wait_for(result, max(0.0, deadline - time.monotonic()))
            if time.monotonic() > deadline:  # it blocked the loop past its time limit
                raise DeliveryTimedOut(f"the run outlived {self._timeout:g} s")
            return
        # A plain function runs on a thread, which nothing can stop; an `async def` is cancelled
        # so that a takeover never runs beside it.
        still_running = not isinstance(running, asyncio.Task)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        if keep_alive.done() and time.monotonic() < deadline:
            raise ClaimLost(f"the claim on {change.change_id} was lost; run cancelled")
        raise DeliveryTimedOut(
            f"DELIVER_ORDER ran past DELIVERY_TIMEOUT_SECONDS ({self._timeout:g} s)",
            still_running=still_running,
        )

    async def _record(self, change: Change, token: str, fields: dict[str, Any]) -> bool:
        """Record the success, retrying: a commit whose answer was lost is recognised as ours."""
        for attempt in range(1, RECORD_ATTEMPTS + 1):
            try:
                recorded = await self.ledger.record_delivery(change.change_id, token)
            except LedgerUnavailable as error:
                if attempt == RECORD_ATTEMPTS:
                    log.error(
                        "checkout_delivery_unrecorded",
                        extra={"fields": {**fields, "detail": str(error)[:300]}},
                    )
                    raise DeliveryFailed(f"{change.change_id}: delivered, not recorded") from error
                await asyncio.sleep(RECORD_PAUSE_S * attempt)
                continue
            if recorded == NOT_HOLDER:
                # Our claim was taken over while we ran: the holder records its own run.
                log.error("checkout_delivery_not_holder", extra={"fields": fields})
            elif recorded != RECORDED:
                log.error("checkout_delivered_twice", extra={"fields": fields})
            return recorded == RECORDED
        raise AssertionError("unreachable")

    async def _hand_on(self, change: Change, failed: bool) -> None:
        """Publish again what was queued on the order while we ran (our own change only if we
        failed: a duplicate of it was acknowledged). A failure here leaves them undelivered, for
        the audit (reconcile) to find."""
        try:
            waiting = await self.ledger.take_waiting(change.session_id)
            for queued in waiting:
                if queued.change_id == change.change_id and not failed:
                    continue
                if self.redeliver is not None:
                    await self.redeliver(queued)
                    handed = {"change_id": queued.change_id, "after": change.change_id}
                    log.info("checkout_delivery_handed_on", extra={"fields": handed})
        except Exception as error:  # the audit repairs whatever this leaves
            detail = f"{type(error).__name__}: {error}"[:300]
            fields = {"change_id": change.change_id, "detail": detail}
            log.warning("checkout_queue_not_handed_on", extra={"fields": fields})


class _Renewals:
    """Renews claims from a thread with its own event loop and ledger, started on first use
    (after the fork): a user's function that blocks the worker's loop cannot starve it."""

    def __init__(self, ledger: Ledger, lease: float) -> None:
        self._ledger = ledger
        self._lease = lease
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_ledger: Ledger | None = None
        self._lock = threading.Lock()

    def keep(self, change_id: str, token: str, deadline: float) -> asyncio.Future[None]:
        """Renew until cancelled; the future ends by itself when the claim is lost or at
        `deadline` (time.monotonic()): the run must stop."""
        loop = self._started()
        renew = self._renew(change_id, token, deadline)
        renewing = asyncio.run_coroutine_threadsafe(renew, loop)
        kept = asyncio.wrap_future(renewing)

        def never_started(_: object) -> None:
            # Cancelled before the renewer's loop started it (a quick delivery): close it, or
            # Python reports a coroutine never awaited. Once cancelled it can no longer start.
            if renewing.cancelled() and inspect.getcoroutinestate(renew) == "CORO_CREATED":
                renew.close()

        kept.add_done_callback(never_started)
        return kept

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(_stop, loop)

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread_ledger = self._ledger.for_thread()
                threading.Thread(target=loop.run_forever, name="claim-renewer", daemon=True).start()
                self._loop = loop
            return self._loop

    async def _renew(self, change_id: str, token: str, deadline: float) -> None:
        """Keep our claim alive; return when it is no longer ours (or may not be), or at the
        deadline. A claim whose renewals all failed for a whole lease may have been taken over:
        that counts as lost too."""
        ledger = self._thread_ledger or self._ledger
        held_until = time.monotonic() + self._lease
        fields: dict[str, Any] = {"change_id": change_id}
        while True:
            pause = min(self._lease / 3, deadline - time.monotonic())
            if pause <= 0:
                log.warning("checkout_claim_not_renewed_past_timeout", extra={"fields": fields})
                return
            await asyncio.sleep(pause)
            if time.monotonic() >= deadline:
                continue
            asked_at = time.monotonic()
            try:
                renewed = await ledger.renew_delivery(change_id, token, self._lease)
            except LedgerUnavailable as error:
                detail = {**fields, "detail": str(error)[:300]}
                log.warning("checkout_claim_not_renewed", extra={"fields": detail})
                if time.monotonic() < held_until:
                    continue
                log.error("checkout_claim_lost", extra={"fields": detail})
                return
            if not renewed:
                log.error("checkout_claim_lost", extra={"fields": fields})
                return
            held_until = asked_at + self._lease


def _stop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what still runs on the renewer's loop, let it end, then stop the loop."""
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.call_soon(loop.call_soon, loop.stop)


def _takes_state(deliver: DeliverOrder) -> bool:
    """Whether DELIVER_ORDER takes the order's state as a second argument."""
    try:
        signature = inspect.signature(deliver)
    except (TypeError, ValueError):
        return False
    try:
        signature.bind(None, None)
    except TypeError:
        return False
    return True


def change_in(event_data: object) -> Change:
    """The change a Pub/Sub CloudEvent carries (`{"message": {"data": base64 JSON, ...}}`)."""
    message = event_data.get("message") if isinstance(event_data, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("data"), str):
        raise BadMessage("the CloudEvent holds no Pub/Sub message with data")
    try:
        data = json.loads(base64.b64decode(message["data"], validate=True))
    except (binascii.Error, ValueError) as error:
        raise BadMessage(f"the message data is not base64 JSON: {error}") from None
    try:
        change = Change.from_data(data)
    except (BadChange, TypeError) as error:
        raise BadMessage(str(error)) from None
    attributes = message.get("attributes") or {}
    if isinstance(attributes, dict) and attributes.get("change_id") not in (None, change.change_id):
        raise BadMessage("the message's change_id attribute and data disagree")
    return change


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
