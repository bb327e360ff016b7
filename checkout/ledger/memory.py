"""The in-memory ledger: this process's orders and events, bounded (least recently used go first).

Right for one instance and for local development. With several instances each keeps its own, so a
session could be fulfilled once per instance: the deploy uses the Firestore ledger.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from checkout.ledger import CLAIM_WAIT_SECONDS, Deliver, Ledger
from checkout.session import SessionStatus, settled


class MemoryLedger(Ledger):
    name = "memory"

    def __init__(self, max_entries: int, claim_wait_seconds: float = CLAIM_WAIT_SECONDS) -> None:
        super().__init__(claim_wait_seconds)
        self._max_entries = max_entries
        self._orders: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._events: OrderedDict[str, dict[str, Any]] = OrderedDict()

    async def _fulfil(
        self, session: SessionStatus, deliver: Deliver, event_id: str | None, give_up: float
    ) -> bool:
        # One event loop, and fulfil_once lets one attempt per session in at a time: no claim.
        order = self._orders.get(session.session_id)
        if order is not None and order["fulfilled_at"] is not None:
            self._touch(session.session_id, event_id)
            return False
        await deliver()
        order = self._order(session, final=True, event_id=event_id)
        order["fulfilled_at"] = _now()
        return True

    async def record(
        self, session: SessionStatus, *, event_id: str | None = None, final: bool = False
    ) -> None:
        current = self._orders.get(session.session_id)
        if current is not None and current["final"] and not (final or session.terminal):
            self._touch(session.session_id, event_id)  # an older status arriving late
            return
        self._order(session, final=final, event_id=event_id)

    async def settled_status(self, session_id: str) -> SessionStatus | None:
        return settled(session_id, self._orders.get(session_id))

    async def event_handled(self, event_id: str) -> bool:
        return event_id in self._events

    async def mark_event_handled(self, event_id: str, kind: str, session_id: str | None) -> None:
        self._events[event_id] = {"type": kind, "session_id": session_id, "handled_at": _now()}
        self._events.move_to_end(event_id)
        _trim(self._events, self._max_entries)

    async def order(self, session_id: str) -> dict[str, Any] | None:
        """The stored record of a session (a copy), shaped like the Firestore ledger's document."""
        order = self._orders.get(session_id)
        return None if order is None else {**order, "event_ids": list(order["event_ids"])}

    def _order(
        self, session: SessionStatus, *, final: bool, event_id: str | None
    ) -> dict[str, Any]:
        now = _now()
        order = self._orders.get(session.session_id)
        if order is None:
            order = {"created_at": now, "fulfilled_at": None, "event_ids": []}
            self._orders[session.session_id] = order
        order.update(session.order_fields(final=final), updated_at=now)
        self._touch(session.session_id, event_id)
        return order

    def _touch(self, session_id: str, event_id: str | None) -> None:
        order = self._orders[session_id]
        if event_id is not None and event_id not in order["event_ids"]:
            order["event_ids"].append(event_id)
            order["updated_at"] = _now()
        self._orders.move_to_end(session_id)
        _trim(self._orders, self._max_entries)


def _trim(entries: OrderedDict[str, Any], limit: int) -> None:
    while len(entries) > limit:
        entries.popitem(last=False)


def _now() -> datetime:
    return datetime.now(UTC)
