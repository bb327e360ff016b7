"""Idempotent requests exactly as Stripe documents them (docs.stripe.com/api/idempotent_requests).

Saved first results, replays, concurrent duplicates: docs/emulator.md "Idempotency"."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

from devtools.stripe_emulator.state import StripeEmulatorError, _Response

# How long a held execution (tests' `hold`) waits at most before it goes on by itself.
HOLD_LIMIT_SECONDS = 30.0


class _Saved(NamedTuple):
    fingerprint: tuple[str, bytes]  # path and raw body: stripe-python encodes params stably
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]  # what the answer carried beyond Request-Id
    request_id: str


class IdempotencyStore:
    """Saved first results and keys executing now; the emulator's lock guards both."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._saved: dict[tuple[bool, str], _Saved] = {}
        self._executing: set[tuple[bool, str]] = set()
        self._open = threading.Event()
        self._open.set()

    def keys(self) -> list[str]:
        """The keys saved so far, in the order first seen (the caller holds no lock)."""
        with self._lock:
            return [key for (_livemode, key) in self._saved]

    def executing(self) -> list[str]:
        with self._lock:
            return [key for (_livemode, key) in self._executing]

    def hold(self) -> None:
        """Keyed executions wait (at most HOLD_LIMIT_SECONDS) until `release`: tests' 409s."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def run(
        self,
        scope: tuple[bool, str],
        fingerprint: tuple[str, bytes],
        request_id: str,
        execute: Callable[[], _Response],
        error_response: Callable[[StripeEmulatorError], _Response],
    ) -> _Response:
        """Answer a keyed request: replay its saved result, refuse a concurrent one, or run it;
        a StripeEmulatorError from `execute` is saved like a success (docs/emulator.md)."""
        key = scope[1]
        with self._lock:
            saved = self._saved.get(scope)
            if saved is None and scope in self._executing:
                raise _concurrent(key)
            if saved is None:
                self._executing.add(scope)
        if saved is not None:
            return _replay(saved, fingerprint, key, request_id)
        try:
            self._open.wait(HOLD_LIMIT_SECONDS)
            try:
                status, body, headers = execute()
            except StripeEmulatorError as err:
                status, body, headers = error_response(err)
            extra = tuple((name, value) for name, value in headers if name != "Request-Id")
            with self._lock:
                self._saved[scope] = _Saved(fingerprint, status, body, extra, request_id)
        finally:
            with self._lock:
                self._executing.discard(scope)
        return status, body, headers


def _replay(saved: _Saved, fingerprint: tuple[str, bytes], key: str, request_id: str) -> _Response:
    if saved.fingerprint != fingerprint:
        raise StripeEmulatorError(
            400,
            "Keys for idempotent requests can only be used with the same parameters they were "
            f"first used with. Try using a key other than '{key}' if you meant to execute a "
            "different request.",
            type="idempotency_error",
        )
    headers = [
        ("Request-Id", request_id),
        *saved.headers,
        ("Idempotent-Replayed", "true"),
        ("Original-Request", saved.request_id),
    ]
    return saved.status, saved.body, headers


def _concurrent(key: str) -> StripeEmulatorError:
    return StripeEmulatorError(
        409,
        "There is currently another in-progress request using this Idempotent Key (that "
        "probably means you submitted twice, and the other request is still going through): "
        f"{key}. Please try again later.",
        type="idempotency_error",
    )
