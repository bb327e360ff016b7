"""The order ledger: orders and their changes, handled Stripe events, and each change's delivery.

Each operation written once, on primitives memory.py and firestore.py implement: docs/ledger.md."""

# Imports inside functions are deliberate: google.cloud.firestore costs cold-start time (see
# docs/ledger.md) and loads only when ORDER_LEDGER=firestore.
# ruff: noqa: PLC0415

from __future__ import annotations

import copy
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from checkout.config import ConfigError, Settings
from checkout.errors import RetryLater
from checkout.orders.model import Change, Fact, Order, advance

if TYPE_CHECKING:
    from checkout.orders.ledger.firestore import FirestoreLedger

ORDERS = "checkout_orders"
EVENTS = "checkout_events"
DELIVERIES = "checkout_deliveries"
# One document per order whose changes are being delivered: which change's run holds the order,
# and the changes that arrived meanwhile (acknowledged, handed on when that run ends).
DELIVERY_LOCKS = "checkout_delivery_locks"
# The undelivered audit reads every page of this size (reconcile, doctor).
UNDELIVERED_PAGE = 300
# Every collection is this deployment's own, `checkout_deployments/{DEPLOYMENT_ID}/{name}`; the
# unscoped root collections of before are read as LEGACY_* (docs/ledger.md, "Upgrading").
SCOPE_ROOT = "checkout_deployments"
_LEGACY = "legacy:"
LEGACY_ORDERS = _LEGACY + ORDERS
LEGACY_DELIVERIES = _LEGACY + DELIVERIES

# Stripe retries an event for up to 3 days and lets you resend one for 30: remember it that long.
EVENT_RETENTION_DAYS = 30
# How long one request may hold the right to publish a change before another may take it over
# (a request that died mid-publish). The holder starts no publish that could outlast it
# (checkout/orders/recorder.py), so a change is never published by two requests at once.
PUBLISH_CLAIM_SECONDS = 30.0

R = TypeVar("R")
Document = dict[str, Any]
# A transaction's step: the documents read (None: absent) -> what to write in their place (KEEP:
# nothing) and the result.
Step = Callable[[list[Document | None]], tuple[list[Any], R]]
KEEP = object()


class LedgerUnavailable(RetryLater):
    """The ledger could not be read or written in time; nothing was changed, so retry later."""


@dataclass
class Applied:
    """What recording one fact did."""

    order: Order | None
    new: list[Change] = field(default_factory=list)  # changes this fact made
    to_publish: list[Change] = field(default_factory=list)  # unpublished, and claimed by us
    in_flight: list[str] = field(default_factory=list)  # unpublished, claimed by another request
    duplicate: bool = False  # the event was handled before
    writes: bool = False  # the order's document must be written


