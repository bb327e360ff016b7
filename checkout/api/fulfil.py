"""`fulfil_order`'s Pub/Sub push handler: one order change delivered, answered as the status
Pub/Sub acts on (2xx acknowledges; anything else redelivers, then dead-letters)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException

from checkout.api.app import CheckoutApi
from checkout.config import Settings, load_settings
from checkout.errors import ApiError, RetryLater
from checkout.logs import redact, trace_of, traceparent_of
from checkout.orders.delivery import (
    BadMessage,
    DeliverOrder,
    DeliveryFailed,
    DeliveryInProgress,
    change_in,
)
from checkout.orders.ledger import LedgerUnavailable
from checkout.request_context import RequestContext, current_request

worker_log = logging.getLogger("checkout.worker")


class FulfilApi:
    """`fulfil_order` for one process: the same Service as the API's, built on first use.

    Each CloudEvent carries one Pub/Sub message of the order topic. The answer is what Pub/Sub
    acts on: 2xx acknowledges it (delivered now, or before); anything else makes it redeliver
    later, and after the subscription's maximum attempts send it to the dead-letter topic.
    """

    def __init__(
        self, deliver: DeliverOrder | None = None, load: Callable[[], Settings] = load_settings
    ) -> None:
        self._api = CheckoutApi(deliver, load)

    async def handle(self, event_id: str, data: object) -> None:
        """Deliver one message's change; HTTPException (non-2xx) when Pub/Sub must retry."""
        started = time.perf_counter()
        fields: dict[str, Any] = {"ce_id": str(event_id)[:100]}
        status, outcome = 200, "delivered"
        # The change's trace (a message attribute): every record of this delivery joins it.
        context = RequestContext(request_id=fields["ce_id"], delivery=True)
        token = current_request.set(context)
        try:
            change = change_in(data)
            fields.update(change_id=change.change_id, type=change.type)
            runtime = self._api.runtime()
            attributes = _attributes_of(data)
            context.trace = trace_of(attributes, runtime.trace_project)
            context.traceparent = traceparent_of(attributes)
            if not await runtime.worker.deliver(change):
                outcome = "duplicate"
        except DeliveryInProgress:
            # Queued behind the run that holds the change or its order, which publishes it again
            # when it ends: acknowledged, so that a duplicate uses up none of Pub/Sub's attempts.
            outcome = "in_progress"
        except BadMessage as error:
            status, outcome = 400, "bad_message"
            fields["detail"] = redact(str(error))[:300]
        except ApiError as error:  # the settings are wrong: logged when the runtime was built
            status, outcome = 500, "misconfigured"
            fields["detail"] = error.code
        except DeliveryFailed as error:
            status, outcome = 500, "failed"
            fields["detail"] = redact(str(error))[:300]
        except RetryLater as error:  # the ledger (or another part) is away: Pub/Sub retries
            status = 503
            outcome = (
                "ledger_unavailable" if isinstance(error, LedgerUnavailable) else "unavailable"
            )
            fields["detail"] = redact(str(error))[:300]
        fields.update(
            outcome=outcome, status=status, latency=f"{time.perf_counter() - started:.6f}s"
        )
        level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
        try:
            worker_log.log(level, "fulfil_order %s", outcome, extra={"fields": fields})
        finally:
            current_request.reset(token)
        if status >= 300:
            raise HTTPException(status, outcome)

    def close(self) -> None:
        self._api.close()


def _attributes_of(data: object) -> dict[str, str]:
    message = data.get("message") if isinstance(data, dict) else None
    attributes = message.get("attributes") if isinstance(message, dict) else None
    if not isinstance(attributes, dict):
        return {}
    return {str(k): str(v) for k, v in attributes.items()}
