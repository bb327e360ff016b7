"""In-process cache of session statuses, so polling frontends do not spend Stripe's rate limit."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from checkout.session import SessionStatus


class StatusCache:
    """Bounded LRU. `complete`/`expired` never change, so they stay until evicted.

    Its methods never await and never block (a dict and a lock held for microseconds), so a
    coroutine calls them directly, and so can a worker thread.

    `open` is kept only when `open_ttl_ms` > 0 (an operator's opt-in): a customer who has just
    paid could otherwise be told `open` for up to that long.
    """

    def __init__(
        self, max_size: int, open_ttl_ms: int = 0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_size = max_size
        self._open_ttl = open_ttl_ms / 1000.0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[SessionStatus, float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: str) -> SessionStatus | None:
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None:
                return None
            status, expires = entry
            if expires is not None and self._clock() >= expires:
                del self._entries[session_id]
                return None
            self._entries.move_to_end(session_id)
            return status

    def put(self, status: SessionStatus, *, final: bool = False) -> None:
        """Keep `status` if it can no longer change (`final` says so when only the caller knows)."""
        if self._max_size == 0:
            return
        if final or status.terminal:
            expires = None
        elif self._open_ttl > 0:
            expires = self._clock() + self._open_ttl
        else:
            return
        with self._lock:
            current = self._entries.get(status.session_id)
            if current is not None and current[1] is None and expires is not None:
                # Stripe's reads can race: never let an older `open` replace a terminal status.
                return
            self._entries[status.session_id] = (status.public_only(), expires)
            self._entries.move_to_end(status.session_id)
            while len(self._entries) > self._max_size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class NotFoundCache:
    """Session ids Stripe did not know, remembered for `ttl` seconds in bounded memory.

    Create answers with an id only after Stripe has made the session, so an id Stripe does not
    know is a guess or a typo, and asking again would only spend the account's rate limit. The
    TTL bounds how long a mistake (an id of another account, read while misconfigured) lasts.
    """

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
