"""Publishing order changes: to the Pub/Sub topic (ORDER_EVENTS_TOPIC), or locally in-process.

One message per change, ordered by session id: docs/pubsub.md "The message"."""

# google.cloud.pubsub costs cold-start time (docs/performance.md#order-flow: measured on the first
# publish) and loads only then, with a topic.
# ruff: noqa: PLC0415

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from checkout.errors import RetryLater
from checkout.orders.model import Change

log = logging.getLogger("checkout.publisher")

# One publish, the library's own retries included: past it the webhook answers 503 (Stripe
# retries) and the change stays unpublished for the next call, or the reconciler, to publish.
PUBLISH_DEADLINE_S = 5.0
# Publish calls in flight at once per process (each blocks one thread for its round trip).
PUBLISH_THREADS = 8


class PublishFailed(RetryLater):
    """The change did not reach the topic in time; it stays recorded as unpublished."""


class Publisher(Protocol):
    name: str
    deadline: float  # the longest one publish takes, its retries included

    async def publish(
        self, change: Change, start_by: float | None = None, traceparent: str | None = None
    ) -> None:
        """Send one change; PublishFailed if it did not arrive, or could not start by `start_by`
        (`time.monotonic()`): past it, the claim to publish might lapse before it lands.
        `traceparent`: the trace it belongs to (default: the current request's)."""

    async def check(self) -> None:
        """PublishFailed unless changes can be published now."""

    def close(self) -> None: ...


class PubSubPublisher:
    """Publishes each change with one Publish call of Pub/Sub's API, made on first use (after
    the fork), and bounded: the call's own deadline and retries end within PUBLISH_DEADLINE_S.

    Not the library's batching publisher: its futures outlive an outage (measured here: still
    pending after 30 s with the emulator down, whatever its retry settings), and one that lands
    after we gave up would publish the change a second time. One call per change keeps "given
    up" final. `PUBSUB_EMULATOR_HOST` (Google's standard variable) points it at the emulator.
    """

    name = "pubsub"

    def __init__(self, topic: str, deadline: float = PUBLISH_DEADLINE_S) -> None:
        self.topic = topic
        self.deadline = deadline
        self._api: Any = None
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(PUBLISH_THREADS, thread_name_prefix="publish")

    def _publisher_api(self) -> Any:
        with self._lock:
            if self._api is None:
                from google.cloud import pubsub_v1

                self._api = pubsub_v1.PublisherClient().api
            return self._api

    async def publish(
        self, change: Change, start_by: float | None = None, traceparent: str | None = None
    ) -> None:
        from checkout.logs import current_traceparent

        loop = asyncio.get_running_loop()
        trace = traceparent or current_traceparent()
        try:
            await loop.run_in_executor(self._threads, self._publish, change, start_by, trace)
        except Exception as error:
            raise PublishFailed(
                f"publishing {change.change_id} to {self.topic} failed: {_describe(error)}"
            ) from error

    def _publish(self, change: Change, start_by: float | None, traceparent: str | None) -> None:
        from google.api_core import retry
        from google.cloud import pubsub_v1

        # Checked here, on the publishing thread, after any wait for one: a publish that starts
        # later could land after another request took the change over and published it too.
        if start_by is not None and time.monotonic() > start_by:
            raise TimeoutError("too late to publish within this request's claim")

        message = pubsub_v1.types.PubsubMessage(
            data=json.dumps(change.data(), separators=(",", ":")).encode(),
            # The trace of the request that made the change: the worker logs under it too.
            attributes={
                **change.attributes(),
                **({"traceparent": traceparent} if traceparent else {}),
            },
            ordering_key=change.session_id,
        )
        budget = retry.Retry(initial=0.1, maximum=1.0, timeout=self.deadline * 0.6)
        self._publisher_api().publish(
            topic=self.topic, messages=[message], timeout=self.deadline * 0.4, retry=budget
        )

    async def check(self) -> None:
        """Raise PublishFailed unless the topic exists and may be reached (the doctor's check)."""

        def get_topic() -> None:
            self._publisher_api().get_topic(topic=self.topic, timeout=self.deadline, retry=None)

        try:
            await asyncio.get_running_loop().run_in_executor(self._threads, get_topic)
        except Exception as error:
            raise PublishFailed(f"topic {self.topic}: {_describe(error)}") from error

    def close(self) -> None:
        self._threads.shutdown(wait=False)


class InProcessPublisher:
    """No topic (local development): each change goes to this process's worker, after the answer.

    `publish` queues the change on the current request (`after_response`), and the API runs the
    queue once the response is sent; outside a request (an operator command) it delivers at once.
    Never on Cloud Run, where the CPU is throttled after a response (config refuses it).
    """

    name = "in-process"
    deadline = 0.0

    def __init__(
        self,
        deliver: Callable[[Change], Awaitable[object]],
        undo: Callable[[Change], Awaitable[None]],
    ) -> None:
        self._deliver = deliver
        self._undo = undo

    async def publish(
        self, change: Change, start_by: float | None = None, traceparent: str | None = None
    ) -> None:
        from checkout.request_context import current_request

        request = current_request.get()
        if request is None or request.delivery:  # an operator command, or the worker
            await self._deliver(change)
            return
        request.after_response.append(lambda: self._deliver_or_undo(change))

    async def _deliver_or_undo(self, change: Change) -> None:
        """A failed delivery makes the change unpublished again, as a nack would: the next
        status call or webhook for the order (or `reconcile`) hands it over once more."""
        try:
            await self._deliver(change)
        except Exception:  # logged by the worker
            await self._undo(change)
            raise

    async def check(self) -> None:
        return None

    def close(self) -> None:
        return None


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:300]
