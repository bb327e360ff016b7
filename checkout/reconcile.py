"""`python -m checkout reconcile [--days N]`: nothing paid is lost, even when webhooks were.

Stripe stops retrying a webhook after 3 days in live mode (hours in test mode). Hourly, this looks
at the window itself, through the same path as the webhook (checkout/stripe_events.py, the
recorder, the ledger), so a change it finds is recorded once and published once, and one the
webhook recorded meanwhile is a duplicate that writes nothing:

1. every complete Checkout Session of the window that is ours and settled;
2. every event of the types we handle that Stripe failed to deliver (`delivery_success=false`);
3. every change recorded but not yet published (a publish that failed), older than a minute.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from checkout.errors import ApiError
from checkout.ledger import LedgerUnavailable
from checkout.orders import HANDLED_EVENTS, session_fact
from checkout.publisher import PublishFailed
from checkout.recorder import PublicationInProgress
from checkout.service import Service
from checkout.session import SessionStatus
from checkout.stripe_events import apply_event

log = logging.getLogger("checkout.reconcile")

DEFAULT_DAYS = 3
MAX_DAYS = 30  # Stripe keeps events for 30 days
# A change recorded this recently may still be being published by the request that recorded it.
UNPUBLISHED_GRACE = timedelta(minutes=1)

_FAILURES = (ApiError, LedgerUnavailable, PublishFailed, PublicationInProgress)


@dataclass
class Summary:
    """The one JSON line the command prints (docs/operations.md says how to read it)."""

    days: int
    sessions_seen: int = 0
    events_seen: int = 0
    changes_applied: int = 0
    changes_published: int = 0
    failures: int = 0
    failed: list[str] = field(default_factory=list)  # what failed, a few, for the log

    @property
    def ok(self) -> bool:
        return self.failures == 0

    def record(self) -> dict[str, object]:
        return {"message": "checkout_reconcile", **asdict(self), "ok": self.ok}

    def failure(self, what: str, error: Exception) -> None:
        self.failures += 1
        if len(self.failed) < 5:
            detail = error.detail if isinstance(error, ApiError) else str(error)
            self.failed.append(f"{what}: {type(error).__name__}: {(detail or '')[:200]}")


async def reconcile(service: Service, days: int = DEFAULT_DAYS) -> Summary:
    """Apply every missed payment and undelivered event of the last `days` days, once."""
    summary = Summary(days=days)
    since = int(time.time()) - days * 86400
    try:
        async for raw in service.gateway.sessions_since(since, status="complete"):
            summary.sessions_seen += 1
            await _session(service, SessionStatus.from_stripe(raw), summary)
    except _FAILURES as error:
        summary.failure("listing sessions", error)
    try:
        async for event in service.gateway.undelivered_events_since(since, sorted(HANDLED_EVENTS)):
            summary.events_seen += 1
            try:
                outcome = await apply_event(event, service)
            except _FAILURES as error:
                summary.failure(f"event {event.get('id')}", error)
                continue
            summary.changes_applied += int(outcome.get("changes", "0"))
            summary.changes_published += int(outcome.get("published", "0"))
    except _FAILURES as error:
        summary.failure("listing events", error)
    await _unpublished(service, summary)
    return summary


async def _session(service: Service, session: SessionStatus, summary: Summary) -> None:
    if not service.catalogue.is_ours(session) or not session.terminal:
        return  # another integration's, or a delayed payment still settling (its event follows)
    if session.paid and service.catalogue.refusal(session) is not None:
        return  # ours but not what we sell: the webhook logged it for an operator
    try:
        applied = await service.recorder.apply(session.session_id, session_fact(session))
    except _FAILURES as error:
        summary.failure(f"session {session.session_id}", error)
        return
    summary.changes_applied += len(applied.new)
    summary.changes_published += len(applied.to_publish)


async def _unpublished(service: Service, summary: Summary) -> None:
    cutoff = datetime.now(UTC) - UNPUBLISHED_GRACE
    try:
        orders = await service.ledger.unpublished_orders()
    except LedgerUnavailable as error:
        summary.failure("listing unpublished changes", error)
        return
    for order in orders:
        document = await service.ledger.order_document(order.session_id)
        if document is None or document.get("updated_at", cutoff) > cutoff:
            continue
        try:
            summary.changes_published += await service.recorder.publish_pending(order)
        except _FAILURES as error:
            summary.failure(f"publishing {order.session_id}", error)
