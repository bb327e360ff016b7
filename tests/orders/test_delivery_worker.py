"""fulfil_order: each order change delivered to DELIVER_ORDER once, never twice at the same time.

In-process tests drive `Worker` on the memory ledger; the live tests run two real
`functions-framework --target fulfil_order` processes on one Firestore emulator and POST them the
CloudEvents Eventarc would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from checkout.orders.delivery import (
    BadMessage,
    DeliveryFailed,
    DeliveryInProgress,
    Worker,
    change_in,
    deliver_order,
)
from checkout.orders.ledger import DELIVERIES, LedgerUnavailable
from checkout.orders.ledger.memory import MemoryLedger
from checkout.orders.model import Change, ChargeFact, OrderState, advance, session_fact
from tests.delivery_sink import deliveries
from tests.firestore_emulator import Firestore
from tests.support import CapturedLogs, LiveServer, a_session

TOPIC = "projects/demo-checkout/topics/checkout-orders"


def a_change(session_id: str = "cs_test_a") -> Change:
    _, (change,) = advance(None, session_fact(a_session(session_id=session_id), "pi_1"))
    return change


def run(coroutine: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coroutine

    return asyncio.run(main())


class Gate:
    """A deliver function that waits until the test opens it, and counts its runs."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.open = asyncio.Event()
        self.runs = 0
        self.fail_next = False

    async def __call__(self, change: Change) -> None:
        self.runs += 1
        self.started.set()
        await self.open.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the print shop is down")


class CountsRenewals(MemoryLedger):
    """The memory ledger, which sets `renewed` once it has renewed claims `wanted` times (made
    inside the test's event loop)."""

    def __init__(self, wanted: int) -> None:
        super().__init__(100)
        self.wanted = wanted
        self.renewals = 0
        self.renewed = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    async def renew_delivery(self, change_id: str, token: str, lease: float) -> bool:
        # Called on the renewer's own thread and loop: the event is set on the test's.
        renewed = await super().renew_delivery(change_id, token, lease)
        self.renewals += renewed
        if self.renewals >= self.wanted:
            self.loop.call_soon_threadsafe(self.renewed.set)
        return renewed


def test_a_delivery_that_outlives_its_lease_is_renewed_and_never_runs_twice_at_once():
    async def scenario() -> None:
        ledger = CountsRenewals(wanted=4)
        gate = Gate()
        worker = Worker(ledger, gate, lease_seconds=0.3)
        change = a_change()
        first = asyncio.ensure_future(worker.deliver(change))
        await gate.started.wait()
        record = await ledger.delivery(change.change_id)
        assert record is not None
        first_expiry = record["claim"]["expires_at"]
        # Four renewals, each a third of a lease after the one before (asyncio.sleep never wakes
        # early), so the first lease is over. Bounded generously: a hang, not a time.
        await asyncio.wait_for(ledger.renewed.wait(), 60)
        assert datetime.now(UTC) > first_expiry
        renewed = (await ledger.delivery(change.change_id))["claim"]["expires_at"]
        assert renewed > first_expiry
        with pytest.raises(DeliveryInProgress):
            await worker.deliver(change)  # Pub/Sub's redelivery, while the first still runs
        gate.open.set()
        assert await first is True
        assert await worker.deliver(change) is False  # and any later redelivery
        assert gate.runs == 1
        done = await ledger.delivery(change.change_id)
        assert done["delivered_at"] is not None and done["claim"] is None

    run(scenario())


def test_a_failed_delivery_is_released_and_the_redelivery_succeeds_once(logs: CapturedLogs):
    async def scenario() -> None:
        ledger = MemoryLedger(100)
        gate = Gate()
        gate.open.set()
        gate.fail_next = True
        worker = Worker(ledger, gate, lease_seconds=30)
        change = a_change()
        with pytest.raises(DeliveryFailed):
            await worker.deliver(change)
        record = await ledger.delivery(change.change_id)
        assert record["claim"] is None and record["delivered_at"] is None
        assert await worker.deliver(change) is True  # at once: no lease to wait out
        assert await worker.deliver(change) is False
        assert gate.runs == 2
        assert (await ledger.delivery(change.change_id))["attempts"] == 2

    run(scenario())
    [failed] = logs("checkout_delivery_failed")
    assert failed["detail"] == "RuntimeError: the print shop is down"


