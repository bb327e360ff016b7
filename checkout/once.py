"""Run an action once per key (an event id, a session id), even when duplicates arrive together."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable


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
