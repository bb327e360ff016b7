"""Webhook endpoints (/v1/webhook_endpoints), delivery by enabled_events, and retries."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
import stripe

from devtools.stripe_emulator import StripeEmulator
from tests.stripe_emulator_client import OLD_API_VERSION, WEBHOOK_SECRET, create, helper, sdk
from tests.support import ROOT, free_port, stop_process

# A bound on how long a delivery or retry may take to show up. Generous, because the machine is
# shared: it only says "does not hang", and every wait ends as soon as the awaited thing happens.
WAIT_SECONDS = 15


class Endpoint:
    """A receiving endpoint that answers with the next status of `statuses`, then 200."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.arrived = threading.Condition()
        self.gate: threading.Event | None = None  # when set: answer only once it is set
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with endpoint.arrived:
                    status = endpoint.statuses.pop(0) if endpoint.statuses else 200
                    endpoint.received.append((dict(self.headers), body))
                    endpoint.arrived.notify_all()
                if endpoint.gate is not None:
                    endpoint.gate.wait(WAIT_SECONDS)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def wait_for(self, count: int) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.received) >= count, WAIT_SECONDS), (
                f"{len(self.received)} of {count} deliveries arrived"
            )

    def events(self, secret: str) -> list[stripe.Event]:
        return [
            stripe.Webhook.construct_event(body, headers["Stripe-Signature"], secret)
            for headers, body in self.received
        ]

    def types(self) -> list[str]:
        return [json.loads(body)["type"] for _, body in self.received]


@pytest.fixture
def endpoints() -> Iterator[Callable[[], Endpoint]]:
    made: list[Endpoint] = []

    def make() -> Endpoint:
        made.append(Endpoint())
        return made[-1]

    yield make
    for endpoint in made:
        endpoint.server.shutdown()
        endpoint.server.server_close()


@pytest.fixture
def client(stripe_emulator: StripeEmulator) -> stripe.StripeClient:
    return sdk(stripe_emulator)


def register(client: stripe.StripeClient, url: str, events: list[str], **params: Any) -> Any:
    sent: Any = {"url": url, "enabled_events": events, **params}
    return client.v1.webhook_endpoints.create(params=sent)


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def refund_a_paid_session(client: stripe.StripeClient, emulator: StripeEmulator) -> str:
    session = create(client).id
    emulator.complete_session(session)
    intent = emulator.get_session(session)["payment_intent"]
    client.v1.refunds.create(params={"payment_intent": intent})
    return session


# --- the endpoints API ---------------------------------------------------------------------


def test_an_endpoint_shows_its_secret_only_on_creation(client, stripe_emulator):
    created = register(
        client,
        "https://shop.example/api/checkout/webhook",
        ["checkout.session.completed", "charge.refunded"],
        api_version="2026-10-28.endive",
        description="checkout",
        metadata={"owner": "ops"},
    )
    assert created.id.startswith("we_") and created.object == "webhook_endpoint"
    assert created.secret.startswith("whsec_") and len(created.secret) > 20
    assert (created.status, created.api_version, created.description) == (
        "enabled",
        "2026-10-28.endive",
        "checkout",
    )
    assert created.enabled_events == ["checkout.session.completed", "charge.refunded"]
    assert created.metadata.to_dict() == {"owner": "ops"} and created.livemode is False
    retrieved = client.v1.webhook_endpoints.retrieve(created.id)
    assert "secret" not in retrieved and retrieved.url == created.url
    [listed] = client.v1.webhook_endpoints.list().data
    assert listed.id == created.id and "secret" not in listed


def test_an_endpoint_without_api_version_uses_the_accounts(client, stripe_emulator):
    created = register(client, "https://shop.example/hook", ["*"])
    assert created.api_version is None


