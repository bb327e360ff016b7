"""Who the client is, how often it may ask, and how many Stripe calls may be in flight."""

from __future__ import annotations

import pytest

from checkout.errors import ApiError
from checkout.limits import InFlightCap, TokenBuckets, client_address


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def xff(value: str) -> dict[str, str]:
    return {"X-Forwarded-For": value}


def test_locally_the_client_is_the_socket_peer_whatever_it_claims():
    assert client_address(xff("203.0.113.9"), "127.0.0.1", trusted_hops=0) == "127.0.0.1"


def test_on_cloud_run_the_client_is_the_address_googles_front_end_appended():
    assert client_address(xff("203.0.113.12"), "169.254.1.1", trusted_hops=1) == "203.0.113.12"


@pytest.mark.parametrize("spoof", ["1.2.3.4", "1.2.3.4, 5.6.7.8", "garbage, , 10.0.0.1"])
def test_entries_a_client_writes_itself_never_count(spoof):
    real = "198.51.100.7"
    headers = xff(f"{spoof}, {real}")
    assert client_address(headers, "169.254.1.1", trusted_hops=1) == real


def test_behind_an_external_load_balancer_the_client_is_second_from_the_right():
    headers = xff("1.2.3.4, 198.51.100.7, 34.120.0.1")  # spoof, client, the balancer itself
    assert client_address(headers, "169.254.1.1", trusted_hops=2) == "198.51.100.7"


def test_fewer_entries_than_trusted_hops_falls_back_to_the_peer():
    assert client_address({}, "169.254.1.1", trusted_hops=1) == "169.254.1.1"
    assert client_address(xff("198.51.100.7"), "10.1.1.1", trusted_hops=2) == "10.1.1.1"


def test_without_a_peer_or_a_trusted_entry_the_client_is_unknown():
    assert client_address(xff("203.0.113.9"), None, trusted_hops=0) == "unknown"
    assert client_address({}, None, trusted_hops=1) == "unknown"


def test_a_forwarded_address_is_cut_to_64_characters():
    # A bucket is keyed by it: a client must not make the server hold kilobytes per bucket.
    long = "2001:db8:" + "f" * 300
    assert client_address(xff(long), "169.254.1.1", trusted_hops=1) == long[:64]


def test_a_bucket_allows_a_burst_of_its_per_minute_allowance_then_refuses():
    clock = Clock()
    buckets = TokenBuckets(per_minute=30, clock=clock)
    assert [buckets.take("a") for _ in range(30)] == [0.0] * 30
    wait = buckets.take("a")
    assert wait == pytest.approx(2.0)  # one token every 60/30 s
    assert buckets.take("b") == 0.0  # another client is not affected


def test_a_bucket_refills_over_time():
    clock = Clock()
    buckets = TokenBuckets(per_minute=60, clock=clock)
    for _ in range(60):
        buckets.take("a")
    assert buckets.take("a") > 0
    clock.now += 1.0
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    clock.now += 3600
    assert [buckets.take("a") for _ in range(60)] == [0.0] * 60  # never more than the burst


def test_a_bucket_refills_at_its_own_rate_not_one_token_a_second():
    clock = Clock()
    buckets = TokenBuckets(per_minute=30, clock=clock)  # one token every 2 s
    for _ in range(30):
        buckets.take("a")
    clock.now += 1.0
    assert buckets.take("a") == pytest.approx(1.0)  # half a token is there: 1 s to go
    clock.now += 1.0
    assert buckets.take("a") == 0.0


def test_charge_refuses_with_retry_after_rounded_up_and_only_that_client():
    clock = Clock()
    buckets = TokenBuckets(per_minute=120, clock=clock)  # one token every 0.5 s
    for _ in range(120):
        buckets.charge("203.0.113.9")
    with pytest.raises(ApiError) as caught:
        buckets.charge("203.0.113.9")  # the next token is 0.5 s away: refused, not let through
    assert (caught.value.status, caught.value.code) == (429, "rate_limited")
    assert caught.value.headers["Retry-After"] == "1"
    assert caught.value.detail == "client=203.0.113.9"
    buckets.charge("198.51.100.7")  # another client's bucket is full


def test_refused_calls_do_not_push_the_next_token_further_away():
    clock = Clock()
    buckets = TokenBuckets(per_minute=60, clock=clock)
    for _ in range(60):
        buckets.take("a")
    for _ in range(100):
        assert buckets.take("a") > 0
    clock.now += 1.0
    assert buckets.take("a") == 0.0


def test_buckets_are_bounded_and_forget_the_least_recent_client():
    buckets = TokenBuckets(per_minute=1, max_clients=3, clock=Clock())
    for client in "abcd":
        buckets.take(client)
    assert len(buckets) == 3
    assert buckets.take("a") == 0.0  # forgotten, so it starts again with a full bucket
    assert buckets.take("d") > 0


def test_zero_per_minute_disables_the_limit():
    buckets = TokenBuckets(per_minute=0)
    assert not buckets.enabled
    assert all(buckets.take("a") == 0.0 for _ in range(1000))
    assert len(buckets) == 0


def test_the_in_flight_cap_refuses_past_its_limit_and_frees_on_leave():
    cap = InFlightCap(2)
    assert cap.try_enter()
    assert cap.try_enter()
    assert not cap.try_enter()
    assert cap.in_flight == 2
    cap.leave()
    assert cap.in_flight == 1
    assert cap.try_enter()
    cap.leave()
    cap.leave()
    assert cap.in_flight == 0
