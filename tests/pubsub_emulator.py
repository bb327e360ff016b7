"""Fixtures for tests against Google's real Pub/Sub emulator (registered by conftest.py).

The emulator starts once per test session; each test gets its own project id, with the topic
`checkout-orders` and an ordered pull subscription on it already created, so no test sees
another's messages. Without gcloud or Java the tests skip with the reason, except in CI (`CI`
set), where they fail: CI must run them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devtools.pubsub_emulator import (
    PubSubApi,
    PubSubEmulator,
    decode_data,
    subscription_path,
    topic_path,
)
from tests.firestore_emulator import fresh_project, mark_users, running

TOPIC = "checkout-orders"
SUBSCRIPTION = "checkout-orders-test"


@dataclass(frozen=True)
class Message:
    """One pulled message, decoded: `data` is its JSON."""

    data: Any
    attributes: dict[str, str]
    ordering_key: str
    message_id: str
    publish_time: str


@dataclass(frozen=True)
class PubSub:
    """The running emulator, and this test's own project, topic and subscription on it."""

    emulator: PubSubEmulator
    project: str
    topic_id: str = TOPIC
    subscription_id: str = SUBSCRIPTION

    @property
    def host(self) -> str:
        return self.emulator.host

    @property
    def api(self) -> PubSubApi:
        return self.emulator.api

    @property
    def topic(self) -> str:
        return topic_path(self.project, self.topic_id)

    @property
    def subscription(self) -> str:
        return subscription_path(self.project, self.subscription_id)

    def env(self, **extra: str) -> dict[str, str]:
        """The variables that make the service publish to this test's topic.

        The full topic path, and no GOOGLE_CLOUD_PROJECT: the Firestore fixture's env sets that
        to its own project, and both can be merged into one service's environment.
        """
        return {"PUBSUB_EMULATOR_HOST": self.host, "ORDER_EVENTS_TOPIC": self.topic, **extra}

    def received(self, timeout: float = 5.0, count: int | None = None) -> list[dict[str, Any]]:
        """Pull and acknowledge raw received messages (`ackId`, `message`, `deliveryAttempt`).

        With `count`, returns once that many have arrived, after one more pull that would catch
        any extra already there; without it (or if they never come), after `timeout` seconds.
        So with `count`, `timeout` only bounds a hang: make it generous.
        """
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            batch = self.api.pull(self.project, self.subscription_id)
            self.api.acknowledge(self.project, self.subscription_id, [m["ackId"] for m in batch])
            found += batch
            if count is not None and len(found) >= count and not batch:
                return found
            if time.monotonic() >= deadline:
                return found
            if not batch:
                time.sleep(0.05)

    def messages(self, timeout: float = 5.0, count: int | None = None) -> list[Message]:
        """`received()`, decoded: data as JSON, attributes, ordering key and message id."""
        return [decoded(m["message"]) for m in self.received(timeout, count)]


def decoded(message: dict[str, Any]) -> Message:
    return Message(
        data=json.loads(decode_data(message)),
        attributes=dict(message.get("attributes", {})),
        ordering_key=message.get("orderingKey", ""),
        message_id=message["messageId"],
        publish_time=message["publishTime"],
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_users(items, "pubsub_emulator_server", pytest.mark.pubsub)


@pytest.fixture(scope="session")
def pubsub_emulator_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PubSubEmulator]:
    yield from running(PubSubEmulator, tmp_path_factory)


@pytest.fixture
def pubsub(
    request: pytest.FixtureRequest,
    pubsub_emulator_server: PubSubEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> PubSub:
    """The session's emulator, a fresh project id (PUBSUB_EMULATOR_HOST set here too), and in it
    the topic `checkout-orders` with an ordered pull subscription."""
    project = fresh_project(request, pubsub_emulator_server, "pubsub", monkeypatch)
    found = PubSub(pubsub_emulator_server, project)
    found.api.create_topic(found.project, TOPIC)
    found.api.create_subscription(found.project, SUBSCRIPTION, TOPIC, ordering=True)
    return found