class Ledger(ABC):
    """Orders, handled events and deliveries, on one store."""

    name: str

    def __init__(self) -> None:
        # Who holds a claim: this process; the token inside a claim tells attempts apart.
        self.owner = f"pid{os.getpid()}-{secrets.token_hex(4)}"

    # -- the store's primitives ---------------------------------------------------------------

    @abstractmethod
    async def _transact(self, refs: Sequence[tuple[str, str]], step: Step[R]) -> R:
        """Read `refs` ((collection, key) pairs), run `step`, write what it returns, atomically."""

    @abstractmethod
    async def _get(self, collection: str, key: str, *, quick: bool = False) -> Document | None:
        """One document; `quick`: one short attempt (the status path, which can ask Stripe)."""

    @abstractmethod
    async def _create(self, collection: str, key: str, document: Document) -> bool:
        """Create a document; False if it exists already (nothing written)."""

    @abstractmethod
    async def _set(self, collection: str, key: str, document: Document) -> None:
        """Write a whole document, whatever was there."""

    @abstractmethod
    async def _where(self, collection: str, name: str, value: object, limit: int) -> list[Document]:
        """Documents whose field `name` equals `value`, at most `limit`."""

    @abstractmethod
    async def _where_all(
        self, collection: str, name: str, value: object, page: int
    ) -> list[Document]:
        """Every document whose field `name` equals `value`, read `page` at a time."""

    def for_thread(self) -> Ledger:
        """This ledger for use from another thread's event loop (the claim renewer's)."""
        return self

    # -- orders -------------------------------------------------------------------------------

    async def apply(
        self,
        session_id: str,
        fact: Fact,
        *,
        token: str,
        event_id: str | None = None,
        event_type: str | None = None,
    ) -> Applied:
        """Fold `fact` into the order, remember the event, claim unpublished changes for `token`;
        a duplicate writes nothing, only a real change takes a transaction (docs/ledger.md)."""
        now = _now()
        current_document = await self._get(ORDERS, session_id) or await self._adopt(session_id)
        seen = event_id is not None and await self._get(EVENTS, event_id) is not None
        applied = _applied(current_document, fact, token, now)
        if applied.order is not None and applied.writes:
            created = current_document is None and await self._create(
                ORDERS, session_id, _order_document(applied.order, None, now)
            )
            if not created:
                applied = await self._transact(
                    [(ORDERS, session_id)],
                    lambda documents: _step(documents[0], fact, token, _now()),
                )
        if event_id is not None and not seen:
            await self._set(
                EVENTS,
                event_id,
                {
                    "type": event_type,
                    "session_id": session_id,
                    "handled_at": now,
                    "expire_at": now + timedelta(days=EVENT_RETENTION_DAYS),
                },
            )
        applied.duplicate = seen
        return applied

    async def _adopt(self, session_id: str) -> Document | None:
        """The order as recorded before the ledger was scoped, made ours with its deliveries
        (`apply`'s callers checked the session is ours; docs/ledger.md "Upgrading")."""
        legacy = await self._get(LEGACY_ORDERS, session_id)
        if legacy is None:
            return None
        for key in legacy.get("changes") or {}:
            change_id = f"{session_id}:{key}"
            delivery = await self._get(LEGACY_DELIVERIES, change_id)
            if delivery is not None:
                await self._create(DELIVERIES, change_id, delivery)
        if not await self._create(ORDERS, session_id, legacy):
            return await self._get(ORDERS, session_id)  # adopted by a concurrent request
        return legacy

    async def mark_published(self, session_id: str, keys: Sequence[str], token: str) -> None:
        """Note that the changes `keys` (claimed with `token`) reached the topic."""
        now = _now()

        def published(entry: dict[str, Any]) -> None:
            entry["published"] = True
            entry["published_at"] = now
            entry.pop("publishing", None)

        await self._transact([(ORDERS, session_id)], _edit_changes(keys, published, lambda: now))

    async def mark_unpublished(self, change: Change) -> None:
        """Make a change unpublished again (its in-process delivery failed: a local nack)."""

        def step(documents: list[Document | None]) -> tuple[list[Any], None]:
            document = documents[0]
            if document is None or change.key not in (document.get("changes") or {}):
                return [KEEP], None
            order = Order.from_document(document)
            entry = order.changes[change.key]
            entry["published"] = False
            entry.pop("publishing", None)
            entry.pop("published_at", None)
            return [_order_document(order, document, _now())], None

        await self._transact([(ORDERS, change.session_id)], step)

    async def release_publication(self, session_id: str, keys: Sequence[str], token: str) -> None:
        """Drop our claim on unpublished changes (the publish failed): a retry need not wait."""

        def released(entry: dict[str, Any]) -> None:
            if (entry.get("publishing") or {}).get("token") == token:
                entry.pop("publishing", None)

        await self._transact([(ORDERS, session_id)], _edit_changes(keys, released, _now))

    async def claim_unpublished(self, session_id: str, token: str) -> list[Change]:
        """Claim the order's unpublished changes that no live claim holds, for `token`."""
        now = _now()

        def step(documents: list[Document | None]) -> tuple[list[Any], list[Change]]:
            document = documents[0]
            if document is None:
                return [KEEP], []
            order = Order.from_document(document)
            claimed = _claim_publication(order, token, now)
            if not claimed:
                return [KEEP], []
            changes = [Change.from_data(order.changes[k]["change"]) for k in claimed]
            return [_order_document(order, document, now)], changes

        return await self._transact([(ORDERS, session_id)], step)

    async def order(self, session_id: str, *, quick: bool = False) -> Order | None:
        document = await self._get(ORDERS, session_id, quick=quick)
        return None if document is None else Order.from_document(document)

    async def order_document(self, session_id: str) -> Document | None:
        """The stored document of an order, as docs/ledger.md describes it: for tests, operators."""
        return await self._get(ORDERS, session_id)

    async def session_of_payment(self, payment_intent: str) -> str | None:
        """The session id of the order paid with `payment_intent`, if the ledger has it."""
        found = await self._where(ORDERS, "payment_intent", payment_intent, 1)
        return str(found[0]["session_id"]) if found else None

    async def unpublished_orders(
        self, limit: int = 500, *, updated_before: datetime | None = None
    ) -> list[Order]:
        """Orders with changes recorded but not (yet) published; with `updated_before`, only
        those last written before then (one query: no second read that could fail apart)."""
        found = await self._where(ORDERS, "pending_publication", True, limit)
        if updated_before is not None:
            found = [d for d in found if d.get("updated_at", updated_before) <= updated_before]
        return [Order.from_document(document) for document in found]

    async def event_handled(self, event_id: str) -> bool:
        return await self._get(EVENTS, event_id) is not None

    # -- deliveries ---------------------------------------------------------------------------

    async def expect_delivery(
        self, changes: Sequence[Change], traceparent: str | None = None
    ) -> None:
        """Note, before they are published, that `changes` are owed a delivery: the audit's record.

        A change with a record already (published before, or claimed by a worker first) is left
        as it is: `published_at` stays the first publication, which the alert is measured from.
        """
        if not changes:
            return
        now = _now()

        def step(documents: list[Document | None]) -> tuple[list[Any], None]:
            writes: list[Any] = [
                KEEP if document is not None else _delivery_document(change, now, traceparent)
                for change, document in zip(changes, documents, strict=True)
            ]
            return writes, None

        await self._transact([(DELIVERIES, c.change_id) for c in changes], step)

    async def undelivered(
        self, published_before: datetime, page: int = UNDELIVERED_PAGE
    ) -> list[Document]:
        """Every change published (or claimed) before `published_before` and not delivered yet:
        one query over every page (docs/ledger.md, the delivery audit)."""
        found = await self._where_all(DELIVERIES, "awaiting_delivery", True, page)
        return [
            d
            for d in found
            if d.get("delivered_at") is None
            and d.get("change") is not None
            and d.get("published_at", published_before) <= published_before
        ]

    async def claim_delivery(self, change: Change, token: str, lease: float) -> Claim:
        """Take the right to deliver `change`: CLAIMED, DELIVERED (before) or HELD (running).

        One run per order at a time: HELD too when another change of the order is being
        delivered. A HELD change is queued on the order's lock, and the run holding it hands the
        queue on (publishes it again) when it ends, so the caller may acknowledge its message.
        """
        now = _now()

        def step(documents: list[Document | None]) -> tuple[list[Any], Claim]:
            document = documents[0] or _delivery_document(change, now, None)
            lock = documents[1] or {"session_id": change.session_id, "claim": None, "waiting": {}}
            if document.get("delivered_at") is not None:
                return [KEEP, KEEP], Claim(DELIVERED)
            held = document.get("claim")
            order_held = lock.get("claim")
            for claim in (held, order_held):
                if claim and claim["expires_at"] > now and claim["token"] != token:
                    waiting = {**(lock.get("waiting") or {}), change.change_id: change.data()}
                    queued = {**lock, "waiting": waiting, "updated_at": now}
                    return [KEEP, queued], Claim(HELD, claim)
            mine = self._claim(token, now, lease)
            claimed = {
                **document,
                "claim": mine,
                "attempts": int(document.get("attempts", 0)) + 1,
                "updated_at": now,
            }
            locked = {**lock, "claim": {**mine, "change_id": change.change_id}, "updated_at": now}
            other = held if held and held["token"] != token else None
            return [claimed, locked], Claim(CLAIMED, other)

        return await self._transact(
            [(DELIVERIES, change.change_id), (DELIVERY_LOCKS, change.session_id)], step
        )

    async def renew_delivery(self, change_id: str, token: str, lease: float) -> bool:
        """Extend our claim while the delivery runs; False if it is no longer ours.

        True once our own success is recorded: the renewer may outlive the record by a moment.
        """
        now = _now()

        def step(documents: list[Document | None]) -> tuple[list[Any], bool]:
            document, lock = documents
            if document is not None and document.get("delivered_at") is not None:
                return [KEEP, KEEP], document.get("delivered_by") == token  # nothing to keep
            held = (document or {}).get("claim")
            if document is None or not held or held["token"] != token:
                return [KEEP, KEEP], False
            mine = self._claim(token, now, lease)
            renewed = {**document, "claim": mine, "updated_at": now}
            order_held = (lock or {}).get("claim")
            if lock is None:
                return [renewed, KEEP], True  # a delivery claimed before order locks existed
            if order_held and order_held["token"] != token:
                # Another change of the order took the lock over while our lease had lapsed: our
                # run would go on beside it, on a state it may have changed. Lost.
                return [KEEP, KEEP], False
            locked = {**lock, "claim": {**mine, "change_id": change_id}, "updated_at": now}
            return [renewed, locked], True

        return await self._transact(
            [(DELIVERIES, change_id), (DELIVERY_LOCKS, _session_of(change_id))], step
        )

    async def complete_delivery(self, change_id: str, token: str) -> bool:
        """Record that our delivery succeeded; False if not recorded by us (`record_delivery`)."""
        return await self.record_delivery(change_id, token) == RECORDED

    async def record_delivery(self, change_id: str, token: str) -> str:
        """Record our success, fenced by our claim: RECORDED, DELIVERED_BEFORE (by another) or
        NOT_HOLDER (our claim was taken over: we record nothing).

        RECORDED too when our own record went through before and only its answer was lost.
        """
        now = _now()

        def step(documents: list[Document | None]) -> tuple[list[Any], str]:
            document, lock = documents
            if document is not None and document.get("delivered_at") is not None:
                ours = document.get("delivered_by") == token
                return [KEEP, KEEP], RECORDED if ours else DELIVERED_BEFORE
            held = (document or {}).get("claim")
            if document is None or not held or held["token"] != token:
                return [KEEP, KEEP], NOT_HOLDER
            done = {
                **document,
                "claim": None,
                "delivered_at": now,
                "delivered_by": token,
                "awaiting_delivery": False,
                "updated_at": now,
            }
            return [done, _unlocked(lock, token, now)], RECORDED

        return await self._transact(
            [(DELIVERIES, change_id), (DELIVERY_LOCKS, _session_of(change_id))], step
        )

    async def release_delivery(self, change_id: str, token: str, error: str) -> None:
        """Drop our claim after a failed delivery, so Pub/Sub's redelivery may run it at once."""
        now = _now()

        def step(documents: list[Document | None]) -> tuple[list[Any], None]:
            document, lock = documents
            held = (document or {}).get("claim")
            if document is None or not held or held["token"] != token:
                return [KEEP, _unlocked(lock, token, now)], None
            released = {**document, "claim": None, "last_error": error[:300], "updated_at": now}
            return [released, _unlocked(lock, token, now)], None

        await self._transact(
            [(DELIVERIES, change_id), (DELIVERY_LOCKS, _session_of(change_id))], step
        )

    async def take_waiting(self, session_id: str) -> list[Change]:
        """The changes queued on an order's lock while a run held it, removed from the queue; none
        while another run holds the order (that run hands them on when it ends)."""
        now = _now()

        def step(documents: list[Document | None]) -> tuple[list[Any], list[Change]]:
            lock = documents[0]
            if lock is None or not lock.get("waiting"):
                return [KEEP], []
            held = lock.get("claim")
            if held and held["expires_at"] > now:
                return [KEEP], []
            waiting = [Change.from_data(data) for data in lock["waiting"].values()]
            return [{**lock, "waiting": {}, "updated_at": now}], waiting

        return await self._transact([(DELIVERY_LOCKS, session_id)], step)

    async def delivery(self, change_id: str) -> Document | None:
        """The delivery record of a change: for tests and operators."""
        return await self._get(DELIVERIES, change_id)

    def _claim(self, token: str, now: datetime, lease: float) -> Document:
        return {"owner": self.owner, "token": token, "expires_at": now + timedelta(seconds=lease)}