class LosesOneAnswer(MemoryLedger):
    """Writes the delivery record, then reports a timeout: the commit whose answer was lost."""

    armed = False

    async def _transact(self, refs: Any, step: Any) -> Any:
        result = await super()._transact(refs, step)
        if self.armed and refs[0][0] == DELIVERIES:
            document = await self._get(DELIVERIES, refs[0][1])
            if document and document.get("delivered_at") is not None:
                self.armed = False
                raise LedgerUnavailable("Firestore did not finish writing within 3 s")
        return result


@pytest.mark.slow
def test_a_success_whose_record_answer_is_lost_is_still_recorded_once(logs: CapturedLogs):
    async def scenario() -> None:
        ledger = LosesOneAnswer(100)
        ledger.armed = True
        calls: list[str] = []

        async def deliver(change: Change) -> None:
            calls.append(change.change_id)

        worker = Worker(ledger, deliver, lease_seconds=30)
        assert await worker.deliver(a_change()) is True
        assert not ledger.armed  # the lost answer did happen
        assert calls == ["cs_test_a:paid"]

    run(scenario())
    assert logs("checkout_delivered_twice") == []
    assert logs("checkout_delivery_unrecorded") == []


class TakenOverAtFirstRenewal(MemoryLedger):
    """Another worker holds the claim when ours is renewed: our lease lapsed unseen."""

    async def renew_delivery(self, change_id: str, token: str, lease: float) -> bool:
        document = await self._get(DELIVERIES, change_id)
        assert document is not None and document["claim"] is not None
        theirs = {**document["claim"], "owner": "another-worker", "token": "theirs"}
        await self._set(DELIVERIES, change_id, {**document, "claim": theirs})
        return await super().renew_delivery(change_id, token, lease)


def test_an_async_delivery_whose_claim_is_taken_over_is_cancelled_not_run_beside_it(
    logs: CapturedLogs,
):
    async def scenario() -> None:
        ledger = TakenOverAtFirstRenewal(100)
        cancelled = asyncio.Event()

        async def deliver(change: Change) -> None:
            try:
                await asyncio.Event().wait()  # runs until something stops it
            except asyncio.CancelledError:
                cancelled.set()
                raise

        worker = Worker(ledger, deliver, lease_seconds=0.3)
        change = a_change()
        with pytest.raises(DeliveryFailed):
            await worker.deliver(change)
        assert cancelled.is_set()
        record = await ledger.delivery(change.change_id)
        assert record is not None and record["delivered_at"] is None
        assert record["claim"]["token"] == "theirs"  # the takeover's claim is left alone

    run(scenario())
    assert [r["change_id"] for r in logs("checkout_claim_lost")] == ["cs_test_a:paid"]
    [failed] = logs("checkout_delivery_failed")
    assert failed["detail"].startswith("ClaimLost: ")


def test_the_default_delivery_logs_one_record_per_change(logs: CapturedLogs):
    async def scenario() -> None:
        worker = Worker(MemoryLedger(100), deliver_order, lease_seconds=30)
        change = a_change()
        assert await worker.deliver(change) is True
        assert await worker.deliver(change) is False

    run(scenario())
    [delivered] = logs("checkout_order_delivered")
    assert (delivered["type"], delivered["change_id"]) == ("order.paid", "cs_test_a:paid")
    assert delivered["metadata"] == {"imageId": "img_1"}


def message_for(change: Change | None, data: bytes | None = None) -> dict[str, Any]:
    raw = data if data is not None else json.dumps(change.data()).encode()
    attributes = change.attributes() if change is not None else {}
    return {
        "message": {
            "data": base64.b64encode(raw).decode(),
            "attributes": attributes,
            "messageId": "1234567",
            "publishTime": "2026-12-02T10:00:00Z",
            "orderingKey": change.session_id if change is not None else "",
        },
        "subscription": "projects/demo-checkout/subscriptions/eventarc-fulfil",
    }


def test_a_pubsub_cloudevent_carries_its_change():
    change = a_change()
    assert change_in(message_for(change)) == change


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({}, "no Pub/Sub message"),
        ({"message": {"data": "%%%"}}, "not base64 JSON"),
        (message_for(None, b"not json"), "not base64 JSON"),
        (message_for(None, b'{"type": "order.shipped"}'), "lacks"),
    ],
)
def test_a_message_without_a_change_is_refused(data, why):
    with pytest.raises(BadMessage, match=why):
        change_in(data)


