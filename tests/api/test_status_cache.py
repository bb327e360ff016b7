"""The status cache: what it keeps, for how long (by the order's state), and how it is bounded."""

from __future__ import annotations

from typing import Any

import pytest

from checkout.api.status_cache import PAID_TTL_S, NotFoundCache, Rechecks, StatusCache
from checkout.orders.model import Order
from tests.support import STATUS, WHSEC, completed_session, create, event_for, post_event, status_of


def answer(outcome: str, status: str = "complete", paid: str = "paid") -> dict:
    """A status answer as the routes give the cache (Order.public())."""
    return {
        "status": status,
        "payment_status": paid,
        "outcome": outcome,
        "amount_refunded": 0,
        "metadata": {"imageId": "i"},
    }


OPEN = answer("open", "open", "unpaid")
PROCESSING = answer("processing", "complete", "unpaid")
PAID = answer("paid")
FAILED = answer("failed", "complete", "unpaid")
EXPIRED = answer("expired", "expired", "unpaid")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_final_answers_are_kept_until_evicted():
    clock = FakeClock()
    cache = StatusCache(max_size=10, clock=clock)
    cache.put("cs_test_failed", FAILED, final=True)
    cache.put("cs_test_expired", EXPIRED, final=True)
    clock.now += 365 * 24 * 3600.0
    assert cache.get("cs_test_failed") == FAILED
    assert cache.get("cs_test_expired") == EXPIRED


def test_the_orders_own_final_is_what_the_routes_pass():
    # Expired and failed never change; a paid order may still be refunded or disputed.
    def order(**fields: Any) -> Order:
        return Order(session_id="cs_test_a", **fields)

    assert order(status="expired").final
    assert order(status="complete", payment_status="unpaid", payment_failed=True).final
    assert not order(status="complete", payment_status="paid").final
    assert not order(status="complete", payment_status="paid", refunded=True).final


@pytest.mark.parametrize("outcome", ["paid", "refunded", "disputed"])
def test_a_paid_answer_expires_after_the_paid_ttl(outcome):
    clock = FakeClock()
    cache = StatusCache(max_size=10, clock=clock)
    cache.put("cs_test_a", answer(outcome), final=False)
    clock.now += PAID_TTL_S - 0.001
    assert cache.get("cs_test_a") == answer(outcome)
    clock.now += 0.002
    assert cache.get("cs_test_a") is None  # re-read from the ledger: a refund may have come
    assert len(cache) == 0


def test_the_paid_ttl_can_be_set():
    clock = FakeClock()
    cache = StatusCache(max_size=10, clock=clock, paid_ttl=2.0)
    cache.put("cs_test_a", PAID, final=False)
    clock.now += 1.999
    assert cache.get("cs_test_a") == PAID
    clock.now += 0.002
    assert cache.get("cs_test_a") is None


def test_open_is_not_kept_by_default_and_processing_never():
    cache = StatusCache(max_size=10)
    cache.put("cs_test_open", OPEN, final=False)
    cache.put("cs_test_processing", PROCESSING, final=False)
    assert cache.get("cs_test_open") is None
    assert cache.get("cs_test_processing") is None
    opted_in = StatusCache(max_size=10, open_ttl_ms=60_000)
    opted_in.put("cs_test_processing", PROCESSING, final=False)
    assert opted_in.get("cs_test_processing") is None  # a delayed payment settles by an event
    assert len(cache) == len(opted_in) == 0


def test_open_ttl_is_honoured_when_opted_in():
    clock = FakeClock()
    cache = StatusCache(max_size=10, open_ttl_ms=500, clock=clock)
    cache.put("cs_test_o", OPEN, final=False)
    clock.now += 0.499
    assert cache.get("cs_test_o") == OPEN
    clock.now += 0.002
    assert cache.get("cs_test_o") is None


