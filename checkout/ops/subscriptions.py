"""The order topic's subscriptions as the audit reads them: the worker's, its dead-letter policy,
and the dead letters waiting; found from the topic itself (docs/operations.md, the audit)."""

# google.cloud.pubsub loads only here, for an operator command: never on a request's path.
# ruff: noqa: PLC0415

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from checkout.errors import RetryLater
from checkout.orders.model import BadChange, Change

CALL_TIMEOUT_S = 10.0
PULL_BATCH = 100
# Dead letters read in one run, at most: the rest are read by the next run.
MAX_DEAD_LETTERS = 1000

T = TypeVar("T")


class SubscriptionsUnavailable(RetryLater):
    """Pub/Sub could not be asked about the topic's subscriptions."""


@dataclass(frozen=True)
class Subscription:
    name: str
    push_endpoint: str | None
    ack_deadline_seconds: int
    dead_letter_topic: str | None
    max_delivery_attempts: int
    dead_letter_subscriptions: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeadLetter:
    subscription: str
    ack_id: str
    change: Change | None  # None: not an order change (acknowledged as it is, and counted)
    published_at: datetime
    traceparent: str | None


@dataclass
class DeadLetters:
    """The backlog of the dead-letter subscriptions: how many, and the oldest's age."""

    count: int = 0
    oldest_age_seconds: float | None = None
    letters: list[DeadLetter] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        age = None if self.oldest_age_seconds is None else round(self.oldest_age_seconds, 1)
        return {"count": self.count, "oldest_age_seconds": age}


class TopicSubscriptions:
    """Pub/Sub's API for one topic's subscriptions, each call on a thread, bounded."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._publisher: Any = None
        self._subscriber: Any = None

    async def subscriptions(self) -> list[Subscription]:
        """Every subscription of the topic, with its dead-letter topic's own subscriptions."""
        return await self._call(self._subscriptions)

    async def dead_letters(self, subscriptions: list[Subscription]) -> DeadLetters:
        """Pull the dead-letter subscriptions' messages (leased, not acknowledged)."""
        names = sorted({d for s in subscriptions for d in s.dead_letter_subscriptions})
        return await self._call(lambda: self._pull_all(names))

    async def acknowledge(self, letter: DeadLetter) -> None:
        await self._call(
            lambda: self._subscriber_api().acknowledge(
                subscription=letter.subscription, ack_ids=[letter.ack_id], timeout=CALL_TIMEOUT_S
            )
        )

    async def put_back(self, letters: list[DeadLetter]) -> None:
        """Let dead letters go (ack deadline 0): a look that changes nothing (doctor)."""
        for letter in letters:
            await self._call(self._let_go_of(letter))

    def _let_go_of(self, letter: DeadLetter) -> Callable[[], None]:
        def let_go() -> None:
            self._subscriber_api().modify_ack_deadline(
                subscription=letter.subscription,
                ack_ids=[letter.ack_id],
                ack_deadline_seconds=0,
                timeout=CALL_TIMEOUT_S,
            )

        return let_go

    # -- on a thread ---------------------------------------------------------------------------

    async def _call(self, function: Callable[[], T]) -> T:
        try:
            return await asyncio.wait_for(asyncio.to_thread(function), CALL_TIMEOUT_S * 3)
        except Exception as error:
            detail = f"{type(error).__name__}: {error}"[:300]
            raise SubscriptionsUnavailable(f"Pub/Sub, topic {self.topic}: {detail}") from error

    def _publisher_api(self) -> Any:
        if self._publisher is None:
            from google.cloud import pubsub_v1

            self._publisher = pubsub_v1.PublisherClient()
        return self._publisher

    def _subscriber_api(self) -> Any:
        if self._subscriber is None:
            from google.cloud import pubsub_v1

            self._subscriber = pubsub_v1.SubscriberClient()
        return self._subscriber

    def _names(self, topic: str) -> list[str]:
        pages = self._publisher_api().list_topic_subscriptions(
            topic=topic, timeout=CALL_TIMEOUT_S, retry=None
        )
        return sorted(str(name) for name in pages)

    def _subscriptions(self) -> list[Subscription]:
        found = []
        for name in self._names(self.topic):
            raw = self._subscriber_api().get_subscription(
                subscription=name, timeout=CALL_TIMEOUT_S, retry=None
            )
            dead_topic = raw.dead_letter_policy.dead_letter_topic or None
            found.append(
                Subscription(
                    name=name,
                    push_endpoint=raw.push_config.push_endpoint or None,
                    ack_deadline_seconds=int(raw.ack_deadline_seconds),
                    dead_letter_topic=dead_topic,
                    max_delivery_attempts=int(raw.dead_letter_policy.max_delivery_attempts),
                    dead_letter_subscriptions=tuple(self._names(dead_topic)) if dead_topic else (),
                )
            )
        return found

    def _pull_all(self, names: list[str]) -> DeadLetters:
        backlog = DeadLetters()
        now = datetime.now(UTC)
        for name in names:
            while backlog.count < MAX_DEAD_LETTERS:
                # returnImmediately: a waiting pull on an empty subscription would hold the call.
                answer = self._subscriber_api().pull(
                    subscription=name,
                    max_messages=PULL_BATCH,
                    return_immediately=True,
                    timeout=CALL_TIMEOUT_S,
                    retry=None,
                )
                if not answer.received_messages:
                    break
                for received in answer.received_messages:
                    letter = _letter(name, received)
                    backlog.letters.append(letter)
                    backlog.count += 1
                    age = (now - letter.published_at).total_seconds()
                    backlog.oldest_age_seconds = max(age, backlog.oldest_age_seconds or 0.0)
        return backlog


def _letter(subscription: str, received: Any) -> DeadLetter:
    message = received.message
    attributes = dict(message.attributes)
    try:
        change: Change | None = Change.from_data(json.loads(bytes(message.data)))
    except (ValueError, BadChange, TypeError):
        change = None
    published = message.publish_time
    published_at = (
        datetime.fromtimestamp(published.timestamp(), UTC) if published else datetime.now(UTC)
    )
    return DeadLetter(
        subscription=subscription,
        ack_id=received.ack_id,
        change=change,
        published_at=published_at,
        traceparent=attributes.get("traceparent"),
    )
