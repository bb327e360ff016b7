"""The order ledger: which sessions were fulfilled, and which Stripe events were handled.

Stripe delivers each event at least once, to whichever instance the load balancer picks, and the
return page asks for fulfilment too. The ledger is what makes `deliver_order` run to success at
most once per session all the same. Two implementations share one interface:

- `memory` (`ORDER_LEDGER=memory`, the local default): this process only, today's behaviour;
- `firestore` (`ORDER_LEDGER=firestore`, the deploy's setting): every instance, through
  Firestore's `checkout_orders` and `checkout_events` collections (`checkout/ledger/firestore.py`,
  docs/ledger.md).

Each method is a coroutine: the ledger runs on the request's event loop.
"""

# Imports inside functions are deliberate: google.cloud.firestore costs cold-start time (see
# docs/ledger.md) and loads only when ORDER_LEDGER=firestore.
# ruff: noqa: PLC0415

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from checkout.config import (
    REQUEST_MARGIN_SECONDS,
    SECRET_MANAGER_BUDGET_SECONDS,
    ConfigError,
    Settings,
)
from checkout.session import SessionStatus

if TYPE_CHECKING:
    from checkout.ledger.firestore import FirestoreLedger

log = logging.getLogger("checkout.ledger")

ORDERS = "checkout_orders"
EVENTS = "checkout_events"

# How long a duplicate waits for the attempt that holds a session's claim before it gives up
# with FulfilmentInProgress (the webhook then answers a retryable 503).
CLAIM_WAIT_SECONDS = 5.0
# Stripe retries an event for up to 3 days and lets you resend one for 30: remember it that long.
EVENT_RETENTION_DAYS = 30

Deliver = Callable[[], Awaitable[None]]


class LedgerUnavailable(Exception):
    """The ledger could not be read or written in time; nothing was marked, so retry later."""


class FulfilmentInProgress(Exception):
    """Another attempt (in this process or on another instance) holds the session; retry later."""


class Ledger(ABC):
    """Fulfilment claims, order records and handled event ids."""

    name: str

    def __init__(self, claim_wait_seconds: float) -> None:
        self._claim_wait = claim_wait_seconds
        self._attempts: dict[str, asyncio.Event] = {}

    async def fulfil_once(
        self,
        session: SessionStatus,
        deliver: Deliver,
        *,
        event_id: str | None = None,
        wait: bool = True,
    ) -> bool:
        """Await `deliver()` for a paid session unless it succeeded before; True if this call did.

        Concurrent callers in this process share one attempt. A caller that cannot learn the
        outcome within CLAIM_WAIT_SECONDS (at once, with `wait=False`) gets FulfilmentInProgress;
        LedgerUnavailable means the ledger could not be asked or could not record. Whatever
        `deliver` raises propagates, and the session stays unfulfilled, so a retry runs it again.
        """
        give_up = asyncio.get_running_loop().time() + (self._claim_wait if wait else 0.0)
        key = session.session_id
        while (running := self._attempts.get(key)) is not None:
            try:
                async with asyncio.timeout_at(give_up):
                    await running.wait()
            except TimeoutError:
                raise FulfilmentInProgress(
                    f"{key} is still being fulfilled by another request of this instance"
                ) from None
        finished = self._attempts[key] = asyncio.Event()
        try:
            return await self._fulfil(session, deliver, event_id, give_up)
        finally:
            del self._attempts[key]
            finished.set()

    @abstractmethod
    async def _fulfil(
        self, session: SessionStatus, deliver: Deliver, event_id: str | None, give_up: float
    ) -> bool:
        """fulfil_once without this process's duplicates; `give_up` is a loop.time() deadline."""

    @abstractmethod
    async def record(
        self, session: SessionStatus, *, event_id: str | None = None, final: bool = False
    ) -> None:
        """Record a session's status without fulfilling it (pending, payment failed, expired).

        `final` says the status can no longer change when only the caller knows it (a failed
        payment leaves `complete` + `unpaid`). A final status is never replaced by a non-final one.
        """

    @abstractmethod
    async def settled_status(self, session_id: str) -> SessionStatus | None:
        """The session's status if it can no longer change and needs nothing more from us."""

    @abstractmethod
    async def order(self, session_id: str) -> dict[str, Any] | None:
        """The stored record of a session (fields as in docs/ledger.md), for tests and operators."""

    @abstractmethod
    async def event_handled(self, event_id: str) -> bool:
        """Whether a Stripe event was handled already (by any instance the ledger covers)."""

    @abstractmethod
    async def mark_event_handled(self, event_id: str, kind: str, session_id: str | None) -> None:
        """Remember a handled event for EVENT_RETENTION_DAYS."""