def test_an_endpoint_is_updated_but_never_its_api_version(client, stripe_emulator):
    created = register(client, "https://shop.example/hook", ["charge.refunded"])
    updated = client.v1.webhook_endpoints.update(
        created.id,
        params={
            "url": "https://shop.example/new",
            "enabled_events": ["charge.refunded", "charge.dispute.created"],
            "description": "new",
            "metadata": {"owner": "ops"},
        },
    )
    assert (updated.url, updated.description) == ("https://shop.example/new", "new")
    assert updated.enabled_events == ["charge.refunded", "charge.dispute.created"]
    assert "secret" not in updated
    disabled = client.v1.webhook_endpoints.update(created.id, params={"disabled": True})
    assert disabled.status == "disabled"
    assert client.v1.webhook_endpoints.update(created.id, params={"disabled": False}).status == (
        "enabled"
    )
    version: Any = {"api_version": OLD_API_VERSION}
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.webhook_endpoints.update(created.id, params=version)
    assert (caught.value.code, caught.value.param) == ("parameter_unknown", "api_version")


def test_an_endpoint_is_deleted(client, stripe_emulator):
    created = register(client, "https://shop.example/hook", ["*"])
    deleted = client.v1.webhook_endpoints.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.webhook_endpoints.retrieve(created.id)
    assert (caught.value.http_status, caught.value.code) == (404, "resource_missing")
    assert client.v1.webhook_endpoints.list().data == []


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"enabled_events": ["*"]}, "url"),
        ({"url": "https://shop.example/hook"}, "enabled_events"),
        ({"url": "not a url", "enabled_events": ["*"]}, "url"),
        ({"url": "https://shop.example/hook", "enabled_events": ["Charge Refunded"]}, None),
        ({"url": "https://s.example/h", "enabled_events": ["*"], "api_version": "v2"}, None),
        ({"url": "https://s.example/h", "enabled_events": ["*"], "colour": "red"}, "colour"),
    ],
)
def test_invalid_endpoints_are_refused(client, stripe_emulator, params, param):
    sent: Any = params
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.webhook_endpoints.create(params=sent)
    assert caught.value.http_status == 400
    if param is not None:
        assert caught.value.param == param
    assert client.v1.webhook_endpoints.list().data == []


def test_endpoints_are_per_mode_and_live_ones_need_https(client, stripe_emulator):
    register(client, "http://127.0.0.1:9/hook", ["*"])  # test mode takes http
    live = sdk(stripe_emulator, "sk_live_emulator")
    assert live.v1.webhook_endpoints.list().data == []
    with pytest.raises(stripe.InvalidRequestError):
        register(live, "http://shop.example/hook", ["*"])
    assert register(live, "https://shop.example/hook", ["*"]).livemode is True


def test_endpoints_page_newest_first_and_reset_forgets_them(client, stripe_emulator):
    made = [register(client, f"https://shop.example/{i}", ["*"]).id for i in range(3)]
    listed = [
        e.id for e in client.v1.webhook_endpoints.list(params={"limit": 2}).auto_paging_iter()
    ]
    assert listed == made[::-1]
    stripe_emulator.reset()
    assert client.v1.webhook_endpoints.list().data == []


# --- delivery ------------------------------------------------------------------------------


def test_events_go_to_each_enabled_endpoint_that_subscribes(client, stripe_emulator, endpoints):
    refunds, everything, disabled = endpoints(), endpoints(), endpoints()
    only_refunds = register(client, refunds.url, ["charge.refunded"])
    all_events = register(client, everything.url, ["*"])
    off = register(client, disabled.url, ["*"])
    client.v1.webhook_endpoints.update(off.id, params={"disabled": True})

    refund_a_paid_session(client, stripe_emulator)
    everything.wait_for(3)
    refunds.wait_for(1)
    assert everything.types() == [
        "checkout.session.completed",
        "charge.refunded",
        "refund.created",
    ]
    assert refunds.types() == ["charge.refunded"]
    assert disabled.received == []
    # Each endpoint's events are signed with its own secret, and only with it.
    assert [e.type for e in refunds.events(only_refunds.secret)] == ["charge.refunded"]
    assert len(everything.events(all_events.secret)) == 3
    with pytest.raises(stripe.SignatureVerificationError):
        refunds.events(all_events.secret)
    [event] = client.v1.events.list(params={"type": "charge.refunded"}).data
    assert (event.pending_webhooks, stripe_emulator.event_deliveries(event.id)["delivered"]) == (
        0,
        True,
    )


