"""`python -m checkout reconcile [--days N]`: nothing paid is lost, even when webhooks were.

Stripe stops retrying a webhook after 3 days in live mode (hours in test mode). Hourly, this looks
at the window itself, through the same path as the webhook (checkout/stripe_events.py, the
recorder, the ledger), so a change it finds is recorded once and published once, and one the
webhook recorded meanwhile is a duplicate that writes nothing:

1. every complete Checkout Session of the window that is ours and settled;
2. every event of the types we handle that Stripe failed to deliver (`delivery_success=false`),
   but without a Stripe call for those that cannot be ours: `delivery_success=false` covers
   every endpoint of the account, so on a shared account most are other integrations'. A
   session event carries the marker; a refund or dispute whose PaymentIntent this deployment's
   ledger does not know (after step 1 recorded every session of ours in the window) is not an
   order this deployment ever recorded, so nothing was delivered that it could take back;
3. every change recorded but not yet published (a publish that failed), older than a minute.

Whatever fails is counted, and the run goes on to the next item: the summary line is always
printed (docs/operations.md says how to read it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from checkout.errors import ApiError
from checkout.ledger import LedgerUnavailable
from checkout.orders import HANDLED_EVENTS, session_fact
from checkout.publisher import PublishFailed
from checkout.recorder import PublicationInProgress
from checkout.service import Service
from checkout.session import SessionStatus
from checkout.stripe_events import NOT_OURS, apply_event, checked_session_fact

log = logging.getLogger("checkout.reconcile")

DEFAULT_DAYS = 3
MAX_DAYS = 30  # Stripe keeps events for 30 days
# A change recorded this recently may still be being published by the request that recorded it.
UNPUBLISHED_GRACE = timedelta(minutes=1)

# What Stripe, the ledger or Pub/Sub raise when they fail: counted, and the run goes on.
_FAILURES = (ApiError, LedgerUnavailable, PublishFailed)


@dataclass
class Summary:
    """The one JSON line the command prints (docs/operations.md says how to read it)."""

    days: int
    deployment_id: str  # sessions marked with another id are not ours: counted, never applied
    sessions_seen: int = 0
    sessions_not_ours: int = 0
    sessions_refused: int = 0  # ours, paid, but not what this deployment sells (logged)
    events_seen: int = 0
    events_not_ours: int = 0  # skipped before any further Stripe call (another's, or no order)
    events_refused: int = 0  # fields not as Stripe documents them (logged)
    changes_applied: int = 0
    changes_published: int = 0
    changes_in_progress: int = 0  # being published by another request (a webhook, a reconcile)
    failures: int = 0
    failed: list[str] = field(default_factory=list)  # what failed, a few, for the log

    @property
    def ok(self) -> bool:
        return self.failures == 0

    def record(self) -> dict[str, object]:
        return {"message": "checkout_reconcile", **asdict(self), "ok": self.ok}

    def failure(self, what: str, error: BaseException) -> None:
        self.failures += 1
        if len(self.failed) < 5:
            detail = error.detail if isinstance(error, ApiError) else str(error)
            self.failed.append(f"{what}: {type(error).__name__}: {(detail or '')[:200]}")


async def reconcile(
    service: Service,
    days: int = DEFAULT_DAYS,
    *,
    unpublished_grace: timedelta = UNPUBLISHED_GRACE,
) -> Summary:
    """Apply every missed payment and undelivered event of the last `days` days, once.

    `unpublished_grace`: how long ago a change must have been recorded for this to publish it.
    """
    summary = Summary(days=days, deployment_id=service.settings.deployment_id)
    since = int(time.time()) - days * 86400
    with _step(summary, "listing sessions"):
        async for raw in service.gateway.sessions_since(since, status="complete"):
            await _session(service, SessionStatus.from_stripe(raw), summary)
    with _step(summary, "listing events"):
        async for event in service.gateway.undelivered_events_since(since, sorted(HANDLED_EVENTS)):
            summary.events_seen += 1
            with _item(summary, f"event {event.get('id')}"):
                outcome = await apply_event(event, service, ask_stripe=False)
                if outcome.get("reason") in NOT_OURS:
                    summary.events_not_ours += 1
                elif outcome.get("outcome") == "refused":
                    summary.events_refused += 1
                    log.warning(
                        "stripe_event", extra={"fields": {"event_id": event.get("id"), **outcome}}
                    )
                summary.changes_applied += int(outcome.get("changes", "0"))
                summary.changes_published += int(outcome.get("published", "0"))
    with _step(summary, "listing unpublished changes"):
        recorded_before = datetime.now(UTC) - unpublished_grace
        for order in await service.ledger.unpublished_orders(updated_before=recorded_before):
            with _item(summary, f"publishing {order.session_id}"):
                summary.changes_published += await service.recorder.publish_pending(order)
    return summary


async def _session(service: Service, session: SessionStatus, summary: Summary) -> None:
    summary.sessions_seen += 1
    if not service.catalogue.is_ours(session):
        summary.sessions_not_ours += 1  # another integration's, or another deployment's
        return
    if not session.terminal:
        return  # a delayed payment still settling: its event follows
    with _item(summary, f"session {session.session_id}"):
        fact, refused = await checked_session_fact(session_fact(session), service, None)
        if refused is not None:
            summary.sessions_refused += 1  # logged: a paying customer an operator must look at
            return
        applied = await service.recorder.apply(session.session_id, fact)
        summary.changes_applied += len(applied.new)
        summary.changes_published += len(applied.to_publish)


@contextmanager
def _item(summary: Summary, what: str) -> Iterator[None]:
    """One session, event or order: a failure is counted, and the run goes on to the next."""
    try:
        yield
    except PublicationInProgress:
        # Another request (a webhook, another reconcile) holds the change and is publishing it:
        # not a failure of this run. That request answers for it, or the next run publishes it.
        summary.changes_in_progress += 1
    except _FAILURES as error:
        summary.failure(what, error)


@contextmanager
def _step(summary: Summary, what: str) -> Iterator[None]:
    """One of the three lists: its failure is counted, and the run goes on to the next step."""
    try:
        yield
    except _FAILURES as error:
        summary.failure(what, error)
    except Exception as error:
        # Not an outage we know of: still one failure in the one summary line, its trace logged.
        log.exception("checkout_reconcile_error", extra={"fields": {"step": what}})
        summary.failure(what, error)
