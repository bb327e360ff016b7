"""The ledger's outages logged once per burst of failures, not once per request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

_ledger_log = logging.getLogger("checkout.ledger")


class OutageLog:
    """Logs that a dependency (the ledger) is unreachable once per burst of failures.

    A burst ends with a success (`checkout_ledger_recovered`, with the count) or with
    `quiet_seconds` without a failure; the next failure then logs again.
    """

    def __init__(
        self, quiet_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._quiet = quiet_seconds
        self._clock = clock
        self._last_failure: float | None = None
        self._failures = 0

    def failed(self, error: Exception, fallback: str) -> None:
        now = self._clock()
        if self._last_failure is None or now - self._last_failure > self._quiet:
            fields = {"detail": str(error)[:500], "fallback": fallback}
            _ledger_log.warning("checkout_ledger_degraded", extra={"fields": fields})
            self._failures = 0
        self._failures += 1
        self._last_failure = now

    @property
    def ongoing(self) -> bool:
        """The last call failed, and none has succeeded since."""
        return self._last_failure is not None

    def succeeded(self) -> None:
        if self._last_failure is not None:
            fields = {"failed_requests": self._failures}
            _ledger_log.info("checkout_ledger_recovered", extra={"fields": fields})
            self._last_failure, self._failures = None, 0
