"""`fulfil_order`: the worker that delivers each order change to DELIVER_ORDER, once.

Eventarc hands it each message of the order topic as a CloudEvent; without a topic (local
development) the API hands it each change in-process, after its answer. Either way `Worker.deliver`
runs the user's function under a claim in the ledger (`checkout_deliveries/{change id}`):

- a change delivered before is acknowledged at once, and never run again;
- a change whose delivery is running elsewhere answers non-2xx, so Pub/Sub redelivers it later:
  two deliveries of one change never run at the same time;
- the claim is renewed while the function runs, however long it takes, and released when it
  fails, so the redelivery can run it at once; a success is recorded, even after any time limit.

A claim lost under a running delivery (taken over, or unrenewable for a whole lease) cancels an
`async def` function. What remains at least once: a process that dies after the function returned
and before the record was written leaves a claim that expires, and the redelivery runs the
function again; and a plain function, on a thread nothing can stop, whose claim is lost.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import importlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from checkout.config import ConfigError, Settings
from checkout.ledger import CLAIMED, DELIVERED, Ledger, LedgerUnavailable, new_token
from checkout.orders import BadChange, Change

log = logging.getLogger("checkout.worker")

# A user's function: `async def` (awaited on the loop) or plain (run on a delivery thread).
DeliverOrder = Callable[[Change], object]
# Threads for plain-function DELIVER_ORDERs, apart from the loop's default pool (secret reads).
DELIVERY_THREADS = 4
# Recording a success: attempts, with a pause between them, before the worker gives up.
RECORD_ATTEMPTS = 5
RECORD_PAUSE_S = 1.0


def deliver_order(change: Change) -> None:
    """The default DELIVER_ORDER: one `checkout_order_delivered` log record per change.

    Your own takes the same argument: a `Change` with `type` (order.paid, order.refunded, ...),
    `change_id`, `session_id`, `metadata["imageId"]`, `amount_total`, `currency`, `livemode`,
    and per type `amount_refunded` or `dispute_id` and `evidence_due_by`. It may be `async def`
    (use async clients) or plain (it runs on a worker thread). Raise to fail: Pub/Sub retries.
    """
    log.info("checkout_order_delivered", extra={"fields": change.data()})


class DeliveryInProgress(Exception):
    """Another worker is delivering this change now: answer non-2xx, Pub/Sub comes back later."""


class DeliveryFailed(Exception):
    """The user's function raised (or its success could not be recorded): Pub/Sub retries."""


class ClaimLost(Exception):
    """Our claim on a change lapsed or was taken over while its delivery ran."""


class BadMessage(ValueError):
    """The CloudEvent does not carry an order change: it goes, retried, to the dead-letter topic."""


class Worker:
    def __init__(self, ledger: Ledger, deliver: DeliverOrder, lease_seconds: float) -> None:
        self.ledger = ledger
        self._deliver = deliver
        self._lease = lease_seconds
        self._threads = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="deliver_order")

    async def deliver(self, change: Change) -> bool:
        """Run the user's function for `change` unless it succeeded before: True if this call did.

        DeliveryInProgress, DeliveryFailed or LedgerUnavailable otherwise: answer non-2xx.
        """
        token = new_token()
        claim = await self.ledger.claim_delivery(change, token, self._lease)
        fields = {"change_id": change.change_id, "type": change.type}
        if claim.outcome == DELIVERED:
            log.info("checkout_delivery_duplicate", extra={"fields": fields})
            return False
        if claim.outcome != CLAIMED:
            raise DeliveryInProgress(f"{change.change_id} is being delivered by another worker")
        if claim.other is not None:  # its holder's lease ran out: it died, or lost Firestore
            log.warning(
                "checkout_delivery_taken_over",
                extra={"fields": {**fields, "claim_owner": claim.other.get("owner")}},
            )
        # The claim is renewed until the success is recorded, not only while the function runs.
        keep_alive = asyncio.ensure_future(self._renew(change.change_id, token))
        try:
            try:
                await self._run(change, keep_alive)
            except Exception as error:
                detail = f"{type(error).__name__}: {error}"[:300]
                fields["detail"] = detail
                log.error("checkout_delivery_failed", extra={"fields": fields})
                keep_alive.cancel()
                try:
                    await self.ledger.release_delivery(change.change_id, token, detail)
                except LedgerUnavailable as unreleased:
                    log.warning(
                        "checkout_claim_not_released",
                        extra={"fields": {**fields, "detail": str(unreleased)}},
                    )
                raise DeliveryFailed(f"DELIVER_ORDER failed for {change.change_id}") from error
            return await self._record(change, token, fields)
        finally:
            keep_alive.cancel()

    async def _run(self, change: Change, keep_alive: asyncio.Future[None]) -> None:
        """Run the user's function; an `async def` one is cancelled if our claim is lost."""
        deliver = self._deliver
        if inspect.iscoroutinefunction(deliver) or inspect.iscoroutinefunction(
            getattr(deliver, "__call__", None)  # noqa: B004 (an object with async __call__)
        ):
            running: asyncio.Future[Any] = asyncio.ensure_future(
                cast(Awaitable[Any], deliver(change))
            )
            either: set[asyncio.Future[Any]] = {running, keep_alive}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not running.done():
                # The renewer returns only when the claim is no longer ours: another worker may
                # take the change over, so this run must stop rather than run beside it.
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
                raise ClaimLost(f"the claim on {change.change_id} was lost; run cancelled")
            running.result()
            return
        # A plain function runs on a thread, which nothing can stop: if the claim is lost under
        # it (checkout_claim_lost), a takeover may run beside it (docs/ledger.md).
        result = await asyncio.get_running_loop().run_in_executor(self._threads, deliver, change)
        if inspect.isawaitable(result):  # e.g. a partial of an async function: await it here
            await result

    async def _renew(self, change_id: str, token: str) -> None:
        """Keep our claim alive; return only when it is no longer ours (or may not be).

        A claim whose renewals all failed for a whole lease may have been taken over: that counts
        as lost too.
        """
        loop = asyncio.get_running_loop()
        held_until = loop.time() + self._lease
        while True:
            await asyncio.sleep(self._lease / 3)
            asked_at = loop.time()
            try:
                renewed = await self.ledger.renew_delivery(change_id, token, self._lease)
            except LedgerUnavailable as error:
                fields = {"change_id": change_id, "detail": str(error)[:300]}
                log.warning("checkout_claim_not_renewed", extra={"fields": fields})
                if loop.time() < held_until:
                    continue
                log.error("checkout_claim_lost", extra={"fields": fields})
                return
            if not renewed:
                log.error("checkout_claim_lost", extra={"fields": {"change_id": change_id}})
                return
            held_until = asked_at + self._lease

    async def _record(self, change: Change, token: str, fields: dict[str, Any]) -> bool:
        """Record the success, retrying: a commit whose answer was lost is recognised as ours."""
        for attempt in range(1, RECORD_ATTEMPTS + 1):
            try:
                recorded = await self.ledger.complete_delivery(change.change_id, token)
            except LedgerUnavailable as error:
                if attempt == RECORD_ATTEMPTS:
                    log.error(
                        "checkout_delivery_unrecorded",
                        extra={"fields": {**fields, "detail": str(error)[:300]}},
                    )
                    raise DeliveryFailed(f"{change.change_id}: delivered, not recorded") from error
                await asyncio.sleep(RECORD_PAUSE_S * attempt)
                continue
            if not recorded:
                log.error("checkout_delivered_twice", extra={"fields": fields})
            return recorded
        raise AssertionError("unreachable")


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
