"""Record, then publish: every order fact goes through here (webhook, status path, reconciler),
and the caller answers only once its changes are on their way to the worker (docs/ledger.md)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from checkout.errors import RetryLater
from checkout.logs import current_traceparent
from checkout.orders.ledger import PUBLISH_CLAIM_SECONDS, Applied, Ledger, new_token
from checkout.orders.model import DISPUTED, Change, Fact, Order
from checkout.orders.publisher import Publisher, PublishFailed

log = logging.getLogger("checkout.orders")

# How long a duplicate waits for another request's publish of the same change before it answers
# a retryable error (that request's own publish takes milliseconds, or fails within its deadline).
IN_FLIGHT_WAIT_S = 1.5
IN_FLIGHT_POLL_S = 0.1
# Room kept between a publish's own deadline and the end of the claim it publishes under (clock
# skew between instances, the claim's write).
CLAIM_MARGIN_S = 2.0


class PublicationInProgress(RetryLater):
    """Another request is publishing this order's changes right now; retry shortly."""


class Recorder:
    def __init__(
        self, ledger: Ledger, publisher: Publisher, in_flight_wait: float = IN_FLIGHT_WAIT_S
    ) -> None:
        self.ledger = ledger
        self.publisher = publisher
        self._in_flight_wait = in_flight_wait

    async def record(
        self,
        session_id: str,
        fact: Fact,
        *,
        event_id: str | None = None,
        event_type: str | None = None,
    ) -> Applied:
        """Record `fact` and publish what is unpublished; LedgerUnavailable, PublishFailed or
        PublicationInProgress when that could not be done (the caller answers retryably)."""
        token = new_token()
        claimed_at = time.monotonic()  # no later than the claim's own start, in the ledger
        applied = await self.ledger.apply(
            session_id, fact, event_id=event_id, event_type=event_type, token=token
        )
        for change in applied.new:
            _log_change(change, event_id)
        await self._publish(session_id, applied.to_publish, token, claimed_at)
        if applied.in_flight:
            applied.order = await self._wait_for_others(session_id, applied.in_flight)
        return applied

    async def publish_pending(self, order: Order) -> int:
        """Publish an order's unpublished changes that no other request is publishing: how many."""
        token = new_token()
        claimed_at = time.monotonic()
        changes = await self.ledger.claim_unpublished(order.session_id, token)
        await self._publish(order.session_id, changes, token, claimed_at)
        return len(changes)

    async def _publish(
        self, session_id: str, changes: Sequence[Change], token: str, claimed_at: float
    ) -> None:
        # Each publish must land while our claim holds (PUBLISH_CLAIM_SECONDS): one that could
        # outlast it is not started, or another request could take the change over and publish
        # it a second time. The caller answers 503 and the change waits for the next call.
        start_by = claimed_at + PUBLISH_CLAIM_SECONDS - self.publisher.deadline - CLAIM_MARGIN_S
        # Each change is owed a delivery from now: the audit's record (docs/ledger.md), written
        # before the publish, so that no change reaches the topic without one.
        await self.ledger.expect_delivery(changes, current_traceparent())
        published: list[str] = []
        try:
            for change in changes:
                await self.publisher.publish(change, start_by)
                published.append(change.key)
        except PublishFailed:
            rest = [c.key for c in changes if c.key not in published]
            await self.ledger.release_publication(session_id, rest, token)
            raise
        finally:
            if published:
                await self.ledger.mark_published(session_id, published, token)
        for change in changes:
            fields = {
                "change_id": change.change_id,
                "type": change.type,
                "via": self.publisher.name,
            }
            log.info("checkout_change_published", extra={"fields": fields})

    async def _wait_for_others(self, session_id: str, keys: Sequence[str]) -> Order | None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._in_flight_wait
        while True:
            order = await self.ledger.order(session_id)
            pending = [k for k in keys if order is not None and not order.changes[k]["published"]]
            if not pending:
                return order
            if loop.time() + IN_FLIGHT_POLL_S > give_up:
                raise PublicationInProgress(
                    f"{session_id}: {', '.join(pending)} still being published by another request"
                )
            await asyncio.sleep(IN_FLIGHT_POLL_S)


def _log_change(change: Change, event_id: str | None) -> None:
    fields = {**change.data(), "event_id": event_id}
    if change.type == DISPUTED:
        # Evidence has a deadline: someone must hear of a dispute at once (docs/operations.md).
        log.warning("checkout_dispute_opened", extra={"fields": fields})
    log.info("checkout_order_change", extra={"fields": fields})


__all__ = ["PublicationInProgress", "PublishFailed", "Recorder"]
