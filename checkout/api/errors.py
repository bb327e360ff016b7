"""Our exceptions as the API's answers: the one table, applied where app.py makes an answer."""

from __future__ import annotations

from checkout.errors import (
    ApiError,
    CheckoutError,
    IdempotencyConflict,
    ProviderBusy,
    ProviderError,
    ProviderUnavailable,
    ProviderUnreachable,
    RetryLater,
    SessionNotFound,
    StripeMisconfigured,
    api_error,
)
from checkout.orders.ledger import LedgerUnavailable
from checkout.orders.publisher import PublishFailed
from checkout.orders.recorder import PublicationInProgress

# An exception answers the code of the first of its classes (most specific first) found here.
ANSWERS: dict[type[CheckoutError], str] = {
    SessionNotFound: "session_not_found",
    IdempotencyConflict: "idempotency_conflict",
    ProviderBusy: "payment_provider_busy",
    ProviderUnreachable: "payment_provider_unreachable",
    ProviderError: "payment_provider_error",
    ProviderUnavailable: "payment_provider_unavailable",
    StripeMisconfigured: "payment_configuration_error",
    LedgerUnavailable: "ledger_unavailable",
    PublishFailed: "order_events_unavailable",
    PublicationInProgress: "event_in_progress",
    # Any other part away for now: 503 with Retry-After all the same.
    RetryLater: "payment_provider_unavailable",
}


def api_error_for(error: Exception) -> ApiError | None:
    """The answer for an exception: itself if an ApiError, else its class's; None for a bug."""
    if isinstance(error, ApiError):
        return error
    for kind in type(error).__mro__:
        code = ANSWERS.get(kind)
        if code is not None:
            return api_error(code, str(error))
    return None
