"""Who the client is, how often it may ask, and how many Stripe calls may be in flight."""

from __future__ import annotations

import pytest

from checkout.api.limits import InFlightCap, TokenBuckets, client_address
from checkout.errors import ApiError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def xff(*lines: str) -> list[str]:
    """X-Forwarded-For as it arrived: one string per header line."""
    return list(lines)


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
    assert client_address([], "169.254.1.1", trusted_hops=1) == "169.254.1.1"
    assert client_address(xff("198.51.100.7"), "10.1.1.1", trusted_hops=2) == "10.1.1.1"


def test_without_a_peer_or_a_trusted_entry_the_client_is_unknown():
    assert client_address(xff("203.0.113.9"), None, trusted_hops=0) == "unknown"
    assert client_address([], None, trusted_hops=1) == "unknown"


def test_a_forwarded_address_is_cut_to_64_characters():
    # A bucket is keyed by it: a client must not make the server hold kilobytes per bucket.
    long = "2001:db8:" + "f" * 300
    assert client_address(xff(long), "169.254.1.1", trusted_hops=1) == long[:64]


SIX_IN_ONE_64 = [
    "2001:db8:1:2::1",
    "2001:db8:1:2::dead:beef",
    "2001:db8:1:2:ffff:ffff:ffff:ffff",
    "2001:0db8:0001:0002:0000:0000:0000:0009",
    "2001:DB8:1:2:a:b:c:d",
    "2001:db8:1:2:1234::",
]


def test_ipv6_clients_are_keyed_by_their_64():
    # One customer's /64 holds 2**64 addresses: one bucket for all of them.
    by_header = {client_address(xff(a), "169.254.1.1", trusted_hops=1) for a in SIX_IN_ONE_64}
    by_peer = {client_address([], a, trusted_hops=0) for a in SIX_IN_ONE_64}
    assert by_header == by_peer == {"2001:db8:1:2::/64"}
    assert client_address(xff("2001:db8:1:3::1"), "10.0.0.1", trusted_hops=1) == "2001:db8:1:3::/64"


def test_one_64_shares_one_bucket():
    buckets = TokenBuckets(per_minute=2, clock=Clock())
    waits = [buckets.take(client_address([], a, trusted_hops=0)) for a in SIX_IN_ONE_64]
    assert waits[:2] == [0.0, 0.0] and all(wait > 0 for wait in waits[2:])
    assert len(buckets) == 1


def test_ipv4_addresses_are_their_own_key_also_when_mapped_into_ipv6():
    assert client_address([], "203.0.113.7", trusted_hops=0) == "203.0.113.7"
    assert client_address([], "::ffff:203.0.113.7", trusted_hops=0) == "203.0.113.7"
    assert client_address(xff("203.0.113.8"), None, trusted_hops=1) == "203.0.113.8"


def test_an_entry_that_is_no_address_is_kept_as_written_and_bounded():
    assert client_address(xff("not-an-ip"), None, trusted_hops=1) == "not-an-ip"
    assert client_address(xff("x" * 500), None, trusted_hops=1) == "x" * 64


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
    cap = InFlightCap(2, reserve=0)
    assert cap.try_enter(public=True)
    assert cap.try_enter(public=False)
    assert not cap.try_enter(public=True)
    assert not cap.try_enter(public=False)
    assert cap.in_flight == 2
    cap.leave()
    assert cap.in_flight == 1
    assert cap.try_enter(public=True)
    cap.leave()
    cap.leave()
    assert cap.in_flight == 0


def test_public_calls_cannot_take_the_reserve():
    cap = InFlightCap(5, reserve=2)
    assert [cap.try_enter(public=True) for _ in range(4)] == [True, True, True, False]
    assert [cap.try_enter(public=False) for _ in range(3)] == [True, True, False]
    cap.leave()
    assert not cap.try_enter(public=True)  # 4 in flight: the free place is the reserve's
    assert cap.try_enter(public=False)


@pytest.mark.parametrize(
    "lines",
    [
        ["1.2.3.4", "198.51.100.7"],
        ["1.2.3.4, 5.6.7.8", "198.51.100.7"],
        ["1.2.3.4", "", "5.6.7.8, 198.51.100.7"],
    ],
)
def test_every_forwarded_for_line_counts_joined_in_order(lines):
    # RFC 9110 §5.3: a header sent on several lines is one comma-separated list.
    assert client_address(xff(*lines), "169.254.1.1", trusted_hops=1) == "198.51.100.7"
    joined = ", ".join(line for line in lines if line)
    assert client_address(xff(joined), "169.254.1.1", trusted_hops=1) == "198.51.100.7"
