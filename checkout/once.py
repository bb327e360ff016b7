"""Run an action once per burst of concurrent callers with one key (SingleFlight)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Concurrent calls with one key share one attempt and its outcome; nothing is remembered.

    Coroutines call `run`: the attempt runs as its own task, so a caller that goes away (a client
    that hung up) does not cancel it for the others who are waiting on it. Threads call
    `run_blocking`: the first runs the attempt, the others block until it ends. `waiter_error`
    turns the attempt's failure into what each waiter raises (a copy each: one instance raised in
    many tasks or threads at once tangles their tracebacks); by default, or when it returns the
    same exception, they share it.
    """

    def __init__(
        self, waiter_error: Callable[[BaseException], BaseException] | None = None
    ) -> None:
        self._flights: dict[Hashable, asyncio.Task[T]] = {}
        self._blocking: dict[Hashable, Future[T]] = {}
        self._lock = threading.Lock()
        self._waiter_error = waiter_error

    async def run(self, key: Hashable, action: Callable[[], Awaitable[T]]) -> T:
        return await self.join(key, action)

    def join(self, key: Hashable, action: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        """`run`, with the attempt under way (`key in self`) before this returns its outcome."""
        flight = self._flights.get(key)
        # A flight of another event loop (one stopped with it pending) could never be awaited.
        if flight is None or flight.get_loop() is not asyncio.get_running_loop():
            flight = asyncio.ensure_future(action())
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._land(key, done))
        return self._outcome(flight)

    async def _outcome(self, flight: asyncio.Task[T]) -> T:
        try:
            return await asyncio.shield(flight)
        except Exception as error:
            self._raise_for_waiter(error)
            raise

    def run_blocking(self, key: Hashable, action: Callable[[], T]) -> T:
        with self._lock:
            shared = self._blocking.get(key)
            leader = shared is None
            if shared is None:
                shared = self._blocking[key] = Future()
        if not leader:
            try:
                return shared.result()
            except BaseException as error:
                self._raise_for_waiter(error)
                raise
        try:
            result = action()
        except BaseException as error:
            self._end(key, shared)
            shared.set_exception(error)
            raise
        self._end(key, shared)
        shared.set_result(result)
        return result

    def _raise_for_waiter(self, error: BaseException) -> None:
        """Raise what `waiter_error` makes of the attempt's error, if that is another one."""
        mine = error if self._waiter_error is None else self._waiter_error(error)
        if mine is not error:
            raise mine from None

    def _end(self, key: Hashable, shared: Future[T]) -> None:
        with self._lock:
            if self._blocking.get(key) is shared:
                del self._blocking[key]

    def _land(self, key: Hashable, flight: asyncio.Task[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # every caller may have gone: the error is theirs, not the loop's

    def __contains__(self, key: Hashable) -> bool:
        """An attempt with this key is under way."""
        return key in self._flights or key in self._blocking

    def __len__(self) -> int:
        return len(self._flights) + len(self._blocking)
