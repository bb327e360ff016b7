"""Run an action once per key (an event id, a session id), even when duplicates arrive together."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable


class OncePerKey:
    """Remembers which keys' actions succeeded, in bounded memory (least recently seen go first).

    Concurrent callers with one key share one attempt: the others wait for it, and try themselves
    only if it failed. A failure is never remembered, so that a retry (Stripe's, or the next
    status call) can still succeed.
    """

    def __init__(self, max_keys: int) -> None:
        self._max_keys = max_keys
        self._done: OrderedDict[str, None] = OrderedDict()
        self._running: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def run(self, key: str, action: Callable[[], None]) -> bool:
        """Run `action` unless `key` already succeeded; True if this call ran it to success."""
        while True:
            with self._lock:
                if key in self._done:
                    self._done.move_to_end(key)
                    return False
                running = self._running.get(key)
                if running is None:
                    finished = self._running[key] = threading.Event()
            if running is None:
                break
            running.wait()  # then look again: it succeeded (we are done) or failed (our turn)

        try:
            action()
        except BaseException:
            with self._lock:
                del self._running[key]
            finished.set()
            raise
        with self._lock:
            del self._running[key]
            self._done[key] = None
            while len(self._done) > self._max_keys:
                self._done.popitem(last=False)
        finished.set()
        return True

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._done
