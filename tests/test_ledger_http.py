"""Exactly-once fulfilment over HTTP, across live function processes sharing Firestore's emulator.

Each instance is functions-framework serving main.py's `checkout_api`, with DELIVER_ORDER naming
tests/delivery_sink.py's deliver function, which appends one line per run to a file every process
shares. Stripe's events
are signed here, as Stripe signs them, and posted to the instances over real HTTP.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.loopback import free_port
from devtools.stripe_emulator import StripeEmulator
from tests.firestore_emulator import Firestore
from tests.support import (
    CREATE,
    STATUS,
    WEBHOOK,
    WHSEC,
    LiveServer,
    assert_error,
    completed_session,
    event_for,
    in_crowd,
    log_records,
    read_document,
    sign,
)

COMPLETED = "checkout.session.completed"
SUCCEEDED = "checkout.session.async_payment_succeeded"
EXPIRED = "checkout.session.expired"
LEASE_SECONDS = 4
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status_code, self.headers, self._body = status, headers, body

    def get_json(self) -> Any:
        return json.loads(self._body)

    def get_data(self, as_text: bool = False) -> Any:
        return self._body.decode() if as_text else self._body


def call(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with _opener.open(request, timeout=60) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers, error.read())


def post_event(server: LiveServer, payload: bytes) -> Answer:
    headers = {"Stripe-Signature": sign(payload), "Content-Type": "application/json"}
    return call(server.url + WEBHOOK, payload, headers)


def status_on(server: LiveServer, session_id: str) -> dict[str, Any]:
    answer = call(f"{server.url}{STATUS}?session_id={session_id}")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_json()


def deliver_until_handled(server: LiveServer, payload: bytes, seconds: float = 40) -> Answer:
    """Redeliver as Stripe does until a 200; each refusal must be a retryable 503."""
    deadline = time.monotonic() + seconds
    while True:
        answer = post_event(server, payload)
        if answer.status_code == 200:
            return answer
        assert answer.status_code == 503, answer.get_data(as_text=True)
        assert answer.headers["Retry-After"]
        assert time.monotonic() < deadline, answer.get_data(as_text=True)
        time.sleep(0.5)


class Instances:
    """Live function processes sharing this test's Firestore project and one delivery sink."""

    def __init__(self, firestore: Firestore, base_env: dict[str, str], tmp: Path) -> None:
        self.firestore = firestore
        self.sink = tmp / "deliveries"
        self._tmp = tmp
        self._env = {
            **base_env,
            **firestore.env(LEDGER_LEASE_SECONDS=str(LEASE_SECONDS)),
            "STRIPE_WEBHOOK_SECRET": WHSEC,
            "DELIVERY_SINK": str(self.sink),
            "DELIVER_ORDER": "tests.delivery_sink:deliver_to_sink",
        }
        self.servers: list[LiveServer] = []

    def start(self, count: int = 1, **env: str) -> list[LiveServer]:
        for _ in range(count):
            log = self._tmp / f"instance-{len(self.servers)}.log"
            self.servers.append(LiveServer({**self._env, **env}, log))
        return self.servers[-count:]

    def deliveries(self) -> list[tuple[int, str, float]]:
        lines = self.sink.read_text().splitlines() if self.sink.exists() else []
        return [(int(pid), sid, float(at)) for pid, sid, at in (line.split() for line in lines)]

    def records(self, message: str) -> list[dict[str, Any]]:
        return [r for s in self.servers for r in log_records(s.logs(), message)]

    def order_ids(self) -> list[str]:
        """The ids of every document in this project's checkout_orders, read over REST."""
        url = (
            f"http://{self.firestore.host}/v1/projects/{self.firestore.project}"
            "/databases/(default)/documents/checkout_orders"
        )
        documents = call(url, headers={"Authorization": "Bearer owner"}).get_json()
        return [d["name"].rsplit("/", 1)[1] for d in documents.get("documents", [])]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def instances(firestore: Firestore, base_env: dict[str, str], tmp_path: Path):
    started = Instances(firestore, base_env, tmp_path)
    yield started
    started.stop()


def paid_session(server: LiveServer, stripe_emulator: StripeEmulator, **complete: Any) -> dict:
    body = json.dumps({"imageId": f"img_{uuid.uuid4().hex[:8]}"}).encode()
    created = call(server.url + CREATE, body, {"Content-Type": "application/json"})
    assert created.status_code == 200, created.get_data(as_text=True)
    return stripe_emulator.complete_session(created.get_json()["session_id"], **complete)


