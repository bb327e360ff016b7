"""Run an action once per key (an event id, a session id), even when duplicates arrive together;
or once per burst of concurrent callers (SingleFlight)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


# How long a caller waits, by default, for an attempt to finish before it gives up (StillRunning).
DEFAULT_WAIT_S = 60.0


class StillRunning(Exception):
    """The key's attempt did not finish within the caller's wait; it goes on without them."""


class OncePerKey:
    """Remembers which keys' actions succeeded, in bounded memory (least recently seen go first).

    An attempt runs as its own task. Concurrent callers with one key share it; each waits for it
    at most its own `wait` (then StillRunning: it goes on, and its outcome is remembered), and a
    caller that goes away does not cancel it for the others. A failure is never remembered and
    reaches the caller who started the attempt; a caller who was waiting on it then tries itself,
    so that a retry (Stripe's, or the next status call) can still succeed. For coroutines on one
    event loop: the bookkeeping between two awaits cannot interleave, so it needs no lock.
    """

    def __init__(self, max_keys: int) -> None:
        self._max_keys = max_keys
        self._done: OrderedDict[str, None] = OrderedDict()
        self._running: dict[str, asyncio.Future[None]] = {}

    async def run(
        self,
        key: str,
        action: Callable[[], Awaitable[None]],
        *,
        wait: float = DEFAULT_WAIT_S,
        wait_for_others: float | None = None,
    ) -> bool:
        """Await `action()` unless `key` already succeeded; True if this call's attempt did it.

        Waits at most `wait` seconds in all; for an attempt another caller started, at most
        `wait_for_others` (default: `wait`; 0: not at all). StillRunning when time is up.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        others_deadline = deadline if wait_for_others is None else loop.time() + wait_for_others
        while True:
            if key in self._done:
                self._done.move_to_end(key)
                return False
            attempt = self._running.get(key)
            mine = attempt is None
            if attempt is None:
                attempt = self._running[key] = asyncio.ensure_future(self._attempt(key, action))
                attempt.add_done_callback(_seen)
            elif others_deadline <= loop.time():
                raise StillRunning(f"{key} is being handled by another request")
            try:
                async with asyncio.timeout_at(deadline if mine else others_deadline):
                    await asyncio.shield(attempt)
            except TimeoutError:
                raise StillRunning(f"{key} is still being handled") from None
            except Exception:
                if mine:
                    raise
                continue  # their attempt failed: our turn
            if mine:
                return True

    async def _attempt(self, key: str, action: Callable[[], Awaitable[None]]) -> None:
        try:
            await action()
        finally:  # before any waiter resumes: a failed key is free for the next attempt
            del self._running[key]
        self._done[key] = None
        while len(self._done) > self._max_keys:
            self._done.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._done

    def running(self, key: str) -> bool:
        return key in self._running


def _seen(attempt: asyncio.Future[None]) -> None:
    # Every waiter may have stopped waiting: the failure was reported where it happened.
    if not attempt.cancelled():
        attempt.exception()


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