CLAIMED, DELIVERED, HELD = "claimed", "delivered", "held"
RECORDED, DELIVERED_BEFORE, NOT_HOLDER = "recorded", "delivered_before", "not_holder"


def _delivery_document(change: Change, now: datetime, traceparent: str | None) -> Document:
    """A change's delivery record before any attempt: owed a delivery since `now`."""
    return {
        "change_id": change.change_id,
        "type": change.type,
        "session_id": change.session_id,
        "attempts": 0,
        "delivered_at": None,
        "claim": None,
        "created_at": now,
        "awaiting_delivery": True,
        "published_at": now,
        "change": change.data(),
        "traceparent": traceparent,
    }


def _unlocked(lock: Document | None, token: str, now: datetime) -> Any:
    """The order's lock without our claim on it (KEEP when it is not ours)."""
    held = (lock or {}).get("claim")
    if lock is None or not held or held["token"] != token:
        return KEEP
    return {**lock, "claim": None, "updated_at": now}


def _session_of(change_id: str) -> str:
    return change_id.partition(":")[0]


@dataclass(frozen=True)
class Claim:
    outcome: str  # CLAIMED, DELIVERED or HELD
    other: Document | None = None  # HELD: the live claim; CLAIMED: an expired one taken over


def _applied(document: Document | None, fact: Fact, token: str, now: datetime) -> Applied:
    """What folding `fact` into the order `document` makes, and whether anything must be written."""
    current = Order.from_document(document) if document else None
    order, new = advance(copy.deepcopy(current), fact)
    claimed = _claim_publication(order, token, now)
    applied = Applied(order, new)
    applied.to_publish = [Change.from_data(order.changes[k]["change"]) for k in claimed]
    applied.in_flight = [
        k for k, entry in order.changes.items() if not entry["published"] and k not in claimed
    ]
    applied.writes = bool(new or claimed or current is None or _state(order) != _state(current))
    return applied


