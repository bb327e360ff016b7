"""The in-memory ledger: this process's documents, bounded (least recently used go first).

One instance and local development only: docs/ledger.md."""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from checkout.orders.ledger import KEEP, Document, Ledger, R, Step


class MemoryLedger(Ledger):
    name = "memory"

    def __init__(self, max_entries: int) -> None:
        super().__init__()
        self._max_entries = max_entries
        self._collections: dict[str, OrderedDict[str, Document]] = {}
        # The claim renewer runs on a thread of its own (orders/delivery.py): each primitive is
        # one critical section, with no await inside.
        self._lock = threading.RLock()

    async def _transact(self, refs: Sequence[tuple[str, str]], step: Step[R]) -> R:
        # No await between the reads and the writes, and the lock: nothing interleaves.
        with self._lock:
            return self._transact_now(refs, step)

    def _transact_now(self, refs: Sequence[tuple[str, str]], step: Step[R]) -> R:
        documents = [copy.deepcopy(self._collection(c).get(k)) for c, k in refs]
        writes, result = step(documents)
        for (collection, key), write in zip(refs, writes, strict=True):
            if write is not KEEP:
                self._put(collection, key, copy.deepcopy(write))
        return result

    async def _get(self, collection: str, key: str, *, quick: bool = False) -> Document | None:
        with self._lock:
            return copy.deepcopy(self._collection(collection).get(key))

    async def _create(self, collection: str, key: str, document: Document) -> bool:
        with self._lock:
            if key in self._collection(collection):
                return False
            self._put(collection, key, copy.deepcopy(document))
            return True

    async def _set(self, collection: str, key: str, document: Document) -> None:
        with self._lock:
            self._put(collection, key, copy.deepcopy(document))

    async def _where(self, collection: str, name: str, value: object, limit: int) -> list[Document]:
        with self._lock:
            found = [d for d in self._collection(collection).values() if d.get(name) == value]
            return copy.deepcopy(found[:limit])

    async def _where_all(
        self, collection: str, name: str, value: object, page: int
    ) -> list[Document]:
        with self._lock:
            found = [d for d in self._collection(collection).values() if d.get(name) == value]
            return copy.deepcopy(found)

    def _collection(self, name: str) -> OrderedDict[str, Document]:
        return self._collections.setdefault(name, OrderedDict())

    def _put(self, collection: str, key: str, document: dict[str, Any]) -> None:
        entries = self._collection(collection)
        entries[key] = document
        entries.move_to_end(key)
        while len(entries) > self._max_entries:
            entries.popitem(last=False)
