"""The fulfilment routine: only paid sessions, once per session, a failure retried, one record."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from checkout.fulfilment import DeliverOrder, Fulfilment, FulfilmentFailed
from checkout.ledger.memory import MemoryLedger
from checkout.session import SessionStatus
from checkout.status_cache import StatusCache
from tests.support import SELLS
from tests.support import a_session as session

CROWD = 20


def make_routine(deliver: DeliverOrder, cache: StatusCache | None = None) -> Fulfilment:
    return Fulfilment(
        cache if cache is not None else StatusCache(10), MemoryLedger(10), SELLS, deliver
    )


@pytest.mark.parametrize(
    ("state", "paid", "expected"),
    [
        ("complete", "paid", True),
        ("complete", "no_payment_required", True),
        ("complete", "unpaid", False),
        ("open", "unpaid", False),
        ("expired", "unpaid", False),
    ],
)
def test_only_complete_and_paid_or_free_sessions_are_fulfilled(
    state, paid, expected, deliveries, delivered
):
    assert session(state, paid).paid is expected
    assert asyncio.run(make_routine(deliveries).fulfil(session(state, paid))) is expected
    assert delivered == (["cs_test_a"] if expected else [])


def test_a_session_is_fulfilled_once_with_one_record(deliveries, delivered, logs):
    cache = StatusCache(10)
    routine = make_routine(deliveries, cache)
    assert asyncio.run(routine.fulfil(session(), event_id="evt_1")) is True
    assert asyncio.run(routine.fulfil(session(), event_id="evt_2")) is False
    assert asyncio.run(routine.fulfil(session())) is False
    assert delivered == ["cs_test_a"]
    [record] = logs("checkout_fulfilled")
    assert record["logger"] == "checkout.fulfilment"
    assert (record["session_id"], record["event_id"], record["imageId"]) == (
        "cs_test_a",
        "evt_1",
        "img_1",
    )
    assert cache.get("cs_test_a").payment_status == "paid"  # warmed for the status endpoint


def test_a_failure_raises_logs_and_leaves_the_session_unfulfilled(deliveries, logs):
    def broken(_session: SessionStatus) -> None:
        raise ValueError("no printer")

    deliveries.then = broken
    cache = StatusCache(10)
    routine = make_routine(deliveries, cache)
    with pytest.raises(FulfilmentFailed) as caught:
        asyncio.run(routine.fulfil(session(), event_id="evt_1"))
    assert isinstance(caught.value.__cause__, ValueError)
    assert cache.get("cs_test_a") is None
    assert logs("checkout_fulfilled") == []
    [failed] = logs("checkout_fulfilment_failed")
    assert (failed["error_type"], failed["detail"]) == ("ValueError", "no printer")

    deliveries.then = None
    assert asyncio.run(routine.fulfil(session(), event_id="evt_1")) is True
    assert len(logs("checkout_fulfilled")) == 1


def test_concurrent_calls_for_one_session_fulfil_once(logs):
    calls: list[str] = []

    async def slow(s: SessionStatus) -> None:
        calls.append(s.session_id)
        await asyncio.sleep(0.1)

    routine = make_routine(slow)

    async def crowd() -> list[bool]:
        return await asyncio.gather(*(routine.fulfil(session()) for _ in range(CROWD)))

    results = asyncio.run(crowd())
    assert calls == ["cs_test_a"]
    assert sorted(results) == [False] * (CROWD - 1) + [True]
    assert len(logs("checkout_fulfilled")) == 1


def test_a_blocking_delivery_runs_off_the_event_loop():
    # A plain function may block (a synchronous client, say): other requests must not wait.
    release = threading.Event()

    def blocking_for_a(s: SessionStatus) -> None:
        if s.session_id == "cs_test_a":
            release.wait(5)

    routine = make_routine(blocking_for_a)

    async def both() -> float:
        blocked = asyncio.create_task(routine.fulfil(session()))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        assert await routine.fulfil(session(session_id="cs_test_b")) is True
        waited = time.monotonic() - started
        release.set()
        assert await blocked is True
        return waited

    assert asyncio.run(both()) < 1


def test_different_sessions_do_not_wait_for_each_other():
    release = asyncio.Event()

    async def waiting_for_a(s: SessionStatus) -> None:
        if s.session_id == "cs_test_a":
            await asyncio.wait_for(release.wait(), 5)

    routine = make_routine(waiting_for_a)

    async def both() -> float:
        waiting = asyncio.create_task(routine.fulfil(session()))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        assert await routine.fulfil(session(session_id="cs_test_b")) is True
        waited = time.monotonic() - started
        release.set()
        assert await waiting is True
        return waited

    assert asyncio.run(both()) < 1


def test_the_record_holds_no_secret_or_customer_detail(deliveries, logs):
    asyncio.run(make_routine(deliveries).fulfil(session()))
    [record] = logs("checkout_fulfilled")
    assert set(record) == {
        "severity",
        "message",
        "logger",
        "session_id",
        "imageId",
        "amount_total",
        "currency",
        "payment_status",
        "livemode",
        "event_id",
    }


def test_deliver_order_names_the_function_to_fulfil_with():
    from checkout.config import load_settings
    from checkout.fulfilment import deliver_order, deliver_order_from_settings
    from tests.delivery_sink import deliver_to_sink

    assert deliver_order_from_settings(load_settings({})) is deliver_order
    named = load_settings({"DELIVER_ORDER": "tests.delivery_sink:deliver_to_sink"})
    assert deliver_order_from_settings(named) is deliver_to_sink


@pytest.mark.parametrize(
    "path", ["tests.no_such_module:deliver", "tests.delivery_sink:no_such_function"]
)
def test_a_deliver_order_that_does_not_import_is_a_configuration_error(path):
    from checkout.config import ConfigError, load_settings
    from checkout.fulfilment import deliver_order_from_settings

    with pytest.raises(ConfigError, match="DELIVER_ORDER"):
        deliver_order_from_settings(load_settings({"DELIVER_ORDER": path}))


@pytest.mark.parametrize("path", ["deliver", "tests.delivery_sink:", "a b:c", ":f"])
def test_deliver_order_must_read_module_colon_function(path):
    from checkout.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="DELIVER_ORDER must name a function"):
        load_settings({"DELIVER_ORDER": path})