def _step(
    document: Document | None, fact: Fact, token: str, now: datetime
) -> tuple[list[Any], Applied]:
    applied = _applied(document, fact, token, now)
    if applied.order is None or not applied.writes:
        return [KEEP], applied
    return [_order_document(applied.order, document, now)], applied


def _state(order: Order) -> dict[str, Any]:
    """The order without its changes' claims: what a fact can change."""
    document = order.to_document()
    document["changes"] = {k: (v["change"], v["published"]) for k, v in order.changes.items()}
    return document


def _edit_changes(
    keys: Sequence[str], edit: Callable[[dict[str, Any]], None], now: Callable[[], datetime]
) -> Step[None]:
    """A transaction step that applies `edit` to each of the order's changes named in `keys`."""

    def step(documents: list[Document | None]) -> tuple[list[Any], None]:
        document = documents[0]
        if document is None:
            return [KEEP], None
        order = Order.from_document(document)
        for key in keys:
            entry = order.changes.get(key)
            if entry is not None:
                edit(entry)
        return [_order_document(order, document, now())], None

    return step


def _claim_publication(order: Order, token: str, now: datetime) -> list[str]:
    """Claim every unpublished change that no live claim holds; the keys now ours."""
    mine = []
    for key, entry in order.changes.items():
        if entry["published"]:
            continue
        held = entry.get("publishing")
        if held and held["token"] != token and held["expires_at"] > now:
            continue
        entry["publishing"] = {
            "token": token,
            "expires_at": now + timedelta(seconds=PUBLISH_CLAIM_SECONDS),
        }
        mine.append(key)
    return mine