def retrieves(stripe_emulator: StripeEmulator) -> int:
    return stripe_emulator.calls().get("retrieve_session", 0)


# -- several instances at once -----------------------------------------------------------------


@pytest.mark.firestore
@pytest.mark.slow
def test_duplicate_deliveries_across_three_instances_fulfil_once(
    instances: Instances, stripe_emulator: StripeEmulator
) -> None:
    servers = instances.start(3)
    session = paid_session(servers[0], stripe_emulator)
    payload = event_for(session, COMPLETED)
    webhooks: list[Callable[[], Any]] = [
        functools.partial(post_event, servers[n % 3], payload) for n in range(12)
    ]
    statuses: list[Callable[[], Any]] = [
        functools.partial(status_on, servers[n % 3], session["id"]) for n in range(6)
    ]
    answers = in_crowd(webhooks + statuses)

    for answer in answers[:12]:
        assert not isinstance(answer, BaseException), answer
        # A duplicate that cannot learn the outcome in time is told to retry, never told 200.
        assert answer.status_code in (200, 503), answer.get_data(as_text=True)
        if answer.status_code == 503:
            assert_error(answer, 503, "fulfilment_in_progress")
            assert answer.headers["Retry-After"]
    for answer in answers[12:]:
        assert answer == {
            "status": "complete",
            "payment_status": "paid",
            "outcome": "paid",
            "metadata": {"imageId": session["metadata"]["imageId"]},
        }
    for server in servers:  # Stripe's retries of any 503, to each instance
        deliver_until_handled(server, payload)

    assert [sid for _, sid, _ in instances.deliveries()] == [session["id"]]
    [fulfilled] = instances.records("checkout_fulfilled")
    assert fulfilled["session_id"] == session["id"]
    assert instances.order_ids() == [session["id"]]
    order = read_document(instances.firestore, "checkout_orders", session["id"])
    assert order["fulfilled_at"] is not None
    assert order["claim"] is None
    handled = read_document(instances.firestore, "checkout_events", json.loads(payload)["id"])
    assert handled["session_id"] == session["id"]


@pytest.mark.firestore
@pytest.mark.slow
def test_completed_then_async_payment_succeeded_on_two_instances_fulfil_once(
    instances: Instances, stripe_emulator: StripeEmulator
) -> None:
    first, second = instances.start(2)
    session = paid_session(first, stripe_emulator)
    completed, succeeded = event_for(session, COMPLETED), event_for(session, SUCCEEDED)

    assert post_event(first, completed).status_code == 200
    assert post_event(second, succeeded).status_code == 200
    assert post_event(second, completed).status_code == 200  # Stripe's redelivery, elsewhere

    assert len(instances.deliveries()) == 1
    assert len(instances.records("checkout_fulfilled")) == 1
    outcomes = [r["outcome"] for r in instances.records("stripe_event")]
    assert outcomes == ["handled", "handled", "duplicate"]
    order = read_document(instances.firestore, "checkout_orders", session["id"])
    assert sorted(order["event_ids"]) == sorted(
        json.loads(event)["id"] for event in (completed, succeeded)
    )


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.firestore
@pytest.mark.slow
def test_an_instance_killed_mid_delivery_is_taken_over_after_its_lease(
    instances: Instances, stripe_emulator: StripeEmulator
) -> None:
    [doomed] = instances.start(1, DELIVERY_HOLD_SECONDS="120")
    [survivor] = instances.start(1)
    session = paid_session(survivor, stripe_emulator)
    payload = event_for(session, COMPLETED)

    pending = _post_in_background(doomed, payload, instances)
    [(worker, _, _)] = instances.deliveries()
    os.kill(worker, signal.SIGKILL)  # the instance dies holding the claim
    pending.join(timeout=10)
    claim = read_document(instances.firestore, "checkout_orders", session["id"])["claim"]
    assert claim is not None

    answer = deliver_until_handled(survivor, payload, seconds=LEASE_SECONDS + 30)
    assert answer.get_json() == {"received": True}

    (first, _, _), (_, _, delivered_at) = instances.deliveries()
    assert first == worker
    assert delivered_at >= claim["expires_at"].timestamp()  # not before the lease ran out
    [taken_over] = instances.records("checkout_claim_taken_over")
    assert taken_over["claim_owner"] == claim["owner"]
    assert len(instances.records("checkout_fulfilled")) == 1
    order = read_document(instances.firestore, "checkout_orders", session["id"])
    assert order["fulfilled_at"] is not None
    assert order["claim"] is None