@pytest.mark.parametrize(("settled", "final"), [(PAID, False), (EXPIRED, True), (FAILED, True)])
def test_an_open_read_never_replaces_a_settled_answer(settled, final):
    clock = FakeClock()
    cache = StatusCache(max_size=10, open_ttl_ms=1000, clock=clock)
    cache.put("cs_test_a", settled, final=final)
    cache.put("cs_test_a", OPEN, final=False)
    assert cache.get("cs_test_a") == settled


def test_an_expired_paid_answer_may_be_replaced():
    clock = FakeClock()
    cache = StatusCache(max_size=10, open_ttl_ms=60_000, clock=clock)
    cache.put("cs_test_a", PAID, final=False)
    clock.now += PAID_TTL_S
    cache.put("cs_test_a", answer("refunded"), final=False)
    assert cache.get("cs_test_a")["outcome"] == "refunded"


def test_forget_drops_an_answer_so_the_next_call_reads_the_ledger():
    cache = StatusCache(max_size=10)
    cache.put("cs_test_a", PAID, final=False)
    cache.put("cs_test_b", EXPIRED, final=True)
    cache.forget("cs_test_a")
    cache.forget("cs_test_unknown")  # nothing to forget: no error
    assert cache.get("cs_test_a") is None
    assert cache.get("cs_test_b") == EXPIRED


def test_answers_are_copied_in_and_out():
    cache = StatusCache(max_size=10)
    given = dict(PAID)
    cache.put("cs_test_a", given, final=False)
    given["outcome"] = "changed by the caller"
    got = cache.get("cs_test_a")
    got["status"] = "changed by the reader"
    assert cache.get("cs_test_a") == PAID


def test_the_bound_is_honoured_least_recently_used_first():
    cache = StatusCache(max_size=3)
    for name in "abc":
        cache.put(f"cs_test_{name}", EXPIRED, final=True)
    assert cache.get("cs_test_a") is not None  # a is now most recently used
    cache.put("cs_test_d", PAID, final=False)
    assert len(cache) == 3
    assert cache.get("cs_test_b") is None
    assert cache.get("cs_test_a") is not None
    assert cache.get("cs_test_d") is not None


def test_size_zero_disables_the_cache():
    cache = StatusCache(max_size=0)
    cache.put("cs_test_a", EXPIRED, final=True)
    cache.put("cs_test_b", PAID, final=False)
    assert cache.get("cs_test_a") is None
    assert cache.get("cs_test_b") is None
    assert len(cache) == 0


def test_complete_status_is_served_without_a_stripe_call(client, stripe_emulator):
    session_id = create(client, {}).get_json()["session_id"]
    stripe_emulator.complete_session(session_id)
    first = client.get(STATUS, query_string={"session_id": session_id}).get_json()
    before = stripe_emulator.calls()["retrieve_session"]
    for _ in range(5):
        assert client.get(STATUS, query_string={"session_id": session_id}).get_json() == first
    assert stripe_emulator.calls()["retrieve_session"] == before


def test_open_status_is_never_stale_by_default(client, stripe_emulator):
    session_id = create(client, {}).get_json()["session_id"]
    query = {"session_id": session_id}
    assert client.get(STATUS, query_string=query).get_json()["status"] == "open"
    assert client.get(STATUS, query_string=query).get_json()["status"] == "open"
    stripe_emulator.complete_session(session_id)
    assert client.get(STATUS, query_string=query).get_json()["status"] == "complete"
    assert stripe_emulator.calls()["retrieve_session"] == 3


def test_open_ttl_opt_in_serves_open_from_cache(client, configure, stripe_emulator):
    configure(STATUS_OPEN_TTL_MS="60000")
    session_id = create(client, {}).get_json()["session_id"]
    for _ in range(3):
        client.get(STATUS, query_string={"session_id": session_id})
    assert stripe_emulator.calls()["retrieve_session"] == 1


def test_an_unknown_id_is_remembered_until_its_ttl_passes():
    clock = FakeClock()
    unknown = NotFoundCache(max_size=10, ttl=60.0, clock=clock)
    unknown.add("cs_test_typo")
    clock.now += 59.999
    assert "cs_test_typo" in unknown
    clock.now += 0.001
    assert "cs_test_typo" not in unknown
    assert len(unknown) == 0  # an expired id is dropped, not kept until evicted