def test_a_message_whose_attribute_disagrees_with_its_data_is_refused():
    message = message_for(a_change())
    message["message"]["attributes"]["change_id"] = "cs_test_b:paid"
    with pytest.raises(BadMessage, match="disagree"):
        change_in(message)


# -- live: two fulfil_order processes on one Firestore ------------------------------------------


def post_cloud_event(url: str, body: dict[str, Any], event_id: str = "1234567") -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "ce-id": event_id,
            "ce-source": f"//pubsub.googleapis.com/{TOPIC}",
            "ce-specversion": "1.0",
            "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
            "ce-time": "2026-12-02T10:00:00Z",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def claim_expiry(firestore: Firestore, change: Change) -> datetime:
    """When the claim on `change`'s delivery runs out, unless it is renewed."""
    from checkout.orders.ledger.firestore import FirestoreLedger

    ledger = FirestoreLedger(project=firestore.project, database="(default)", deployment_id="local")
    record = run(ledger.delivery(change.change_id))
    assert record is not None and record["claim"] is not None, record
    expires_at: datetime = record["claim"]["expires_at"]
    return expires_at


@contextlib.contextmanager
def worker_servers(
    firestore: Firestore, tmp_path: Path, count: int, **env: str
) -> Iterator[list[LiveServer]]:
    """`count` fulfil_order processes, all stopped on leaving, however the block ends."""
    full = {**firestore.env(), "DELIVERY_SINK": str(tmp_path / "sink"), **env}
    with contextlib.ExitStack() as servers:
        yield [
            servers.enter_context(
                LiveServer(full, tmp_path / f"worker-{n}.log", target="fulfil_order")
            )
            for n in range(count)
        ]