def _post_in_background(
    server: LiveServer, payload: bytes, instances: Instances
) -> threading.Thread:
    """Start a delivery that will hang in `deliver_order`; return once it is delivering."""
    thread = threading.Thread(target=lambda: _ignore_errors(post_event, server, payload))
    thread.start()
    deadline = time.monotonic() + 30
    while not instances.deliveries():
        assert time.monotonic() < deadline, server.logs()
        time.sleep(0.02)
    return thread


def _ignore_errors(function: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(OSError):  # the connection dies with the instance
        function(*args)


@pytest.mark.firestore
@pytest.mark.slow
def test_a_stopped_firestore_is_503_and_the_redelivery_after_restart_fulfils_once(
    instances: Instances, stripe_emulator: StripeEmulator
) -> None:
    [server] = instances.start(1)
    session = paid_session(server, stripe_emulator)
    payload = event_for(session, COMPLETED)
    emulator = instances.firestore.emulator

    emulator.stop()
    try:
        answer = post_event(server, payload)
        assert_error(answer, 503, "ledger_unavailable")
        assert answer.headers["Retry-After"]
        assert instances.deliveries() == []  # nothing delivered, nothing marked
        # The status endpoint still answers, from Stripe.
        assert status_on(server, session["id"])["status"] == "complete"
    finally:
        emulator.start()

    deliver_until_handled(server, payload)
    assert post_event(server, payload).status_code == 200  # and once more: a duplicate
    assert len(instances.deliveries()) == 1
    assert len(instances.records("checkout_fulfilled")) == 1


# -- status on any instance --------------------------------------------------------------------


@pytest.mark.firestore
@pytest.mark.slow
def test_status_on_another_instance_comes_from_the_ledger_without_stripe(
    instances: Instances, stripe_emulator: StripeEmulator
) -> None:
    fulfiller, other = instances.start(2)
    paid = paid_session(fulfiller, stripe_emulator)
    body = json.dumps({"imageId": "img_expiring"}).encode()
    opened = call(fulfiller.url + CREATE, body, {"Content-Type": "application/json"}).get_json()
    expired = stripe_emulator.expire_session(opened["session_id"])
    assert post_event(fulfiller, event_for(paid, COMPLETED)).status_code == 200
    assert post_event(fulfiller, event_for(expired, EXPIRED)).status_code == 200

    before = retrieves(stripe_emulator)
    assert status_on(other, paid["id"]) == {
        "status": "complete",
        "payment_status": "paid",
        "outcome": "paid",
        "metadata": {"imageId": paid["metadata"]["imageId"]},
    }
    assert status_on(other, expired["id"]) == {
        "status": "expired",
        "payment_status": "unpaid",
        "outcome": "expired",
        "metadata": {"imageId": "img_expiring"},
    }
    assert retrieves(stripe_emulator) == before  # 0 retrieves: the ledger answered
    assert len(instances.deliveries()) == 1  # and nothing was fulfilled again


# -- Firestore unreachable, in process (no emulator needed) ------------------------------------


@pytest.fixture
def unreachable_ledger(configure) -> None:
    # Nothing listens on this port: every Firestore call is refused.
    configure(
        ORDER_LEDGER="firestore",
        FIRESTORE_EMULATOR_HOST=f"127.0.0.1:{free_port()}",
        GOOGLE_CLOUD_PROJECT="demo-unreachable",
        STRIPE_WEBHOOK_SECRET=WHSEC,
    )


def test_an_unreachable_ledger_makes_the_webhook_503_and_marks_nothing(
    unreachable_ledger, client, stripe_emulator, delivered
) -> None:
    session = completed_session(client, stripe_emulator)
    payload = event_for(session, COMPLETED)
    answer = client.post(
        WEBHOOK,
        data=payload,
        headers={"Stripe-Signature": sign(payload)},
        content_type="application/json",
    )
    assert_error(answer, 503, "ledger_unavailable")
    assert answer.headers["Retry-After"]
    assert delivered == []


def test_an_unreachable_ledger_leaves_status_to_stripe_and_is_logged_once_per_burst(
    unreachable_ledger, client, stripe_emulator, delivered, logs
) -> None:
    session = completed_session(client, stripe_emulator)
    for _ in range(3):
        response = client.get(STATUS, query_string={"session_id": session["id"]})
        assert response.status_code == 200
        assert response.get_json()["status"] == "complete"
    assert stripe_emulator.calls()["retrieve_session"] == 3  # nothing cached: never fulfilled
    assert delivered == []
    [degraded] = logs("checkout_ledger_degraded")
    assert degraded["severity"] == "WARNING"
    assert "Firestore" in degraded["detail"]
