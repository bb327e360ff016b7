"""The recorder: record a fact, then publish its changes under a claim that no publish outlasts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

from checkout.orders.ledger import PUBLISH_CLAIM_SECONDS
from checkout.orders.ledger.memory import MemoryLedger
from checkout.orders.model import session_fact
from checkout.orders.publisher import PublishFailed, PubSubPublisher
from checkout.orders.recorder import Recorder
from tests.pubsub_emulator import PubSub
from tests.support import a_session


def run(coroutine: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coroutine

    return asyncio.run(main())


@pytest.mark.pubsub
def test_a_publish_that_could_outlast_its_claim_is_not_started_and_the_change_waits(
    pubsub: PubSub,
) -> None:
    async def scenario() -> None:
        ledger = MemoryLedger(100)
        fact = session_fact(a_session(session_id="cs_test_a"), "pi_1")
        # A publish allowed as long as the claim itself could land after another request had
        # taken the change over and published it too: it must not start.
        too_slow = PubSubPublisher(pubsub.topic, deadline=PUBLISH_CLAIM_SECONDS)
        try:
            with pytest.raises(PublishFailed, match="too late to publish"):
                await Recorder(ledger, too_slow).record("cs_test_a", fact, event_id="evt_1")
        finally:
            too_slow.close()
        order = await ledger.order("cs_test_a")
        assert order is not None
        assert [c.change_id for c in order.unpublished()] == ["cs_test_a:paid"]
        assert "publishing" not in order.changes["paid"]  # released: the next call need not wait
        publisher = PubSubPublisher(pubsub.topic)
        try:
            assert await Recorder(ledger, publisher).publish_pending(order) == 1
        finally:
            publisher.close()

    run(scenario())
    (message,) = pubsub.messages(timeout=2.0, count=1)
    assert message.attributes["change_id"] == "cs_test_a:paid"
    assert pubsub.messages(timeout=0.5) == []