def test_set_webhook_still_gets_every_event_alongside_endpoints(client, stripe_emulator, endpoints):
    implicit, registered = endpoints(), endpoints()
    register(client, registered.url, ["checkout.session.completed"])
    stripe_emulator.set_webhook(implicit.url, WEBHOOK_SECRET)
    try:
        refund_a_paid_session(client, stripe_emulator)
        implicit.wait_for(3)
    finally:
        stripe_emulator.set_webhook(None)
    assert [e.type for e in implicit.events(WEBHOOK_SECRET)] == [
        "checkout.session.completed",
        "charge.refunded",
        "refund.created",
    ]
    assert registered.types() == ["checkout.session.completed"]


def test_an_endpoint_gets_events_in_its_api_version(client, stripe_emulator, endpoints):
    old, current = endpoints(), endpoints()
    old_endpoint = register(client, old.url, ["*"], api_version=OLD_API_VERSION)
    register(client, current.url, ["*"])
    session = create(client).id
    stripe_emulator.complete_session(session)
    [old_event] = old.events(old_endpoint.secret)
    assert old_event.api_version == OLD_API_VERSION
    assert old_event.data.object.ui_mode == "embedded"  # the name that version knows
    current_event = json.loads(current.received[0][1])
    assert (current_event["api_version"], current_event["data"]["object"]["ui_mode"]) == (
        "2026-10-28.endive",
        "embedded_page",
    )
    assert current_event["id"] == old_event.id
    attempts = stripe_emulator.event_deliveries(old_event.id)["attempts"]
    assert {a["endpoint"]: a["api_version"] for a in attempts} == {
        e.id: e.api_version or "2026-10-28.endive" for e in client.v1.webhook_endpoints.list().data
    }


# --- retries -------------------------------------------------------------------------------


def test_a_failed_delivery_is_retried_until_it_succeeds(client, stripe_emulator, endpoints):
    endpoint = endpoints()
    endpoint.statuses = [500, 503]
    secret = register(client, endpoint.url, ["checkout.session.completed"]).secret
    stripe_emulator.set_retry_schedule([0.01, 0.01, 0.01])
    session = create(client).id
    stripe_emulator.complete_session(session)
    endpoint.wait_for(3)
    events = endpoint.events(secret)  # each attempt signed afresh, all the same event
    assert len({e.id for e in events}) == 1
    event_id = events[0].id
    wait_until(lambda: stripe_emulator.event_deliveries(event_id)["delivered"])
    state = stripe_emulator.event_deliveries(event_id)
    assert [(a["attempt"], a["status"]) for a in state["attempts"]] == [
        (1, 500),
        (2, 503),
        (3, 200),
    ]
    assert client.v1.events.list(params={"delivery_success": False}).data == []


def test_retries_are_bounded_then_the_event_stays_undelivered(client, stripe_emulator, endpoints):
    endpoint = endpoints()
    endpoint.statuses = [500] * 10
    register(client, endpoint.url, ["*"])
    stripe_emulator.set_retry_schedule([0.01, 0.01])
    stripe_emulator.complete_session(create(client).id)
    [event] = client.v1.events.list().data
    wait_until(lambda: stripe_emulator.event_deliveries(event.id)["failed"] != [])
    state = stripe_emulator.event_deliveries(event.id)
    assert [a["status"] for a in state["attempts"]] == [500, 500, 500]  # first + 2 retries
    assert (state["delivered"], state["pending"]) == (False, [])
    assert len(endpoint.received) == 3
    [undelivered] = client.v1.events.list(params={"delivery_success": False}).data
    assert (undelivered.id, undelivered.pending_webhooks) == (event.id, 1)


