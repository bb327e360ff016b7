"""`python -m checkout reconcile [--days N]`: nothing paid is lost, even when webhooks were.

Five passes through the webhook's own path: docs/operations.md "Nothing paid is lost"."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from checkout.config import Settings
from checkout.errors import RetryLater, StripeFailure
from checkout.ops.subscriptions import DeadLetters, TopicSubscriptions
from checkout.orders.catalogue import Catalogue
from checkout.orders.delivery import DeliveryFailed, DeliveryInProgress
from checkout.orders.intake import Intake, Kind
from checkout.orders.ledger import Ledger
from checkout.orders.model import HANDLED_EVENTS, Change
from checkout.orders.publisher import Publisher
from checkout.orders.recorder import PublicationInProgress, Recorder
from checkout.orders.session import SessionStatus
from checkout.orders.stripe_fields import session_status
from checkout.runtime import Runtime
from checkout.stripe_access.gateway import StripeGateway

log = logging.getLogger("checkout.reconcile")

DEFAULT_DAYS = 3
MAX_DAYS = 30  # Stripe keeps events for 30 days
# A change recorded this recently may still be being published by the request that recorded it.
UNPUBLISHED_GRACE = timedelta(minutes=1)

# What Stripe, the ledger or Pub/Sub raise when they fail: counted, and the run goes on.
_FAILURES = (StripeFailure, RetryLater, DeliveryFailed)
# Changes named in the summary line, at most (each overdue one has its own ERROR record).
NAMED_CHANGES = 20


@dataclass(frozen=True)
class ReconcileParts:
    """What reconcile uses: the runtime's gateway, ledger, recorder, publisher and intake."""

    settings: Settings  # the deployment id, the audit's bounds, the order topic
    gateway: StripeGateway
    ledger: Ledger
    recorder: Recorder
    publisher: Publisher
    catalogue: Catalogue
    intake: Intake

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> ReconcileParts:
        return runtime.hand(cls)


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
    changes_undelivered: int = 0  # published, not delivered within the grace: the audit's find
    changes_redelivered: int = 0  # of those and the dead letters, published again by this run
    changes_overdue: int = 0  # undelivered past the alert bound: ERROR records, exit non-zero
    undelivered: list[str] = field(default_factory=list)  # their change ids, a few
    dead_letters: dict[str, object] = field(
        default_factory=lambda: {"count": 0, "oldest_age_seconds": None}
    )
    dead_letters_acknowledged: int = 0  # their change was delivered: nothing left to do
    failures: int = 0
    failed: list[str] = field(default_factory=list)  # what failed, a few, for the log

    @property
    def ok(self) -> bool:
        return self.failures == 0 and self.changes_overdue == 0

    def record(self) -> dict[str, object]:
        return {"message": "checkout_reconcile", **asdict(self), "ok": self.ok}

    def failure(self, what: str, error: BaseException) -> None:
        self.failures += 1
        if len(self.failed) < 5:
            self.failed.append(f"{what}: {type(error).__name__}: {str(error)[:200]}")


async def reconcile(
    service: ReconcileParts,
    days: int = DEFAULT_DAYS,
    *,
    unpublished_grace: timedelta = UNPUBLISHED_GRACE,
    undelivered_grace: timedelta | None = None,
    undelivered_alert: timedelta | None = None,
) -> Summary:
    """Apply every missed payment and undelivered event of the last `days` days, once; deliver
    again every undelivered change.

    `unpublished_grace`: how long ago a change must have been recorded for this to publish it;
    `undelivered_grace` and `undelivered_alert` (default: the settings'): see the module's doc.
    """
    settings = service.settings
    if undelivered_grace is None:
        undelivered_grace = timedelta(seconds=settings.undelivered_grace_seconds)
    if undelivered_alert is None:
        undelivered_alert = timedelta(seconds=settings.undelivered_alert_seconds)
    summary = Summary(days=days, deployment_id=service.settings.deployment_id)
    since = int(time.time()) - days * 86400
    with _step(summary, "listing sessions"):
        async for raw in service.gateway.sessions_since(since, status="complete"):
            await _session(service, session_status(raw), summary)
    with _step(summary, "listing events"):
        async for event in service.gateway.undelivered_events_since(since, sorted(HANDLED_EVENTS)):
            summary.events_seen += 1
            with _item(summary, f"event {event.get('id')}"):
                outcome = await service.intake.record_event(event, look_up_payments=False)
                if outcome.not_ours:
                    summary.events_not_ours += 1
                elif outcome.kind is Kind.REFUSED:
                    summary.events_refused += 1
                    fields = {"event_id": event.get("id"), **outcome.log_fields()}
                    log.warning("stripe_event", extra={"fields": fields})
                summary.changes_applied += outcome.changes
                summary.changes_published += outcome.published
    with _step(summary, "listing unpublished changes"):
        recorded_before = datetime.now(UTC) - unpublished_grace
        for order in await service.ledger.unpublished_orders(updated_before=recorded_before):
            with _item(summary, f"publishing {order.session_id}"):
                summary.changes_published += await service.recorder.publish_pending(order)
    # What is undelivered is read first, so that the counts are the state the run found (the
    # dead letters' redeliveries may be delivered while it goes on).
    undelivered: list[dict[str, Any]] = []
    with _step(summary, "listing undelivered changes"):
        undelivered = await _undelivered(service, summary, undelivered_grace, undelivered_alert)
    redelivered: set[str] = set()
    with _step(summary, "reading dead letters"):
        await _dead_letters(service, summary, redelivered)
    for record in undelivered:
        change = Change.from_data(record["change"])
        if change.change_id in redelivered:
            continue  # its dead letter was published again already
        with _item(summary, f"redelivering {change.change_id}"):
            await service.publisher.publish(change, traceparent=record.get("traceparent"))
            redelivered.add(change.change_id)
            summary.changes_redelivered += 1
    return summary


