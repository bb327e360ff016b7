"""The Firestore ledger: exactly-once fulfilment and event dedupe across every instance.

`checkout_orders/{session id}` holds one order record per Checkout Session. Fulfilment takes a
claim on it in a transaction (owner + lease expiry), runs `deliver`, and only after `deliver`
returned writes `fulfilled_at` in a second transaction. A failing `deliver` releases the claim; an
instance that dies mid-delivery leaves a claim that anyone may take over once its lease ran out.
`checkout_events/{event id}` remembers handled Stripe events, with `expire_at` for a TTL policy.

Deadlines: every call passes an explicit per-attempt timeout and a short retry policy, and every
operation (a read, a write, or a whole transaction) runs under a hard deadline. The library gives
a transaction's begin, commit and rollback its own defaults (retries for up to 60 s), which no
argument reaches, so the hard deadline is what bounds them: past it the operation is cancelled and
LedgerUnavailable raised. `ledger_budget_seconds()` is the documented worst case.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.api_core import exceptions as api
from google.api_core import retry_async
from google.cloud import firestore

from checkout.ledger import (
    CLAIM_WAIT_SECONDS,
    EVENT_RETENTION_DAYS,
    EVENTS,
    ORDERS,
    Deliver,
    FulfilmentInProgress,
    Ledger,
    LedgerUnavailable,
)
from checkout.session import SessionStatus, settled

log = logging.getLogger("checkout.ledger")

T = TypeVar("T")

ATTEMPT_TIMEOUT_S = 2.0  # one RPC
RETRY_BUDGET_S = 2.5  # one call, retrying transient errors with backoff
OPERATION_DEADLINE_S = 3.0  # one read, write or whole transaction: the hard limit
CANCEL_GRACE_S = 0.5  # past the deadline, the library's rollback gets this long, then is cut
STATUS_READ_DEADLINE_S = 1.0  # the status endpoint's read: one attempt, then Stripe answers
TRANSACTION_ATTEMPTS = 5  # contention (ABORTED) retries of one transaction, inside its deadline
POLL_S = 0.25  # how often a duplicate looks at a claim held elsewhere

_TRANSIENT = retry_async.if_exception_type(
    api.ServiceUnavailable,
    api.DeadlineExceeded,
    api.InternalServerError,
    api.ResourceExhausted,
)
_RETRY = retry_async.AsyncRetry(
    predicate=_TRANSIENT, initial=0.1, maximum=0.5, multiplier=2.0, timeout=RETRY_BUDGET_S
)
_CALL: dict[str, Any] = {"retry": _RETRY, "timeout": ATTEMPT_TIMEOUT_S}
_STATUS_CALL: dict[str, Any] = {"retry": None, "timeout": STATUS_READ_DEADLINE_S}

# Stripe's ids are safe Firestore document ids as they are; anything else is hashed, never trusted
# to be one ('/' nests collections, '__x__' is reserved).
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,500}")


def ledger_budget_seconds(claim_wait_seconds: float = CLAIM_WAIT_SECONDS) -> float:
    """Worst case the ledger adds to one webhook request, `deliver_order` aside.

    A duplicate may wait `claim_wait_seconds` for a claim held elsewhere. Around that wait come at
    most six operations, each within its deadline plus the cancel grace: the event lookup, the
    claim's create, the read and transaction of the last poll, the completion, the event mark.
    """
    return claim_wait_seconds + 6 * (OPERATION_DEADLINE_S + CANCEL_GRACE_S)


class _Contended(LedgerUnavailable):
    """A transaction kept losing to concurrent ones: someone else is writing this order now."""


_DONE, _CLAIMED, _HELD = "done", "claimed", "held"


class FirestoreLedger(Ledger):
    name = "firestore"

    def __init__(
        self,
        *,
        project: str,
        database: str,
        lease_seconds: float,
        claim_wait_seconds: float = CLAIM_WAIT_SECONDS,
    ) -> None:
        super().__init__(claim_wait_seconds)
        self.project = project
        self.database = database
        self._lease = timedelta(seconds=lease_seconds)
        # Who holds a claim: this process; the token inside a claim tells attempts apart.
        self.owner = f"pid{os.getpid()}-{secrets.token_hex(4)}"
        self._client: firestore.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        # Delivered, but the record of it did not become durable: the next attempt in this
        # process records it again instead of delivering again.
        self._unrecorded: dict[str, str] = {}

    # -- fulfilment ---------------------------------------------------------------------------

    async def _fulfil(
        self, session: SessionStatus, deliver: Deliver, event_id: str | None, give_up: float
    ) -> bool:
        key = session.session_id
        token = self._unrecorded.get(key)
        if token is None:
            token = secrets.token_hex(8)
            if not await self._wait_for_claim(session, event_id, token, give_up):
                return False
            try:
                await deliver()
            except BaseException:
                await self._release(session, token)
                raise
            self._unrecorded[key] = token
        recorded = await self._complete(session, token, event_id)
        del self._unrecorded[key]
        return recorded

    async def _wait_for_claim(
        self, session: SessionStatus, event_id: str | None, token: str, give_up: float
    ) -> bool:
        """True once this attempt holds the claim; False if the session is fulfilled already."""
        loop = asyncio.get_running_loop()
        if await self._create_claimed(session, event_id, token):
            return True
        while True:
            try:
                outcome, claim = await self._claim(session, event_id, token)
            except _Contended:
                outcome, claim = _HELD, None
            if outcome == _DONE:
                return False
            if outcome == _CLAIMED:
                if claim and claim.get("token") != token:
                    log.warning(
                        "checkout_claim_taken_over",
                        extra={"fields": _claim_fields(session, claim, self.owner)},
                    )
                return True
            if loop.time() + POLL_S >= give_up:
                until = f" (its lease ends {claim['expires_at'].isoformat()})" if claim else ""
                raise FulfilmentInProgress(
                    f"{session.session_id} is being fulfilled by another attempt{until}"
                )
            await asyncio.sleep(POLL_S)

    async def _create_claimed(
        self, session: SessionStatus, event_id: str | None, token: str
    ) -> bool:
        """The usual first attempt: create the order record holding our claim.

        Of concurrent creates exactly one succeeds, and the others learn at once that the record
        exists, without the lock waits that racing transactions on one new document cost.
        """
        ref = self._orders().document(_doc_id(session.session_id))
        order = _new_order({**session.order_fields(final=True), "claim": self._claim_for(token)})
        if event_id is not None:
            order["event_ids"] = [event_id]

        async def create() -> bool:
            try:
                await ref.create(order, **_CALL)
            except api.Conflict:  # AlreadyExists
                return False
            return True

        return await self._bounded(f"claiming {session.session_id}", create)

    async def _claim(
        self, session: SessionStatus, event_id: str | None, token: str
    ) -> tuple[str, dict[str, Any] | None]:
        """(_DONE, None), (_HELD, the live claim) or (_CLAIMED, the claim replaced, if any)."""
        ref = self._orders().document(_doc_id(session.session_id))
        # A plain read first: fulfilled, or claimed by someone alive, needs no transaction.
        order = await self._read(ref, session.session_id)
        now = datetime.now(UTC)
        if order is not None:
            if order.get("fulfilled_at") is not None:
                if event_id is not None and event_id not in order.get("event_ids", []):
                    await self._bounded(
                        f"noting {event_id}", lambda: ref.update(_touched(event_id), **_CALL)
                    )
                return _DONE, None
            held = order.get("claim")
            if held and held.get("token") == token:
                return _CLAIMED, held  # our create went through, though its answer was lost
            if held and held["expires_at"] > now:
                return _HELD, held

        # No live claim (released, expired, or a record written before any): take it.
        mine = self._claim_for(token)

        @firestore.async_transactional
        async def claim(
            transaction: firestore.AsyncTransaction,
        ) -> tuple[str, dict[str, Any] | None]:
            snapshot = await ref.get(transaction=transaction, **_CALL)
            order = snapshot.to_dict() if snapshot.exists else None
            if order is not None and order.get("fulfilled_at") is not None:
                return _DONE, None
            held = (order or {}).get("claim")
            if held and held["expires_at"] > datetime.now(UTC):
                return _HELD, held
            fields = {**session.order_fields(final=True), "claim": mine}
            _write(transaction, ref, order, fields, event_id)
            return _CLAIMED, held

        return await self._transaction(f"claiming {session.session_id}", claim)

    def _claim_for(self, token: str) -> dict[str, Any]:
        return {"owner": self.owner, "token": token, "expires_at": datetime.now(UTC) + self._lease}

    async def _complete(self, session: SessionStatus, token: str, event_id: str | None) -> bool:
        """Write `fulfilled_at` and drop the claim; False if another attempt recorded it first."""
        ref = self._orders().document(_doc_id(session.session_id))

        @firestore.async_transactional
        async def complete(
            transaction: firestore.AsyncTransaction,
        ) -> tuple[bool, dict[str, Any] | None]:
            snapshot = await ref.get(transaction=transaction, **_CALL)
            order = snapshot.to_dict() if snapshot.exists else None
            held = (order or {}).get("claim")
            if order is not None and order.get("fulfilled_at") is not None:
                return False, held
            fields = {
                **session.order_fields(final=True),
                "claim": None,
                "fulfilled_at": firestore.SERVER_TIMESTAMP,
            }
            _write(transaction, ref, order, fields, event_id)
            return True, held

        recorded, held = await self._transaction(f"recording {session.session_id}", complete)
        if not recorded or (held is not None and held.get("token") != token):
            # deliver outlived the lease and another attempt took over: both may have delivered.
            log.error(
                "checkout_claim_lease_overrun",
                extra={"fields": _claim_fields(session, held or {}, self.owner)},
            )
        return recorded

    async def _release(self, session: SessionStatus, token: str) -> None:
        """Drop our claim after a failed delivery, so a retry need not wait for the lease."""
        ref = self._orders().document(_doc_id(session.session_id))

        @firestore.async_transactional
        async def release(transaction: firestore.AsyncTransaction) -> None:
            snapshot = await ref.get(transaction=transaction, **_CALL)
            held = (snapshot.to_dict() or {}).get("claim") if snapshot.exists else None
            if held and held.get("token") == token:
                transaction.update(ref, {"claim": None, "updated_at": firestore.SERVER_TIMESTAMP})

        try:
            await self._transaction(f"releasing {session.session_id}", release)
        except LedgerUnavailable as error:
            lease = self._lease.total_seconds()
            fields = {"session_id": session.session_id, "detail": f"{error}; lease {lease:g} s"}
            log.warning("checkout_claim_not_released", extra={"fields": fields})

    # -- records ------------------------------------------------------------------------------

    async def record(
        self, session: SessionStatus, *, event_id: str | None = None, final: bool = False
    ) -> None:
        ref = self._orders().document(_doc_id(session.session_id))
        fields = session.order_fields(final=final)

        @firestore.async_transactional
        async def write_record(transaction: firestore.AsyncTransaction) -> None:
            snapshot = await ref.get(transaction=transaction, **_CALL)
            order = snapshot.to_dict() if snapshot.exists else None
            if order is not None and order.get("final") and not fields["final"]:
                # An older status arriving late: keep the final one, note the event.
                if event_id is not None:
                    transaction.update(ref, _touched(event_id))
                return
            _write(transaction, ref, order, fields, event_id)

        await self._transaction(f"recording {session.session_id}", write_record)

    async def settled_status(self, session_id: str) -> SessionStatus | None:
        ref = self._orders().document(_doc_id(session_id))

        async def read() -> dict[str, Any] | None:
            snapshot = await ref.get(**_STATUS_CALL)
            return snapshot.to_dict() if snapshot.exists else None

        order = await self._bounded(f"reading {session_id}", read, STATUS_READ_DEADLINE_S)
        return settled(session_id, order)

    async def order(self, session_id: str) -> dict[str, Any] | None:
        """The stored record of a session, for tests and operators."""
        return await self._read(self._orders().document(_doc_id(session_id)), session_id)

    async def event_handled(self, event_id: str) -> bool:
        ref = self._events().document(_doc_id(event_id))

        async def read() -> bool:
            return (await ref.get(**_CALL)).exists

        return await self._bounded(f"looking up event {event_id}", read)

    async def mark_event_handled(self, event_id: str, kind: str, session_id: str | None) -> None:
        ref = self._events().document(_doc_id(event_id))
        record = {
            "type": kind,
            "session_id": session_id,
            "handled_at": firestore.SERVER_TIMESTAMP,
            "expire_at": datetime.now(UTC) + timedelta(days=EVENT_RETENTION_DAYS),
        }

        async def write() -> None:
            await ref.set(record, **_CALL)

        await self._bounded(f"marking event {event_id}", write)

    # -- Firestore ----------------------------------------------------------------------------

    def _db(self) -> firestore.AsyncClient:
        # Made on first use inside the running loop (a gRPC aio channel belongs to one loop), so
        # never at import and never before gunicorn forks.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = firestore.AsyncClient(project=self.project, database=self.database)
            self._client_loop = loop
        return self._client

    async def _read(
        self, ref: firestore.AsyncDocumentReference, what: str
    ) -> dict[str, Any] | None:
        async def read() -> dict[str, Any] | None:
            snapshot = await ref.get(**_CALL)
            return snapshot.to_dict() if snapshot.exists else None

        return await self._bounded(f"reading {what}", read)

    def _orders(self) -> firestore.AsyncCollectionReference:
        return self._db().collection(ORDERS)

    def _events(self) -> firestore.AsyncCollectionReference:
        return self._db().collection(EVENTS)

    async def _transaction(
        self,
        what: str,
        function: Callable[[firestore.AsyncTransaction], Awaitable[T]],
    ) -> T:
        def run() -> Awaitable[T]:
            transaction = self._db().transaction(max_attempts=TRANSACTION_ATTEMPTS)
            return function(transaction)

        return await self._bounded(what, run)

    async def _bounded(
        self,
        what: str,
        operation: Callable[[], Awaitable[T]],
        deadline: float = OPERATION_DEADLINE_S,
    ) -> T:
        """Run one Firestore operation within `deadline`; any failure is LedgerUnavailable."""
        task = asyncio.ensure_future(operation())
        try:
            done, _ = await asyncio.wait({task}, timeout=deadline)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            await _abandon(task)
            raise LedgerUnavailable(
                f"Firestore did not finish {what} within {deadline:g} s "
                f"(project {self.project}, database {self.database})"
            )
        error = task.exception()
        if error is None:
            return task.result()
        raise self._unavailable(what, error) from error

    def _unavailable(self, what: str, error: BaseException) -> LedgerUnavailable:
        cause = _google_error_in(error)
        where = f"project {self.project}, database {self.database}"
        if isinstance(cause, api.Aborted):
            return _Contended(f"{what}: contention outlasted {TRANSACTION_ATTEMPTS} attempts")
        if isinstance(cause, api.PermissionDenied | api.Unauthenticated):
            return LedgerUnavailable(
                f"Firestore refused {what} ({where}): grant roles/datastore.user to the runtime "
                f"service account ({_describe(cause)})"
            )
        if isinstance(cause, api.NotFound):
            return LedgerUnavailable(
                f"Firestore has no database for {what} ({where}): create it, see docs/ledger.md "
                f"({_describe(cause)})"
            )
        if isinstance(error, api.RetryError):
            return LedgerUnavailable(
                f"Firestore is unavailable for {what} ({where}): still failing after retrying for "
                f"{RETRY_BUDGET_S:g} s (last error: {_describe(error.cause)})"
            )
        return LedgerUnavailable(f"Firestore failed {what} ({where}): {_describe(cause or error)}")


def _write(
    transaction: firestore.AsyncTransaction,
    ref: firestore.AsyncDocumentReference,
    order: dict[str, Any] | None,
    fields: dict[str, Any],
    event_id: str | None,
) -> None:
    """Create the order record, or update the one read in this transaction."""
    if order is None:
        created = _new_order(fields)
        if event_id is not None:
            created["event_ids"] = [event_id]
        transaction.create(ref, created)
    else:
        update = {**fields, "updated_at": firestore.SERVER_TIMESTAMP}
        if event_id is not None:
            update["event_ids"] = firestore.ArrayUnion([event_id])
        transaction.update(ref, update)


def _new_order(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "claim": None,
        "fulfilled_at": None,
        **fields,
        "created_at": firestore.SERVER_TIMESTAMP,
        "updated_at": firestore.SERVER_TIMESTAMP,
        "event_ids": [],
    }


def _touched(event_id: str) -> dict[str, Any]:
    return {"event_ids": firestore.ArrayUnion([event_id]), "updated_at": firestore.SERVER_TIMESTAMP}


def _doc_id(key: str) -> str:
    if _SAFE_ID.fullmatch(key) and not key.startswith("__"):
        return key
    return "sha256-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _claim_fields(session: SessionStatus, claim: dict[str, Any], owner: str) -> dict[str, Any]:
    return {
        "session_id": session.session_id,
        "claim_owner": claim.get("owner"),
        "claim_expires_at": claim["expires_at"].isoformat() if claim.get("expires_at") else None,
        "owner": owner,
    }


async def _abandon(task: asyncio.Task[Any]) -> None:
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE_S)
    if not done:
        # Still in the library's rollback, which retries for up to 60 s: cut it too.
        task.cancel()
    task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Task[Any]) -> None:
    # Read the outcome of an abandoned operation, so asyncio does not report it as never retrieved.
    if not task.cancelled():
        task.exception()


def _google_error_in(error: BaseException) -> api.GoogleAPIError | None:
    """The Google error behind `error`: the library wraps some (a failed rollback, RetryError)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, api.RetryError) and current.cause is not None:
            current = current.cause
            continue
        if isinstance(current, api.GoogleAPICallError):
            return current
        current = current.__cause__ or current.__context__
    return None


def _describe(error: BaseException | None) -> str:
    # Google's errors carry the service's own sentence; for anything else the type alone.
    if isinstance(error, api.GoogleAPICallError):
        return f"{error.code} {error.message}"[:300]
    return type(error).__name__ if error is not None else "unknown"