def test_a_connection_error_is_retried_too(client, stripe_emulator, endpoints):
    created = register(client, f"http://127.0.0.1:{free_port()}/hook", ["*"])
    stripe_emulator.set_retry_schedule([0.01])
    stripe_emulator.complete_session(create(client).id)
    [event] = client.v1.events.list().data
    wait_until(lambda: stripe_emulator.event_deliveries(event.id)["failed"] == [created.id])
    attempts = stripe_emulator.event_deliveries(event.id)["attempts"]
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, 0), (2, 0)]


def test_stripes_schedule_compressed_by_a_factor_over_http(stripe_emulator):
    response = helper(stripe_emulator, "POST", "retries", factor=36000)
    assert response.json() == {"schedule": [0.1, 0.2, 0.4]}
    assert helper(stripe_emulator, "GET", "retries").json() == {"schedule": [0.1, 0.2, 0.4]}
    assert stripe_emulator.set_retry_schedule([]) == ()
    bad = helper(stripe_emulator, "POST", "retries", schedule=[-1])
    assert bad.status_code == 400
    stripe_emulator.set_retry_schedule(factor=3600)
    stripe_emulator.reset()  # back to the constructor's: none
    assert helper(stripe_emulator, "GET", "retries").json() == {"schedule": []}


def test_a_retry_stops_when_its_endpoint_is_deleted(client, stripe_emulator, endpoints):
    endpoint = endpoints()
    endpoint.statuses = [500] * 10
    endpoint.gate = threading.Event()
    created = register(client, endpoint.url, ["*"])
    stripe_emulator.set_retry_schedule([0.01])
    session = create(client).id
    client.v1.checkout.sessions.expire(session)  # delivered from a thread of its own
    endpoint.wait_for(1)
    client.v1.webhook_endpoints.delete(created.id)  # while the first attempt is unanswered
    endpoint.gate.set()
    [event] = client.v1.events.list().data
    wait_until(lambda: stripe_emulator.event_deliveries(event.id)["failed"] == [created.id])
    assert len(endpoint.received) == 1


def test_reset_drops_pending_retries(client, stripe_emulator, endpoints):
    endpoint = endpoints()
    endpoint.statuses = [500] * 10
    stripe_emulator.set_webhook(endpoint.url, WEBHOOK_SECRET)
    try:
        stripe_emulator.set_retry_schedule([0.05])
        dropped = create(client).id
        stripe_emulator.complete_session(dropped)
        stripe_emulator.reset()
        stripe_emulator.set_retry_schedule([0.05])
        kept = create(client).id
        stripe_emulator.complete_session(kept)
        # Retries run in the order they are due: once `kept`'s has run, `dropped`'s (due
        # earlier) would have too, had reset() not dropped it.
        endpoint.wait_for(3)
    finally:
        stripe_emulator.set_webhook(None)
    sessions = [json.loads(body)["data"]["object"]["id"] for _, body in endpoint.received]
    assert sessions == [dropped, kept, kept]


def retry_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("stripe-emulator-retries")}


def test_stop_ends_the_retry_thread():
    endpoint = Endpoint()
    endpoint.statuses = [500] * 10
    others = retry_threads()  # the session's emulator may have one of its own
    try:
        emulator = StripeEmulator(retry_schedule=(60,))
        with emulator:
            emulator.set_webhook(endpoint.url, WEBHOOK_SECRET)
            emulator.complete_session(create(sdk(emulator)).id)
            [thread] = retry_threads() - others  # a retry is waiting, a minute away
        # stop() returned, so the thread was joined: no retry outlives the emulator.
        assert not thread.is_alive()
        assert len(endpoint.received) == 1
    finally:
        endpoint.server.shutdown()
        endpoint.server.server_close()


def test_the_command_line_sets_the_retry_schedule():
    port = free_port()
    command = ["-m", "devtools.stripe_emulator", "--port", str(port), "--retry-factor", "36000"]
    process = subprocess.Popen(
        [sys.executable, *command],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().startswith("Stripe emulator listening on")
        schedule = requests.get(f"http://127.0.0.1:{port}/_emulator/retries", timeout=10).json()
        assert schedule == {"schedule": [0.1, 0.2, 0.4]}
    finally:
        stop_process(process)
