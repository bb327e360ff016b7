"""The Firestore ledger: orders, handled events and deliveries shared by every instance, under
this deployment's own document; every operation under a hard deadline (docs/ledger.md)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from google.api_core import exceptions as api
from google.api_core import retry_async
from google.cloud import firestore
from google.cloud.firestore_v1.field_path import FieldPath

from checkout.errors import CheckoutError
from checkout.orders.ledger import KEEP, Document, Ledger, LedgerUnavailable, R, Step, scoped_path

log = logging.getLogger("checkout.ledger")

T = TypeVar("T")

ATTEMPT_TIMEOUT_S = 2.0  # one RPC
RETRY_BUDGET_S = 2.5  # one call, retrying transient errors with backoff
OPERATION_DEADLINE_S = 3.0  # one read, write or whole transaction: the hard limit
CANCEL_GRACE_S = 0.5  # past the deadline, the library's rollback gets this long, then is cut
STATUS_READ_DEADLINE_S = 1.0  # the status endpoint's read: one attempt, then Stripe answers
TRANSACTION_ATTEMPTS = 5  # contention (ABORTED) retries of one transaction, inside its deadline

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


class _StepFailed(CheckoutError):
    """A transaction's step raised: its cause is re-raised as it is."""


class _Contended(LedgerUnavailable):
    """A transaction kept losing to concurrent ones: someone else is writing this order now."""


class FirestoreLedger(Ledger):
    name = "firestore"

    def __init__(self, *, project: str, database: str, deployment_id: str) -> None:
        super().__init__()
        self.project = project
        self.database = database
        self.deployment_id = deployment_id
        self._client: firestore.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    async def _transact(self, refs: Sequence[tuple[str, str]], step: Step[R]) -> R:
        what = ", ".join(f"{collection}/{key}" for collection, key in refs)[:200]
        references = [self._collection(c).document(_doc_id(k)) for c, k in refs]

        @firestore.async_transactional
        async def run(transaction: firestore.AsyncTransaction) -> R:
            documents = []
            for reference in references:
                snapshot = await reference.get(transaction=transaction, **_CALL)
                documents.append(snapshot.to_dict() if snapshot.exists else None)
            try:
                writes, result = step(documents)
            except Exception as error:  # our bug, not Firestore's outage: never a 503
                raise _StepFailed() from error
            for reference, write in zip(references, writes, strict=True):
                if write is not KEEP:
                    transaction.set(reference, write)
            return result

        return await self._transaction(f"writing {what}", run)

    async def _get(self, collection: str, key: str, *, quick: bool = False) -> Document | None:
        reference = self._collection(collection).document(_doc_id(key))

        async def read() -> Document | None:
            snapshot = await reference.get(**(_STATUS_CALL if quick else _CALL))
            return snapshot.to_dict() if snapshot.exists else None

        deadline = STATUS_READ_DEADLINE_S if quick else OPERATION_DEADLINE_S
        return await self._bounded(f"reading {collection}/{key}", read, deadline)

    async def _create(self, collection: str, key: str, document: Document) -> bool:
        reference = self._collection(collection).document(_doc_id(key))

        async def create() -> bool:
            try:
                await reference.create(document, **_CALL)
            except api.Conflict:  # AlreadyExists
                return False
            return True

        return await self._bounded(f"creating {collection}/{key}", create)

    async def _set(self, collection: str, key: str, document: Document) -> None:
        reference = self._collection(collection).document(_doc_id(key))

        async def write() -> None:
            await reference.set(document, **_CALL)

        await self._bounded(f"writing {collection}/{key}", write)

    async def _where(self, collection: str, name: str, value: object, limit: int) -> list[Document]:
        query = self._collection(collection).where(filter=firestore.FieldFilter(name, "==", value))

        async def run() -> list[Document]:
            found = [s.to_dict() async for s in query.limit(limit).stream(**_CALL)]
            return [document for document in found if document is not None]

        return await self._bounded(f"querying {collection} by {name}", run)

    async def _where_all(
        self, collection: str, name: str, value: object, page: int
    ) -> list[Document]:
        # Ordered by document id, which the field's own index holds: no composite index needed.
        query = (
            self._collection(collection)
            .where(filter=firestore.FieldFilter(name, "==", value))
            .order_by(FieldPath.document_id())
            .limit(page)
        )
        found: list[Document] = []
        last: Any = None
        while True:
            batch_query = query if last is None else query.start_after(last)

            async def run(q: Any = batch_query) -> list[Any]:
                return [snapshot async for snapshot in q.stream(**_CALL)]

            batch = await self._bounded(f"querying {collection} by {name}", run)
            found += [d for d in (s.to_dict() for s in batch) if d is not None]
            if len(batch) < page:
                return found
            last = batch[-1]

    def for_thread(self) -> FirestoreLedger:
        # A client belongs to one event loop: another thread's loop gets a ledger of its own.
        other = FirestoreLedger(
            project=self.project, database=self.database, deployment_id=self.deployment_id
        )
        other.owner = self.owner
        return other

    # -- Firestore ----------------------------------------------------------------------------

    def _collection(self, name: str) -> firestore.AsyncCollectionReference:
        """This deployment's collection `name` (a LEGACY_* name: the unscoped one of old)."""
        return self._db().collection(scoped_path(self.deployment_id, name, _doc_id))

    def _db(self) -> firestore.AsyncClient:
        # Made on first use inside the running loop (a gRPC aio channel belongs to one loop), so
        # never at import and never before gunicorn forks.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = firestore.AsyncClient(project=self.project, database=self.database)
            self._client_loop = loop
        return self._client

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
        if isinstance(error, _StepFailed) and error.__cause__ is not None:
            raise error.__cause__
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


def _doc_id(key: str) -> str:
    if _SAFE_ID.fullmatch(key) and not key.startswith("__"):
        return key
    return "sha256-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


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