class OutageLog:
    """Logs that the ledger is unreachable once per burst of failures, not once per request.

    A burst ends with a success (`checkout_ledger_recovered`, with the count) or with
    `quiet_seconds` without a failure; the next failure then logs again.
    """

    def __init__(
        self, quiet_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._quiet = quiet_seconds
        self._clock = clock
        self._last_failure: float | None = None
        self._failures = 0

    def failed(self, error: LedgerUnavailable, fallback: str) -> None:
        now = self._clock()
        if self._last_failure is None or now - self._last_failure > self._quiet:
            fields = {"detail": str(error)[:500], "fallback": fallback}
            log.warning("checkout_ledger_degraded", extra={"fields": fields})
            self._failures = 0
        self._failures += 1
        self._last_failure = now

    @property
    def ongoing(self) -> bool:
        """The last ledger call failed, and none has succeeded since."""
        return self._last_failure is not None

    def succeeded(self) -> None:
        if self._last_failure is not None:
            fields = {"failed_requests": self._failures}
            log.info("checkout_ledger_recovered", extra={"fields": fields})
            self._last_failure, self._failures = None, 0


def ledger_from_settings(settings: Settings) -> Ledger:
    """The configured ledger; Firestore's library is imported only when it is the one chosen."""
    if settings.order_ledger == "memory":
        from checkout.ledger.memory import MemoryLedger

        return MemoryLedger(settings.webhook_dedupe_size)
    return firestore_ledger(settings)


def firestore_ledger(settings: Settings) -> FirestoreLedger:
    from checkout.ledger.firestore import FirestoreLedger, ledger_budget_seconds

    # Past the request timeout Cloud Run answers the webhook itself, so the ledger's worst case
    # (with the signing secret's read) must fit in it, leaving deliver_order the rest.
    secret = SECRET_MANAGER_BUDGET_SECONDS if settings.stripe_webhook_secret_name else 0.0
    budget = ledger_budget_seconds() + secret
    room = settings.request_timeout_seconds - REQUEST_MARGIN_SECONDS
    if budget > room:
        raise ConfigError(
            f"ORDER_LEDGER=firestore lets a webhook wait up to {budget:g} s for Firestore (and "
            f"Secret Manager), more than REQUEST_TIMEOUT_SECONDS "
            f"({settings.request_timeout_seconds:g} s) less {REQUEST_MARGIN_SECONDS:g} s: raise "
            "the request timeout (the deploy's _TIMEOUT)"
        )
    return FirestoreLedger(
        project=firestore_project(settings),
        database=settings.firestore_database,
        lease_seconds=settings.ledger_lease_seconds,
    )


def firestore_project(settings: Settings) -> str:
    """GOOGLE_CLOUD_PROJECT, else the default credentials' project; ConfigError when neither."""
    if settings.google_cloud_project:
        return settings.google_cloud_project
    if settings.firestore_emulator_host:
        raise ConfigError(
            "ORDER_LEDGER=firestore with FIRESTORE_EMULATOR_HOST needs GOOGLE_CLOUD_PROJECT "
            "(any id, e.g. demo-checkout): the emulator keeps one set of data per project"
        )
    import google.auth
    from google.auth import exceptions as auth

    try:
        _, project = google.auth.default()
    except auth.GoogleAuthError:
        project = None
    if not project:
        raise ConfigError(
            "ORDER_LEDGER=firestore needs a Google Cloud project and none is known: set "
            "GOOGLE_CLOUD_PROJECT (the deploy does), or run with credentials that name one"
        )
    return project