def test_adding_an_id_again_restarts_its_ttl():
    clock = FakeClock()
    unknown = NotFoundCache(max_size=10, ttl=60.0, clock=clock)
    unknown.add("cs_test_typo")
    clock.now += 50
    unknown.add("cs_test_typo")
    clock.now += 50
    assert "cs_test_typo" in unknown
    clock.now += 10
    assert "cs_test_typo" not in unknown


def test_the_not_found_bound_drops_the_oldest_id_first():
    clock = FakeClock()
    unknown = NotFoundCache(max_size=3, ttl=60.0, clock=clock)
    for name in "abcd":
        unknown.add(f"cs_test_{name}")
        clock.now += 1
    assert len(unknown) == 3
    assert "cs_test_a" not in unknown
    assert all(f"cs_test_{name}" in unknown for name in "bcd")


def test_a_not_found_cache_of_size_zero_remembers_nothing():
    unknown = NotFoundCache(max_size=0)
    unknown.add("cs_test_typo")
    assert "cs_test_typo" not in unknown
    assert len(unknown) == 0


def test_only_string_ids_can_be_remembered():
    unknown = NotFoundCache(max_size=10)
    unknown.add("cs_test_typo")
    assert None not in unknown
    assert ["cs_test_typo"] not in unknown


def test_a_refund_replaces_the_cached_paid_answer_without_a_stripe_call(
    client, configure, stripe_emulator
):
    configure(STRIPE_WEBHOOK_SECRET=WHSEC)
    session = completed_session(client, stripe_emulator)
    assert post_event(client, event_for(session, "checkout.session.completed")).status_code == 200
    assert status_of(client, session["id"])["outcome"] == "paid"  # cached, for PAID_TTL_S
    retrieves = stripe_emulator.calls()["retrieve_session"]

    charge = {
        "id": "ch_test_refunded1",
        "object": "charge",
        "payment_intent": session["payment_intent"],
        "amount": 200,
        "amount_refunded": 200,
        "refunded": True,
    }
    assert post_event(client, event_for(charge, "charge.refunded")).status_code == 200

    # The webhook forgot this instance's paid answer: the ledger's new one is told at once.
    refunded = status_of(client, session["id"])
    assert (refunded["outcome"], refunded["amount_refunded"]) == ("refunded", 200)
    assert status_of(client, session["id"]) == refunded
    assert stripe_emulator.calls()["retrieve_session"] == retrieves


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_polled_paid_order_is_read_from_stripe_at_most_once_per_period():
    clock = Clock()
    rechecks = Rechecks(100, period=600, per_minute=60, clock=clock)
    assert not rechecks.due("cs_1")  # its period starts at the first poll seen
    clock.now += 599
    assert not rechecks.due("cs_1")
    clock.now += 1
    assert rechecks.due("cs_1")
    assert not rechecks.due("cs_1")  # counted as read: the next one is a period later
    clock.now += 600
    assert rechecks.due("cs_1")


def test_rechecks_never_take_more_than_their_share_of_stripe_reads_per_minute():
    clock = Clock()
    rechecks = Rechecks(1000, period=60, per_minute=10, clock=clock)
    ids = [f"cs_{n}" for n in range(50)]
    for session_id in ids:
        rechecks.due(session_id)
    clock.now += 60
    assert sum(rechecks.due(session_id) for session_id in ids) == 10
    clock.now += 6  # one more read's worth of the minute's share
    assert sum(rechecks.due(session_id) for session_id in ids) == 1


def test_rechecks_are_off_with_a_period_of_zero():
    clock = Clock()
    rechecks = Rechecks(100, period=0, per_minute=60, clock=clock)
    rechecks.due("cs_1")
    clock.now += 10**6
    assert not rechecks.due("cs_1")
