"""The terminal-status cache: what it keeps, for how long, and how it is bounded."""

from __future__ import annotations

from checkout.session import SessionStatus
from checkout.status_cache import NotFoundCache, StatusCache
from tests.support import STATUS, create


def status(session_id: str, state: str, paid: str = "unpaid") -> SessionStatus:
    return SessionStatus(
        session_id=session_id,
        status=state,
        payment_status=paid,
        metadata={"imageId": "i"},
        amount_total=200,
        currency="usd",
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_terminal_statuses_are_kept_and_open_is_not_by_default():
    cache = StatusCache(max_size=10)
    cache.put(status("cs_test_a", "complete", "paid"))
    cache.put(status("cs_test_b", "expired"))
    cache.put(status("cs_test_c", "open"))
    assert cache.get("cs_test_a").status == "complete"
    assert cache.get("cs_test_b").status == "expired"
    assert cache.get("cs_test_c") is None


def test_complete_but_unpaid_is_not_final_and_not_cached():
    cache = StatusCache(max_size=10)
    cache.put(status("cs_test_async", "complete", "unpaid"))
    assert cache.get("cs_test_async") is None
    cache.put(status("cs_test_free", "complete", "no_payment_required"))
    assert cache.get("cs_test_free") is not None


def test_cached_entries_hold_only_public_fields():
    cache = StatusCache(max_size=10)
    cache.put(status("cs_test_a", "complete", "paid"))
    cached = cache.get("cs_test_a")
    assert cached.amount_total is None and cached.currency is None
    assert cached.public() == {
        "status": "complete",
        "payment_status": "paid",
        "outcome": "paid",
        "metadata": {"imageId": "i"},
    }


def test_open_ttl_is_honoured_when_opted_in():
    clock = FakeClock()
    cache = StatusCache(max_size=10, open_ttl_ms=500, clock=clock)
    cache.put(status("cs_test_o", "open"))
    clock.now += 0.499
    assert cache.get("cs_test_o") is not None
    clock.now += 0.002
    assert cache.get("cs_test_o") is None


def test_an_open_read_never_replaces_a_terminal_status():
    cache = StatusCache(max_size=10, open_ttl_ms=1000)
    cache.put(status("cs_test_a", "complete", "paid"))
    cache.put(status("cs_test_a", "open"))
    assert cache.get("cs_test_a").status == "complete"


def test_the_bound_is_honoured_least_recently_used_first():
    cache = StatusCache(max_size=3)
    for name in "abc":
        cache.put(status(f"cs_test_{name}", "complete", "paid"))
    assert cache.get("cs_test_a") is not None  # a is now most recently used
    cache.put(status("cs_test_d", "complete", "paid"))
    assert len(cache) == 3
    assert cache.get("cs_test_b") is None
    assert cache.get("cs_test_a") is not None
    assert cache.get("cs_test_d") is not None


def test_size_zero_disables_the_cache():
    cache = StatusCache(max_size=0)
    cache.put(status("cs_test_a", "complete", "paid"))
    assert cache.get("cs_test_a") is None


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
