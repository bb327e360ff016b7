"""The fulfilment routine: only paid sessions, once per session, a failure retried, one record."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from checkout import fulfilment
from checkout.catalogue import Catalogue
from checkout.fulfilment import Fulfilment, FulfilmentFailed, is_paid
from checkout.ledger.memory import MemoryLedger
from checkout.status_cache import StatusCache
from checkout.stripe_gateway import SessionStatus
from tests.test_webhook import CapturedLogs

CROWD = 20


def session(state: str = "complete", paid: str = "paid", session_id: str = "cs_test_a"):
    return SessionStatus(
        session_id=session_id,
        status=state,
        payment_status=paid,
        metadata={"imageId": "img_1"},
        amount_total=200,
        currency="usd",
        livemode=False,
        marker="local",
    )


SELLS = Catalogue(deployment_id="local", amount=200, currency="usd", price_id=None)


def make_routine(cache: StatusCache | None = None) -> Fulfilment:
    return Fulfilment(cache if cache is not None else StatusCache(10), MemoryLedger(10), SELLS)


@pytest.fixture
def logs(capsys: pytest.CaptureFixture[str]) -> CapturedLogs:
    return CapturedLogs(capsys)


@pytest.fixture
def delivered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(fulfilment, "deliver_order", lambda s: calls.append(s.session_id))
    return calls


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
def test_only_complete_and_paid_or_free_sessions_are_fulfilled(state, paid, expected, delivered):
    assert is_paid(session(state, paid)) is expected
    assert asyncio.run(make_routine().fulfil(session(state, paid))) is expected
    assert delivered == (["cs_test_a"] if expected else [])


def test_a_session_is_fulfilled_once_with_one_record(delivered, logs):
    cache = StatusCache(10)
    routine = make_routine(cache)
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


def test_a_failure_raises_logs_and_leaves_the_session_unfulfilled(monkeypatch, logs):
    def broken(_session: SessionStatus) -> None:
        raise ValueError("no printer")

    monkeypatch.setattr(fulfilment, "deliver_order", broken)
    cache = StatusCache(10)
    routine = make_routine(cache)
    with pytest.raises(FulfilmentFailed) as caught:
        asyncio.run(routine.fulfil(session(), event_id="evt_1"))
    assert isinstance(caught.value.__cause__, ValueError)
    assert cache.get("cs_test_a") is None
    assert logs("checkout_fulfilled") == []
    [failed] = logs("checkout_fulfilment_failed")
    assert (failed["error_type"], failed["detail"]) == ("ValueError", "no printer")

    monkeypatch.setattr(fulfilment, "deliver_order", lambda _session: None)
    assert asyncio.run(routine.fulfil(session(), event_id="evt_1")) is True
    assert len(logs("checkout_fulfilled")) == 1


def test_concurrent_calls_for_one_session_fulfil_once(monkeypatch, logs):
    calls: list[str] = []

    async def slow(s: SessionStatus) -> None:
        calls.append(s.session_id)
        await asyncio.sleep(0.1)

    monkeypatch.setattr(fulfilment, "deliver_order", slow)
    routine = make_routine()

    async def crowd() -> list[bool]:
        return await asyncio.gather(*(routine.fulfil(session()) for _ in range(CROWD)))

    results = asyncio.run(crowd())
    assert calls == ["cs_test_a"]
    assert sorted(results) == [False] * (CROWD - 1) + [True]
    assert len(logs("checkout_fulfilled")) == 1


def test_a_blocking_delivery_runs_off_the_event_loop(monkeypatch):
    # A plain function may block (a synchronous client, say): other requests must not wait.
    release = threading.Event()

    def blocking_for_a(s: SessionStatus) -> None:
        if s.session_id == "cs_test_a":
            release.wait(5)

    monkeypatch.setattr(fulfilment, "deliver_order", blocking_for_a)
    routine = make_routine()

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


def test_different_sessions_do_not_wait_for_each_other(monkeypatch):
    release = asyncio.Event()

    async def waiting_for_a(s: SessionStatus) -> None:
        if s.session_id == "cs_test_a":
            await asyncio.wait_for(release.wait(), 5)

    monkeypatch.setattr(fulfilment, "deliver_order", waiting_for_a)
    routine = make_routine()

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


def test_the_record_holds_no_secret_or_customer_detail(delivered, logs):
    asyncio.run(make_routine().fulfil(session()))
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
