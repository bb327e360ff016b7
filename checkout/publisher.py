"""Publishing order changes: to the Pub/Sub topic (ORDER_EVENTS_TOPIC), or locally in-process.

One message per change: data is the change's JSON (checkout/order_change.schema.json), attributes
`type`, `change_id` and `session_id`, and the ordering key is the session id, so one order's
changes reach a subscription with message ordering in the order they were published.
"""

# google.cloud.pubsub costs cold-start time (docs/performance.md) and loads only with a topic.
# ruff: noqa: PLC0415

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from checkout.orders import Change

if TYPE_CHECKING:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

log = logging.getLogger("checkout.publisher")

# One publish, the library's own retries included: past it the webhook answers 503 (Stripe
# retries) and the change stays unpublished for the next call, or the reconciler, to publish.
PUBLISH_DEADLINE_S = 5.0


class PublishFailed(Exception):
    """The change did not reach the topic in time; it stays recorded as unpublished."""


class Publisher(Protocol):
    name: str

    async def publish(self, change: Change) -> None:
        """Send one change; PublishFailed if it did not arrive."""

    def close(self) -> None: ...


class PubSubPublisher:
    """google-cloud-pubsub's publisher with message ordering, made on first use (after the fork).

    `PUBSUB_EMULATOR_HOST` (Google's standard variable) points it at the emulator.
    """

    name = "pubsub"

    def __init__(self, topic: str, deadline: float = PUBLISH_DEADLINE_S) -> None:
        self.topic = topic
        self._deadline = deadline
        self._client: pubsub_v1.PublisherClient | None = None
        self._lock = threading.Lock()

    def _publisher(self) -> pubsub_v1.PublisherClient:
        with self._lock:
            if self._client is None:
                from google.api_core import retry
                from google.cloud import pubsub_v1  # type: ignore[attr-defined]

                options = pubsub_v1.types.PublisherOptions(
                    enable_message_ordering=True,
                    retry=retry.Retry(initial=0.1, maximum=1.0, timeout=self._deadline),
                    timeout=self._deadline,
                )
                # One change at a time: send at once rather than wait to fill a batch.
                batch = pubsub_v1.types.BatchSettings(max_messages=1, max_latency=0.001)
                self._client = pubsub_v1.PublisherClient(batch, publisher_options=options)
            return self._client

    async def publish(self, change: Change) -> None:
        client = self._publisher()
        data = json.dumps(change.data(), separators=(",", ":")).encode()
        try:
            future = client.publish(
                self.topic, data, ordering_key=change.session_id, **change.attributes()
            )
            async with asyncio.timeout(self._deadline + 1.0):
                await asyncio.wrap_future(future)
        except Exception as error:
            # A failed publish pauses its ordering key; let the next attempt go through.
            client.resume_publish(self.topic, change.session_id)
            raise PublishFailed(
                f"publishing {change.change_id} to {self.topic} failed: {_describe(error)}"
            ) from error

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.stop()
                self._client = None


class InProcessPublisher:
    """No topic (local development): each change goes to this process's worker, after the answer.

    `publish` queues the change on the current request (`after_response`), and the API runs the
    queue once the response is sent; outside a request (an operator command) it delivers at once.
    Never on Cloud Run, where the CPU is throttled after a response (config refuses it).
    """

    name = "in-process"

    def __init__(self, deliver: Callable[[Change], Awaitable[object]]) -> None:
        self._deliver = deliver

    async def publish(self, change: Change) -> None:
        from checkout.logs import current_request

        request = current_request.get(None)
        if request is None:
            await self._deliver(change)
            return
        request.setdefault("after_response", []).append(lambda: self._deliver(change))

    def close(self) -> None:
        return None


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:300]
