"""In-process cache of session statuses, so polling frontends do not spend Stripe's rate limit."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

# A paid order is not final (a refund or a dispute may follow): its cached answer is re-read from
# the ledger (never from Stripe) after this long, well within the 60 s every instance must meet.
PAID_TTL_S = 20.0


class StatusCache:
    """Bounded LRU of status answers, kept as long as the order's state allows (docs/ledger.md),
    so polling frontends do not spend Stripe's rate limit; its methods never await or block."""

    def __init__(
        self,
        max_size: int,
        open_ttl_ms: int = 0,
        clock: Callable[[], float] = time.monotonic,
        paid_ttl: float = PAID_TTL_S,
    ) -> None:
        self._max_size = max_size
        self._open_ttl = open_ttl_ms / 1000.0
        self._paid_ttl = paid_ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[dict[str, Any], float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None:
                return None
            answer, expires = entry
            if expires is not None and self._clock() >= expires:
                del self._entries[session_id]
                return None
            self._entries.move_to_end(session_id)
            return dict(answer)

    def put(self, session_id: str, answer: dict[str, Any], *, final: bool) -> None:
        """Keep a status answer: for good if `final`, else as long as its outcome allows."""
        if self._max_size == 0:
            return
        if final:
            expires = None
        elif answer.get("outcome") == "open":
            if self._open_ttl <= 0:
                return
            expires = self._clock() + self._open_ttl
        elif answer.get("outcome") == "processing":
            return  # a delayed payment settles by an event: ask the ledger or Stripe again
        else:
            expires = self._clock() + self._paid_ttl
        with self._lock:
            held = self._entries.get(session_id)
            # A read of Stripe that started before the payment and ended after another request
            # cached the settled answer: that older `open` must not replace it.
            if answer.get("outcome") == "open" and held is not None and _settled(held, self._clock):
                return
            self._entries[session_id] = (dict(answer), expires)
            self._entries.move_to_end(session_id)
            while len(self._entries) > self._max_size:
                self._entries.popitem(last=False)

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._entries.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._entries)


def _settled(entry: tuple[dict[str, Any], float | None], clock: Callable[[], float]) -> bool:
    """A cached answer past `open`, not yet expired."""
    answer, expires = entry
    return answer.get("outcome") != "open" and (expires is None or clock() < expires)


class NotFoundCache:
    """Session ids Stripe did not know (a guess or a typo: ours come from Stripe), remembered for
    `ttl` seconds in bounded memory, so asking again spends no rate limit."""

    def __init__(
        self, max_size: int, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_size = max_size
        self._ttl = ttl
        self._clock = clock
        self._expiries: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, session_id: object) -> bool:
        if not isinstance(session_id, str):
            return False
        expires = self._expiries.get(session_id)
        if expires is None:
            return False
        if self._clock() >= expires:
            del self._expiries[session_id]
            return False
        return True

    def add(self, session_id: str) -> None:
        if self._max_size == 0:
            return
        self._expiries.pop(session_id, None)
        self._expiries[session_id] = self._clock() + self._ttl
        while len(self._expiries) > self._max_size:
            self._expiries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._expiries)


class Rechecks:
    """Which polled paid orders to read again from Stripe now (a refund whose webhook never came):
    each at most once per `period` (0: never), `per_minute` in all (docs/ledger.md)."""

    def __init__(
        self,
        max_size: int,
        period: float,
        per_minute: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_size = max_size
        self._period = period
        self._per_minute = per_minute
        self._clock = clock
        self._checked: OrderedDict[str, float] = OrderedDict()
        self._tokens = float(per_minute)
        self._filled = clock()

    def due(self, session_id: str) -> bool:
        """True when `session_id` is to be read from Stripe now (and counted as read)."""
        if self._period <= 0 or self._per_minute <= 0 or self._max_size == 0:
            return False
        now = self._clock()
        last = self._checked.get(session_id)
        if last is None:
            self._remember(session_id, now)  # its period starts at this instance's first poll
            return False
        if now - last < self._period:
            return False
        self._tokens = min(
            float(self._per_minute), self._tokens + (now - self._filled) * self._per_minute / 60
        )
        self._filled = now
        if self._tokens < 1:
            return False  # over the share: this order waits for a later poll
        self._tokens -= 1
        self._remember(session_id, now)
        return True

    def _remember(self, session_id: str, now: float) -> None:
        self._checked.pop(session_id, None)
        self._checked[session_id] = now
        while len(self._checked) > self._max_size:
            self._checked.popitem(last=False)
