"""The review's attacks on the public endpoints, each against a live server and the emulator,
counting the Stripe calls it caused (docs/abuse.md quotes these counts)."""

from __future__ import annotations

import itertools
import json
import math
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from email.message import Message

import pytest

from tests.support import TEST_KEY, WEBHOOK, WHSEC, event_for, send, sign

CREATE = "/api/checkout/embedded-session"
STATUS = "/api/checkout/session-status?session_id="
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, Message, dict]:
    """(status, headers (case-insensitive), JSON body) of one request."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _opener.open(request, timeout=30) as response:
            raw = response.read()
            return response.status, response.headers, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, error.headers, json.loads(raw) if raw else {}


def create(server, headers: dict[str, str] | None = None) -> tuple[int, Message, dict]:
    return call(
        server.url + CREATE, "POST", {"Content-Type": "application/json", **(headers or {})}, b"{}"
    )


def in_parallel(count: int, action) -> list:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda _: action(), range(count)))


def retrieves(stripe_emulator) -> int:
    return stripe_emulator.calls()["retrieve_session"]


def unknown_id(n: int) -> str:
    return f"cs_test_unknown{n:06d}"


def test_300_unknown_ids_cost_at_most_the_status_allowance(live_server, stripe_emulator):
    server = live_server(STATUS_LIMIT_PER_MINUTE="120")
    started = time.monotonic()
    answers = [call(server.url + STATUS + unknown_id(n)) for n in range(300)]
    codes = [status for status, _, _ in answers]
    # The burst, plus what the bucket refilled (2/s) while the attack ran.
    allowed = 120 + math.ceil((time.monotonic() - started) * 120 / 60)
    assert 120 <= codes.count(404) <= allowed
    assert codes.count(404) + codes.count(429) == 300
    assert retrieves(stripe_emulator) == codes.count(404)
    refused = next(a for a in answers if a[0] == 429)
    assert refused[2]["code"] == "rate_limited"
    assert int(refused[1]["Retry-After"]) >= 1


def test_an_unknown_id_asked_again_costs_no_stripe_call(live_server, stripe_emulator):
    server = live_server()
    answers = [call(server.url + STATUS + unknown_id(1)) for _ in range(50)]
    assert {(status, body["code"]) for status, _, body in answers} == {(404, "session_not_found")}
    assert retrieves(stripe_emulator) == 1


@pytest.mark.slow
def test_100_concurrent_polls_of_one_open_session_share_one_stripe_call(
    live_server, stripe_emulator
):
    server = live_server()
    session_id = create(server)[2]["session_id"]
    stripe_emulator.set_faults(latency_ms=1500)  # every poll arrives while the first is out
    answers = in_parallel(100, lambda: call(server.url + STATUS + session_id))
    assert {(status, body["status"]) for status, _, body in answers} == {(200, "open")}
    assert retrieves(stripe_emulator) == 1


def test_head_makes_no_stripe_call(live_server, stripe_emulator):
    server = live_server()
    session_id = create(server)[2]["session_id"]
    status, headers, _ = call(server.url + STATUS + session_id, "HEAD")
    assert status == 405
    assert headers["Allow"] == "GET, OPTIONS"
    assert retrieves(stripe_emulator) == 0


def test_100_creates_from_one_client_create_only_its_allowance(live_server, stripe_emulator):
    server = live_server(CREATE_LIMIT_PER_MINUTE="30")
    started = time.monotonic()
    codes = [create(server)[0] for _ in range(100)]
    allowed = 30 + math.ceil((time.monotonic() - started) * 30 / 60)
    assert 30 <= codes.count(200) <= allowed
    assert codes.count(200) + codes.count(429) == 100
    assert stripe_emulator.calls()["sessions_created"] == codes.count(200)


def test_spoofed_forwarded_for_entries_do_not_evade_the_limit(live_server, stripe_emulator):
    # Cloud Run's front end appends the address it saw; the client controls only what precedes.
    server = live_server(CREATE_LIMIT_PER_MINUTE="30", TRUSTED_PROXY_HOPS="1")
    started = time.monotonic()
    codes = [
        create(server, {"X-Forwarded-For": f"10.9.{n // 250}.{n % 250}, 203.0.113.5"})[0]
        for n in range(100)
    ]
    allowed = 30 + math.ceil((time.monotonic() - started) * 30 / 60)
    assert 30 <= codes.count(200) <= allowed
    assert stripe_emulator.calls()["sessions_created"] == codes.count(200)
    # Another real client, behind the same spoofing, still has its own allowance.
    assert create(server, {"X-Forwarded-For": "10.9.0.1, 198.51.100.8"})[0] == 200


@pytest.mark.slow
def test_a_forwarded_for_header_from_a_local_client_is_not_the_client(live_server, stripe_emulator):
    # Locally (TRUSTED_PROXY_HOPS=0) the socket peer is the client, whatever X-Forwarded-For says;
    # the server must not rewrite it, even when told to trust every proxy, and in
    # functions-framework's debug mode too (bare uvicorn rather than gunicorn's worker).
    for env in ({}, {"FORWARDED_ALLOW_IPS": "*"}, {"FORWARDED_ALLOW_IPS": "*", "DEBUG": "1"}):
        server = live_server(CREATE_LIMIT_PER_MINUTE="2", TRUSTED_PROXY_HOPS="0", **env)
        codes = [create(server, {"X-Forwarded-For": f"203.0.113.{n}"})[0] for n in range(6)]
        assert codes.count(200) == 2 and codes.count(429) == 4, (env, codes)


def test_behind_an_ingress_sidecar_two_hops_tell_customers_apart(live_server, stripe_emulator):
    # A sidecar on loopback appends the address it saw (Google's front end) after the client's.
    server = live_server(CREATE_LIMIT_PER_MINUTE="1", TRUSTED_PROXY_HOPS="2")
    sidecar = "169.254.1.1"
    alice = {"X-Forwarded-For": f"203.0.113.5, {sidecar}"}
    bob = {"X-Forwarded-For": f"10.0.0.1, 198.51.100.8, {sidecar}"}
    assert [create(server, alice)[0], create(server, bob)[0]] == [200, 200]
    assert [create(server, alice)[0], create(server, bob)[0]] == [429, 429]


def test_a_real_customer_reloading_and_double_clicking_is_never_limited(
    live_server, stripe_emulator
):
    # Defaults: a checkout page loaded ten times, each with a double-click, polled twice.
    server = live_server(CREATE_LIMIT_PER_MINUTE=None, STATUS_LIMIT_PER_MINUTE=None)
    for attempt in range(10):
        key = {"Idempotency-Key": f"order-{attempt}"}
        first, second = create(server, key), create(server, key)
        assert first[0] == second[0] == 200
        assert first[2]["session_id"] == second[2]["session_id"]
        for _ in range(2):
            assert call(server.url + STATUS + first[2]["session_id"])[0] == 200


@pytest.mark.slow
def test_past_the_in_flight_cap_the_answer_is_503_at_once(live_server, stripe_emulator):
    server = live_server(STRIPE_MAX_IN_FLIGHT="3")  # one place is the webhook's reserve
    stripe_emulator.set_faults(latency_ms=1500)
    answers = in_parallel(10, lambda: create(server))
    codes = sorted(status for status, _, _ in answers)
    assert codes == [200, 200] + [503] * 8
    busy = next(a for a in answers if a[0] == 503)
    assert busy[2]["code"] == "payment_provider_busy"
    assert busy[1]["Retry-After"] == "2"
    assert stripe_emulator.calls()["sessions_created"] == 2


@pytest.mark.slow
def test_a_flood_of_status_polls_leaves_the_webhook_its_reserve(live_server, stripe_emulator):
    # The webhook retrieves the session when it must check the line items (a Dashboard price).
    stripe_emulator.add_price("price_board", 900, "usd", "Hero Me board")
    server = live_server(
        STRIPE_MAX_IN_FLIGHT="4",  # and a reserve of 1, by default
        STRIPE_PRICE_ID="price_board",
        STRIPE_WEBHOOK_SECRET=WHSEC,
    )
    session = stripe_emulator.complete_session(create(server)[2]["session_id"])
    event = event_for(session, "checkout.session.completed")
    stripe_emulator.set_faults(latency_ms=1500)  # every Stripe call from here takes 1.5 s
    with ThreadPoolExecutor(max_workers=10) as pool:
        polls = [pool.submit(call, server.url + STATUS + unknown_id(n)) for n in range(10)]
        # The polls past the cap are refused at once (at least 6 of 10, whatever the reserve):
        # once they are answered, the others hold every place that public traffic may take.
        first_answers = itertools.islice(as_completed(polls, timeout=60), 6)
        assert [poll.result()[0] for poll in first_answers] == [503] * 6
        delivered = call(
            server.url + WEBHOOK,
            "POST",
            {"Content-Type": "application/json", "Stripe-Signature": sign(event)},
            event,
        )
        answers = [poll.result()[0] for poll in polls]
    assert delivered[0] == 200, delivered
    assert sorted(answers) == [404] * 3 + [503] * 7
    assert retrieves(stripe_emulator) == 3 + 1  # the three polls, and the webhook's check


def test_the_idempotency_key_sent_to_stripe_is_namespaced_and_stable(live_server, stripe_emulator):
    server = live_server(DEPLOYMENT_ID="shop-eu", TRUSTED_PROXY_HOPS="1")
    alice = {"Idempotency-Key": "1", "X-Forwarded-For": "203.0.113.5"}
    first, again = create(server, alice), create(server, alice)
    assert first[2]["session_id"] == again[2]["session_id"]
    # Another customer with the same predictable key gets a session of their own.
    bob = create(server, {"Idempotency-Key": "1", "X-Forwarded-For": "198.51.100.8"})
    assert bob[2]["session_id"] != first[2]["session_id"]
    keys = stripe_emulator.idempotency_keys()
    assert len(keys) == 2
    assert all(key.startswith("shop-eu-") and key != "1" for key in keys)
    assert all(len(key) <= 255 for key in keys)


@pytest.mark.slow
def test_another_deployment_never_shares_a_key(live_server, stripe_emulator):
    headers = {"Idempotency-Key": "order-7"}
    one = create(live_server(DEPLOYMENT_ID="shop-eu"), headers)
    two = create(live_server(DEPLOYMENT_ID="shop-us"), headers)
    assert one[0] == two[0] == 200
    assert one[2]["session_id"] != two[2]["session_id"]


def test_a_live_key_from_secret_manager_is_never_sent_to_an_api_base_override(
    live_server, stripe_emulator, sm
):
    live = "sk_live_" + TEST_KEY.removeprefix("sk_test_")
    sm.add_version("demo-project", "stripe-key", live)
    server = live_server(
        STRIPE_SECRET_KEY="",
        STRIPE_SECRET_NAME="projects/demo-project/secrets/stripe-key",
        SECRET_MANAGER_ENDPOINT=sm.endpoint,
    )
    status, _, body = create(server)
    assert (status, body["code"]) == (500, "payment_configuration_error")
    assert stripe_emulator.calls()["total"] == 0
    assert live not in server.logs()


def forwarded(server, lines: list[str], key: str | None = None) -> tuple[int, dict]:
    """A create whose X-Forwarded-For comes as the given header lines, in order."""
    headers = [("Content-Type", "application/json")]
    headers += [("X-Forwarded-For", line) for line in lines]
    if key is not None:
        headers.append(("Idempotency-Key", key))
    answer = send(server, "POST", CREATE, headers, b"{}")
    return answer.status, answer.json()


def test_forwarded_for_split_over_two_lines_is_the_same_client_as_joined(
    live_server, stripe_emulator
):
    # RFC 9110 §5.3: repeated lines are one list, joined in order. Google's front end appends the
    # address it saw, so a client's own line first must not become "the client" when split off.
    server = live_server(CREATE_LIMIT_PER_MINUTE="2", TRUSTED_PROXY_HOPS="1")
    split = [forwarded(server, [f"198.51.100.{n}", "203.0.113.7"])[0] for n in range(4)]
    joined = [forwarded(server, [f"198.51.100.{n}, 203.0.113.8"])[0] for n in range(4)]
    assert split == joined == [200, 200, 429, 429]
    # The per-client idempotency key: the victim's key and body, from another spoofed first line,
    # is the victim's request, not the attacker's choice of a client (nor the victim's session).
    victim = forwarded(server, ["10.0.0.1, 203.0.113.9"], key="1")[1]["session_id"]
    replay = forwarded(server, ["10.0.0.2", "203.0.113.9"], key="1")[1]["session_id"]
    attacker = forwarded(server, ["203.0.113.9", "192.0.2.66"], key="1")[1]["session_id"]
    assert replay == victim
    assert attacker != victim