@pytest.mark.firestore
def test_two_workers_given_one_message_run_it_once_though_it_outlives_the_lease(
    firestore: Firestore, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    with worker_servers(
        firestore,
        tmp_path,
        2,
        DELIVER_ORDER="tests.delivery_sink:blocking_delivery",
        DELIVERY_RELEASE=str(release),
        DELIVERY_HOLD_SECONDS="60",  # until released; generous, it only bounds a broken test
        LEDGER_LEASE_SECONDS="1",
    ) as servers:
        change = a_change()
        body = message_for(change)
        statuses: dict[int, int] = {}

        def deliver_to(n: int) -> None:
            statuses[n] = post_cloud_event(servers[n].url, body)

        first = threading.Thread(target=deliver_to, args=(0,))
        first.start()
        sink = tmp_path / "sink"
        for _ in range(400):  # until the first delivery has started (bounded, generous)
            if deliveries(sink):
                break
            threading.Event().wait(0.05)
        expiry = claim_expiry(firestore, change)
        for _ in range(400):  # until that lease is over: one-sided, and bounded generously
            if datetime.now(UTC) > expiry:
                break
            threading.Event().wait(0.05)
        # The second worker gets it while the first runs, past the lease it took: held, so it is
        # queued behind the first run and acknowledged (no Pub/Sub attempt used up).
        assert post_cloud_event(servers[1].url, body) == 200
        release.touch()
        first.join(timeout=60)
        assert statuses[0] == 200
        # Redeliveries later, to both: acknowledged, not run again.
        assert [post_cloud_event(s.url, body) for s in servers] == [200, 200]
        runs = deliveries(sink)
        assert [what for _, _, what, _ in runs] == ["start", "done"]
        outcomes = [
            record["outcome"]
            for server in servers
            for record in map(json.loads, server.logs().splitlines())
            if record.get("message", "").startswith("fulfil_order")
        ]
        assert sorted(outcomes) == ["delivered", "duplicate", "duplicate", "in_progress"]


@pytest.mark.firestore
def test_a_delivery_that_fails_once_answers_500_then_the_redelivery_succeeds_once(
    firestore: Firestore, tmp_path: Path
) -> None:
    with worker_servers(
        firestore, tmp_path, 1, DELIVER_ORDER="tests.delivery_sink:fails_the_first_time"
    ) as (server,):
        body = message_for(a_change())
        assert post_cloud_event(server.url, body) == 500
        assert post_cloud_event(server.url, body) == 200
        assert post_cloud_event(server.url, body) == 200
        runs = deliveries(tmp_path / "sink")
        assert [what for _, _, what, _ in runs] == ["start", "start", "done"]
        assert post_cloud_event(server.url, {"message": {"data": "%%%"}}) == 400
        assert "Traceback" not in server.logs()


# -- issue 28: a time limit, a fenced record, the order's state ---------------------------------


def test_an_async_delivery_past_its_time_limit_is_cancelled_fails_and_is_released(
    logs: CapturedLogs,
):
    async def scenario() -> None:
        ledger = MemoryLedger(100)
        cancelled = asyncio.Event()

        async def hangs(change: Change) -> None:
            try:
                await asyncio.Event().wait()  # a downstream that never answers
            except asyncio.CancelledError:
                cancelled.set()
                raise

        worker = Worker(ledger, hangs, lease_seconds=30, delivery_timeout=0.2)
        change = a_change()
        with pytest.raises(DeliveryFailed):
            await worker.deliver(change)
        assert cancelled.is_set()
        record = await ledger.delivery(change.change_id)
        assert record is not None and record["claim"] is None and record["delivered_at"] is None
        worker.close()

    run(scenario())
    [failed] = logs("checkout_delivery_failed")
    assert failed["detail"].startswith("DeliveryTimedOut: DELIVER_ORDER ran past")


def test_a_plain_delivery_past_its_time_limit_fails_and_its_claim_is_left_to_lapse(
    logs: CapturedLogs,
):
    async def scenario() -> None:
        ledger = MemoryLedger(100)
        release = threading.Event()
        worker = Worker(
            ledger, lambda change: release.wait(60), lease_seconds=0.3, delivery_timeout=0.2
        )
        change = a_change()
        with pytest.raises(DeliveryFailed):
            await worker.deliver(change)
        # Still running on its thread, which nothing can stop: the claim is not released (a
        # redelivery would run beside it) and no longer renewed, so it lapses after its lease.
        record = await ledger.delivery(change.change_id)
        assert record is not None and record["claim"] is not None
        expiry = record["claim"]["expires_at"]
        release.set()
        await asyncio.sleep(0.5)  # more than a lease: a renewal would have moved the expiry
        later = await ledger.delivery(change.change_id)
        assert later is not None and later["claim"]["expires_at"] == expiry
        worker.close()

    run(scenario())


def test_a_holder_whose_claim_was_taken_over_records_nothing_and_says_so(logs: CapturedLogs):
    async def scenario() -> None:
        ledger = MemoryLedger(100)
        change = a_change()

        async def taken_over_meanwhile(change: Change) -> None:
            # Another worker took the claim while this one ran (its lease lapsed unseen).
            document = await ledger.delivery(change.change_id)
            assert document is not None
            theirs = {**document["claim"], "owner": "another-worker", "token": "theirs"}
            await ledger._set(DELIVERIES, change.change_id, {**document, "claim": theirs})

        worker = Worker(ledger, taken_over_meanwhile, lease_seconds=30)
        assert await worker.deliver(change) is False
        record = await ledger.delivery(change.change_id)
        assert record is not None and record["delivered_at"] is None
        assert record["claim"]["token"] == "theirs"
        worker.close()

    run(scenario())
    assert [r["change_id"] for r in logs("checkout_delivery_not_holder")] == ["cs_test_a:paid"]


def test_deliver_order_gets_the_order_state_read_under_its_claim():
    async def scenario() -> None:
        ledger = MemoryLedger(100)
        _, (change,) = advance(None, session_fact(a_session(), "pi_1"))
        await ledger.apply("cs_test_a", session_fact(a_session(), "pi_1"), token="p")
        await ledger.apply(
            "cs_test_a", ChargeFact("pi_1", 50, False, "2026-12-07T10:00:00Z"), token="p"
        )
        seen: list[OrderState] = []

        def deliver(change: Change, state: OrderState) -> None:
            seen.append(state)

        worker = Worker(ledger, deliver, lease_seconds=30)
        assert await worker.deliver(change) is True
        worker.close()
        (state,) = seen
        assert (state.outcome, state.amount_refunded, state.open_disputes) == ("paid", 50, ())
        assert state.access

    run(scenario())


def test_a_change_whose_order_the_ledger_never_saw_gets_the_state_the_change_states():
    async def scenario() -> None:
        seen: list[OrderState] = []

        def deliver(change: Change, state: OrderState) -> None:
            seen.append(state)

        worker = Worker(MemoryLedger(100), deliver, lease_seconds=30)
        assert await worker.deliver(a_change()) is True  # a worker with a ledger of its own
        worker.close()
        (state,) = seen
        assert (state.session_id, state.outcome, state.access) == ("cs_test_a", "paid", True)

    run(scenario())