def _order_document(order: Order, before: Document | None, now: datetime) -> Document:
    document = order.to_document()
    document["created_at"] = (before or {}).get("created_at", now)
    document["updated_at"] = now
    return document


def _now() -> datetime:
    return datetime.now(UTC)


def new_token() -> str:
    return secrets.token_hex(8)


def ledger_from_settings(settings: Settings) -> Ledger:
    """The configured ledger; Firestore's library is imported only when it is the one chosen."""
    if settings.order_ledger == "memory":
        from checkout.orders.ledger.memory import MemoryLedger

        return MemoryLedger(settings.webhook_dedupe_size)
    return firestore_ledger(settings)


def firestore_ledger(settings: Settings) -> FirestoreLedger:
    from checkout.orders.ledger.firestore import FirestoreLedger

    return FirestoreLedger(
        project=firestore_project(settings),
        database=settings.firestore_database,
        deployment_id=settings.deployment_id,
    )


def scoped_path(deployment_id: str, name: str, document_id: Callable[[str], str]) -> str:
    """The path of this deployment's collection `name`; a LEGACY_* name is the unscoped one."""
    if name.startswith(_LEGACY):
        return name.removeprefix(_LEGACY)
    return f"{SCOPE_ROOT}/{document_id(deployment_id)}/{name}"


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