async def _dead_letters(service: ReconcileParts, summary: Summary, redelivered: set[str]) -> None:
    """Read the dead-letter backlog; acknowledge what was delivered, publish the rest again."""
    topic = service.settings.order_events_topic
    if topic is None:
        return  # in-process delivery: no subscription, no dead letters
    subscriptions = TopicSubscriptions(topic)
    backlog: DeadLetters = await subscriptions.dead_letters(await subscriptions.subscriptions())
    summary.dead_letters = backlog.summary()
    left = []
    for letter in backlog.letters:
        change = letter.change
        if change is None:
            left.append(letter)  # not an order change: for a person to read (docs/operations.md)
            continue
        handled = False
        with _item(summary, f"dead letter {change.change_id}"):
            record = await service.ledger.delivery(change.change_id)
            if record is not None and record.get("delivered_at") is not None:
                summary.dead_letters_acknowledged += 1
            elif change.change_id not in redelivered:
                await service.publisher.publish(change, traceparent=letter.traceparent)
                redelivered.add(change.change_id)
                summary.changes_redelivered += 1
            await subscriptions.acknowledge(letter)
            handled = True
        if not handled:  # its redelivery failed (counted): left for the next run
            left.append(letter)
    await subscriptions.put_back(left)


async def _undelivered(
    service: ReconcileParts, summary: Summary, grace: timedelta, alert: timedelta
) -> list[dict[str, Any]]:
    """The audit: every change published before the grace and not delivered (counted, and an
    ERROR record each past the alert bound)."""
    now = datetime.now(UTC)
    found = await service.ledger.undelivered(published_before=now - grace)
    for record in found:
        change = Change.from_data(record["change"])
        summary.changes_undelivered += 1
        if len(summary.undelivered) < NAMED_CHANGES:
            summary.undelivered.append(change.change_id)
        age = (now - record["published_at"]).total_seconds()
        if age >= alert.total_seconds():
            summary.changes_overdue += 1
            fields = {
                "change_id": change.change_id,
                "type": change.type,
                "session_id": change.session_id,
                "published_at": record["published_at"].isoformat(),
                "age_seconds": round(age),
                "attempts": record.get("attempts", 0),
                "last_error": record.get("last_error"),
            }
            log.error("checkout_change_undelivered", extra={"fields": fields})
    return found


async def _session(service: ReconcileParts, session: SessionStatus, summary: Summary) -> None:
    summary.sessions_seen += 1
    with _item(summary, f"session {session.session_id}"):
        # Not ours: another integration's or another deployment's. Not settled: a delayed
        # payment still settling, whose event follows.
        outcome = await service.intake.record_listed_session(session)
        if outcome.not_ours:
            summary.sessions_not_ours += 1
        elif outcome.not_sold:
            summary.sessions_refused += 1  # logged: a paying customer an operator must look at
        summary.changes_applied += outcome.changes
        summary.changes_published += outcome.published


@contextmanager
def _item(summary: Summary, what: str) -> Iterator[None]:
    """One session, event or order: a failure is counted, and the run goes on to the next."""
    try:
        yield
    except DeliveryInProgress:
        # In-process delivery (no topic): the change is queued behind a run that hands it on.
        summary.changes_in_progress += 1
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
