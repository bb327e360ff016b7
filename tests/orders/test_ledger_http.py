"""Exactly-once fulfilment over HTTP, across live function processes sharing Firestore's emulator.

Each instance is functions-framework serving main.py's `checkout_api`, with DELIVER_ORDER naming
tests/delivery_sink.py's deliver function, which appends one line per run to a file every process
shares. Stripe's events
are signed here, as Stripe signs them, and posted to the instances over real HTTP.
"""

from __future__ import annotations

import contextlib
import json
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
    log_records,
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
            "/databases/(default)/documents/checkout_deployments/local/checkout_orders"
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


# -- faults ------------------------------------------------------------------------------------


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


# -- status on any instance --------------------------------------------------------------------


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_an_unreachable_ledger_leaves_status_to_stripe_and_is_logged_once_per_burst(
    unreachable_ledger, client, stripe_emulator, delivered, logs
) -> None:
    session = completed_session(client, stripe_emulator)
    for _ in range(3):
        response = client.get(STATUS, query_string={"session_id": session["id"]})
        assert response.status_code == 200
        assert response.get_json()["status"] == "complete"
    # Stripe's answer is kept like any other: one Stripe read per session per cache period.
    assert stripe_emulator.calls()["retrieve_session"] == 1
    assert delivered == []
    [degraded] = logs("checkout_ledger_degraded")
    assert degraded["severity"] == "WARNING"
    assert "Firestore" in degraded["detail"]
