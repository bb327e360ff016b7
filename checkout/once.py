"""Run an action once per key (an event id, a session id), even when duplicates arrive together;
or once per burst of concurrent callers (SingleFlight)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class OncePerKey:
    """Remembers which keys' actions succeeded, in bounded memory (least recently seen go first).

    Concurrent callers with one key share one attempt: the others wait for it, and try themselves
    only if it failed. A failure is never remembered, so that a retry (Stripe's, or the next
    status call) can still succeed. For coroutines on one event loop: the bookkeeping between two
    awaits cannot interleave, so it needs no lock.
    """

    def __init__(self, max_keys: int) -> None:
        self._max_keys = max_keys
        self._done: OrderedDict[str, None] = OrderedDict()
        self._running: dict[str, asyncio.Event] = {}

    async def run(self, key: str, action: Callable[[], Awaitable[None]]) -> bool:
        """Await `action()` unless `key` already succeeded; True if this call ran it to success."""
        while True:
            if key in self._done:
                self._done.move_to_end(key)
                return False
            running = self._running.get(key)
            if running is None:
                break
            # Then look again: it succeeded (we are done) or failed (our turn). The attempt is
            # bounded by the action's own time limits (Stripe's budget, the fulfilment's).
            await running.wait()

        finished = self._running[key] = asyncio.Event()
        try:
            await action()
        except BaseException:  # a cancelled attempt is a failed one: the next caller tries
            del self._running[key]
            finished.set()
            raise
        del self._running[key]
        self._done[key] = None
        while len(self._done) > self._max_keys:
            self._done.popitem(last=False)
        finished.set()
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._done


class SingleFlight(Generic[T]):
    """Concurrent calls with one key share one attempt and its outcome; nothing is remembered.

    The attempt runs as its own task, so a caller that goes away (a client that hung up) does not
    cancel it for the others who are waiting on it.
    """

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Task[T]] = {}

    async def run(self, key: str, action: Callable[[], Awaitable[T]]) -> T:
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(action())
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._land(key, done))
        return await asyncio.shield(flight)

    def _land(self, key: str, flight: asyncio.Task[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # every caller may have gone: the error is theirs, not the loop's

    def __len__(self) -> int:
        return len(self._flights)
