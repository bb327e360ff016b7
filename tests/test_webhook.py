"""The Stripe webhook: signature checks, each event type, dedupe, and fulfilment exactly once."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from devtools.stripe_emulator import StripeEmulator
from tests.support import (
    CREATE,
    OTHER_WHSEC,
    STATUS,
    TEST_KEY,
    WEBHOOK,
    WHSEC,
    assert_error,
    completed_session,
    create,
    event_for,
    http_json,
    in_crowd,
    log_records,
    post_event,
    sign,
    status_of,
)

PROJECT = "demo-project"
CROWD = 10


# -- helpers ------------------------------------------------------------------------------------


# -- refused requests ---------------------------------------------------------------------------


def _refusals(payload: bytes) -> dict[str, tuple[bytes, str | None]]:
    now = int(time.time())
    return {
        "unsigned": (payload, None),
        "empty-header": (payload, ""),
        "garbage-header": (payload, "garbage"),
        "forged": (payload, f"t={now},v1={'0' * 64}"),
        "wrong-secret": (payload, sign(payload, OTHER_WHSEC)),
        "tampered-body": (payload.replace(b'"paid"', b'"PAID"', 1), sign(payload)),
        "stale-timestamp": (payload, sign(payload, timestamp=now - 301)),
        "old-scheme-only": (payload, sign(payload).replace("v1=", "v0=")),
    }


@pytest.mark.parametrize("case", list(_refusals(b"")))
def test_bad_signature_is_400_and_nothing_is_processed(
    webhook_client, stripe_emulator, logs, delivered, case
):
    session = completed_session(webhook_client, stripe_emulator)
    event_id = f"evt_{case.replace('-', '')}"
    payload = event_for(session, "checkout.session.completed", event_id)
    body, signature = _refusals(payload)[case]

    assert_error(post_event(webhook_client, body, signature), 400, "invalid_signature")
    assert delivered == []
    assert logs("checkout_fulfilled") == []
    assert logs("stripe_event") == []

    # The refused request left no trace: the genuine delivery of that event id is handled.
    assert post_event(webhook_client, payload).status_code == 200
    assert [r["outcome"] for r in logs("stripe_event")] == ["handled"]
    assert delivered == [session["id"]]


def test_timestamp_within_five_minutes_is_accepted(webhook_client, stripe_emulator, delivered):
    session = completed_session(webhook_client, stripe_emulator)
    payload = event_for(session, "checkout.session.completed")
    signature = sign(payload, timestamp=int(time.time()) - 290)
    assert post_event(webhook_client, payload, signature).status_code == 200
    assert delivered == [session["id"]]


def test_one_valid_signature_among_several_is_enough(webhook_client, stripe_emulator):
    # Stripe sends one v1 per active secret while a secret is being rolled.
    session = completed_session(webhook_client, stripe_emulator)
    payload = event_for(session, "checkout.session.completed")
    other = sign(payload, OTHER_WHSEC).split(",")[1]
    assert post_event(webhook_client, payload, f"{sign(payload)},{other}").status_code == 200


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'{"id": "evt_1"}',
        b'{"id": 7, "type": "checkout.session.completed"}',
        b'{"id": "evt_1", "type": "checkout.session.completed", "data": {"object": null}}',
        b'{"id": "evt_1", "type": "checkout.session.expired", "data": {"object": {"id": "pi_1"}}}',
        b"\xff\xfe not utf-8",
    ],
    ids=["not-json", "array", "no-type", "numeric-id", "no-session", "not-a-session", "not-utf8"],
)
def test_signed_body_that_is_not_a_checkout_event_is_400(webhook_client, delivered, payload):
    assert_error(post_event(webhook_client, payload), 400, "invalid_signature")
    assert delivered == []


def test_body_over_one_mebibyte_is_413_before_verification(webhook_client):
    payload = b'{"id": "evt_big", "pad": "' + b"x" * (1024 * 1024) + b'"}'
    # Unsigned and badly signed alike: verified first, either would be 400 invalid_signature.
    for signature in (None, "t=1,v1=" + "0" * 64):
        assert_error(post_event(webhook_client, payload, signature), 413, "payload_too_large")


def test_no_signing_secret_is_500_webhook_not_configured_and_logged(client, stripe_emulator, logs):
    session = completed_session(client, stripe_emulator)
    payload = event_for(session, "checkout.session.completed")
    body = assert_error(post_event(client, payload), 500, "webhook_not_configured")
    assert "STRIPE_WEBHOOK_SECRET" not in body["error"]  # the detail is for the log
    [line] = [r for r in logs() if r.get("code") == "webhook_not_configured"]
    assert line["severity"] == "ERROR"
    assert "STRIPE_WEBHOOK_SECRET" in line["detail"]
    assert logs("checkout_fulfilled") == []


def test_a_malformed_signing_secret_is_webhook_not_configured(client, configure, logs):
    configure(STRIPE_WEBHOOK_SECRET=TEST_KEY)  # an API key pasted into the wrong variable
    assert_error(post_event(client, b"{}"), 500, "webhook_not_configured")
    assert TEST_KEY not in logs.text + json.dumps(logs())


def test_webhook_path_takes_only_post(webhook_client):
    for method in ("GET", "PUT", "OPTIONS"):
        response = webhook_client.open(WEBHOOK, method=method)
        assert_error(response, 405, "method_not_allowed")
        assert response.headers["Allow"] == "POST"


def test_origin_header_is_ignored_and_no_cors_headers_are_sent(webhook_client, stripe_emulator):
    session = completed_session(webhook_client, stripe_emulator)
    payload = event_for(session, "checkout.session.completed")
    for origin in ("https://evil.example", "http://localhost:5173"):
        response = post_event(webhook_client, payload, Origin=origin)
        assert response.status_code == 200
        assert not [h for h, _ in response.headers if h.startswith("Access-Control-")]
    preflight = webhook_client.options(
        WEBHOOK,
        headers={"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST"},
    )
    assert_error(preflight, 405, "method_not_allowed")  # no preflight approval for browsers
    assert not [h for h, _ in preflight.headers if h.startswith("Access-Control-")]


# -- the signing secret from Secret Manager -----------------------------------------------------


def test_signing_secret_is_read_from_secret_manager(client, configure, stripe_emulator, sm):
    sm.add_version(PROJECT, "stripe-webhook-secret", WHSEC)
    configure(
        STRIPE_WEBHOOK_SECRET_NAME="stripe-webhook-secret",
        GOOGLE_CLOUD_PROJECT=PROJECT,
        SECRET_MANAGER_ENDPOINT=sm.endpoint,
    )
    session = completed_session(client, stripe_emulator)
    payload = event_for(session, "checkout.session.completed")
    assert post_event(client, payload).status_code == 200
    assert post_event(client, payload).status_code == 200
    assert sm.access_count == 1  # read once, then served from memory


def test_secret_manager_outage_is_503_with_retry_after_then_recovers(
    client, configure, stripe_emulator, sm
):
    sm.add_version(PROJECT, "stripe-webhook-secret", WHSEC)
    configure(
        STRIPE_WEBHOOK_SECRET_NAME=f"projects/{PROJECT}/secrets/stripe-webhook-secret",
        SECRET_MANAGER_ENDPOINT=sm.endpoint,
    )
    session = completed_session(client, stripe_emulator)
    payload = event_for(session, "checkout.session.completed")
    sm.set_failure("permission_denied")
    response = post_event(client, payload)
    assert_error(response, 503, "webhook_secret_unavailable")
    assert response.headers["Retry-After"] == "5"
    sm.set_failure(None)
    assert post_event(client, payload).status_code == 200  # Stripe's retry


def test_secret_name_for_a_missing_secret_is_webhook_not_configured(client, configure, sm):
    configure(
        STRIPE_WEBHOOK_SECRET_NAME=f"projects/{PROJECT}/secrets/nope",
        SECRET_MANAGER_ENDPOINT=sm.endpoint,
    )
    assert_error(post_event(client, b"{}"), 500, "webhook_not_configured")


# -- each event type ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["checkout.session.completed", "checkout.session.async_payment_succeeded"]
)
def test_paid_session_event_fulfils_once_and_warms_the_status_cache(
    webhook_client, stripe_emulator, logs, delivered, kind
):
    session = completed_session(webhook_client, stripe_emulator)
    payload = event_for(session, kind, "evt_paid1")

    response = post_event(webhook_client, payload)

    assert response.status_code == 200
    assert response.get_json() == {"received": True}
    assert delivered == [session["id"]]
    [record] = logs("checkout_fulfilled")
    assert record["severity"] == "INFO"
    assert {k: record[k] for k in record if k not in ("severity", "logger", "request_id")} == {
        "message": "checkout_fulfilled",
        "session_id": session["id"],
        "imageId": "img_42",
        "amount_total": 200,
        "currency": "usd",
        "payment_status": "paid",
        "livemode": False,
        "event_id": "evt_paid1",
    }
    retrieves = stripe_emulator.calls()["retrieve_session"]
    assert status_of(webhook_client, session["id"])["payment_status"] == "paid"
    assert stripe_emulator.calls()["retrieve_session"] == retrieves


def test_free_session_is_fulfilled(webhook_client, stripe_emulator, delivered):
    session = completed_session(webhook_client, stripe_emulator, "no_payment_required")
    post_event(webhook_client, event_for(session, "checkout.session.completed"))
    assert delivered == [session["id"]]


def test_completed_but_unpaid_waits_for_the_async_payment(
    webhook_client, stripe_emulator, logs, delivered
):
    session = completed_session(webhook_client, stripe_emulator, "unpaid")
    response = post_event(webhook_client, event_for(session, "checkout.session.completed"))
    assert response.status_code == 200
    assert delivered == []
    [pending] = logs("checkout_payment_pending")
    assert (pending["session_id"], pending["payment_status"]) == (session["id"], "unpaid")

    settled = {**session, "payment_status": "paid"}
    post_event(webhook_client, event_for(settled, "checkout.session.async_payment_succeeded"))
    assert delivered == [session["id"]]
    assert len(logs("checkout_fulfilled")) == 1


def test_a_late_unpaid_event_does_not_hide_a_paid_status(webhook_client, stripe_emulator):
    # Events arrive out of order: `completed` (unpaid) may follow `async_payment_succeeded`.
    session = completed_session(webhook_client, stripe_emulator, "unpaid")
    paid = {**session, "payment_status": "paid"}
    post_event(webhook_client, event_for(paid, "checkout.session.async_payment_succeeded"))
    post_event(webhook_client, event_for(session, "checkout.session.completed"))
    assert status_of(webhook_client, session["id"])["payment_status"] == "paid"


def test_async_payment_failed_is_recorded_and_cached(
    webhook_client, stripe_emulator, logs, delivered
):
    session = completed_session(webhook_client, stripe_emulator, "unpaid")
    payload = event_for(session, "checkout.session.async_payment_failed", "evt_failed1")
    assert post_event(webhook_client, payload).status_code == 200
    assert delivered == []
    [record] = logs("checkout_payment_failed")
    assert record["severity"] == "WARNING"
    assert (record["session_id"], record["event_id"]) == (session["id"], "evt_failed1")
    retrieves = stripe_emulator.calls()["retrieve_session"]
    assert status_of(webhook_client, session["id"])["payment_status"] == "unpaid"
    assert stripe_emulator.calls()["retrieve_session"] == retrieves


def test_expired_is_recorded_and_cached(webhook_client, stripe_emulator, logs, delivered):
    session_id = create(webhook_client, {}).get_json()["session_id"]
    session = stripe_emulator.expire_session(session_id)
    payload = event_for(session, "checkout.session.expired")
    assert post_event(webhook_client, payload).status_code == 200
    assert [r["session_id"] for r in logs("checkout_expired")] == [session_id]
    assert delivered == []
    retrieves = stripe_emulator.calls()["retrieve_session"]
    assert status_of(webhook_client, session_id)["status"] == "expired"
    assert stripe_emulator.calls()["retrieve_session"] == retrieves


def test_other_event_types_are_acknowledged_and_ignored(webhook_client, logs, delivered):
    payload = json.dumps(
        {
            "id": "evt_other1",
            "object": "event",
            "type": "payment_intent.succeeded",
            "data": {"object": {"id": "pi_123", "object": "payment_intent"}},
        }
    ).encode()
    response = post_event(webhook_client, payload)
    assert response.status_code == 200
    assert response.get_json() == {"received": True}
    [record] = logs("stripe_event")
    assert (record["event_id"], record["outcome"]) == ("evt_other1", "ignored")
    assert delivered == []


# -- at least once, out of order ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "record"),
    [
        ("checkout.session.completed", "checkout_fulfilled"),
        ("checkout.session.async_payment_failed", "checkout_payment_failed"),
    ],
)
def test_redelivered_event_is_acknowledged_without_handling_it_again(
    webhook_client, stripe_emulator, logs, kind, record
):
    paid = "paid" if kind == "checkout.session.completed" else "unpaid"
    payload = event_for(completed_session(webhook_client, stripe_emulator, paid), kind)
    for _ in range(3):
        response = post_event(webhook_client, payload)
        assert (response.status_code, response.get_json()) == (200, {"received": True})
    assert len(logs(record)) == 1
    assert [r["outcome"] for r in logs("stripe_event")] == ["handled", "duplicate", "duplicate"]


def test_a_second_event_for_a_fulfilled_session_does_not_fulfil_again(
    webhook_client, stripe_emulator, logs, delivered
):
    session = completed_session(webhook_client, stripe_emulator)
    post_event(webhook_client, event_for(session, "checkout.session.completed"))
    post_event(webhook_client, event_for(session, "checkout.session.async_payment_succeeded"))
    assert delivered == [session["id"]]
    assert len(logs("checkout_fulfilled")) == 1


def test_concurrent_duplicate_deliveries_fulfil_exactly_once(
    function_app, webhook_client, stripe_emulator, logs, deliveries
):
    calls: list[str] = []

    def slow_delivery(session):
        calls.append(session.session_id)
        time.sleep(0.2)  # long enough for every duplicate to arrive while it runs

    deliveries.then = slow_delivery
    payload = event_for(
        completed_session(webhook_client, stripe_emulator), "checkout.session.completed"
    )

    results = in_crowd(
        [lambda: post_event(function_app.test_client(), payload).status_code] * CROWD
    )

    assert results == [200] * CROWD
    assert len(calls) == 1
    assert len(logs("checkout_fulfilled")) == 1


def test_status_call_racing_the_webhook_fulfils_once(
    function_app, webhook_client, stripe_emulator, logs, deliveries
):
    session = completed_session(webhook_client, stripe_emulator)
    retrieves = stripe_emulator.calls()["retrieve_session"]
    calls: list[str] = []

    def delivery_that_waits_for_the_status_call(status):
        calls.append(status.session_id)
        deadline = time.monotonic() + 5
        while stripe_emulator.calls()["retrieve_session"] == retrieves:
            assert time.monotonic() < deadline, "the status call never reached Stripe"
            time.sleep(0.01)
        time.sleep(0.1)  # the status call is now inside fulfil, waiting on this one

    deliveries.then = delivery_that_waits_for_the_status_call
    payload = event_for(session, "checkout.session.completed")
    webhook_done = threading.Event()

    def webhook() -> int:
        try:
            return post_event(function_app.test_client(), payload).status_code
        finally:
            webhook_done.set()

    def status() -> dict[str, Any]:
        while not calls:  # start once the webhook is fulfilling
            time.sleep(0.005)
        return status_of(function_app.test_client(), session["id"])

    webhook_status, body = in_crowd([webhook, status])

    assert webhook_status == 200
    assert body["payment_status"] == "paid"
    assert calls == [session["id"]]
    assert len(logs("checkout_fulfilled")) == 1


# -- fulfilment failures ------------------------------------------------------------------------


def test_failed_fulfilment_is_500_and_stripes_retry_succeeds(
    webhook_client, stripe_emulator, logs, deliveries
):
    attempts: list[str] = []

    def flaky(session):
        attempts.append(session.session_id)
        if len(attempts) == 1:
            raise RuntimeError("the print shop is down")

    deliveries.then = flaky
    session = completed_session(webhook_client, stripe_emulator)
    payload = event_for(session, "checkout.session.completed", "evt_retry1")

    assert_error(post_event(webhook_client, payload), 500, "fulfilment_failed")
    assert logs("checkout_fulfilled") == []
    [failed] = logs("checkout_fulfilment_failed")
    assert (failed["severity"], failed["error_type"]) == ("ERROR", "RuntimeError")
    assert failed["session_id"] == session["id"]

    assert post_event(webhook_client, payload).status_code == 200  # Stripe's retry
    assert attempts == [session["id"], session["id"]]
    [record] = logs("checkout_fulfilled")
    assert record["event_id"] == "evt_retry1"


def test_status_endpoint_fulfils_a_paid_session_once(webhook_client, stripe_emulator, logs):
    session = completed_session(webhook_client, stripe_emulator)
    for _ in range(3):
        assert status_of(webhook_client, session["id"])["status"] == "complete"
    [record] = logs("checkout_fulfilled")
    assert (record["session_id"], record["event_id"]) == (session["id"], None)

    # The webhook arriving afterwards finds the session already fulfilled.
    assert (
        post_event(webhook_client, event_for(session, "checkout.session.completed")).status_code
        == 200
    )
    assert len(logs("checkout_fulfilled")) == 1


def test_status_endpoint_answers_even_if_fulfilment_fails(
    webhook_client, stripe_emulator, logs, deliveries
):
    def broken(session):
        raise RuntimeError("the print shop is down")

    deliveries.then = broken
    session = completed_session(webhook_client, stripe_emulator)
    assert status_of(webhook_client, session["id"]) == {
        "status": "complete",
        "payment_status": "paid",
        "outcome": "paid",
        "amount_refunded": 0,
        "metadata": {"imageId": "img_42"},
    }
    assert len(logs("checkout_fulfilment_failed")) == 1

    deliveries.then = None
    post_event(webhook_client, event_for(session, "checkout.session.completed"))
    assert len(logs("checkout_fulfilled")) == 1  # the webhook still fulfils it


def test_a_failed_fulfilment_is_retried_by_the_next_status_call(
    webhook_client, stripe_emulator, logs, deliveries
):
    def broken(session):
        raise RuntimeError("the print shop is down")

    deliveries.then = broken
    session = completed_session(webhook_client, stripe_emulator)
    assert status_of(webhook_client, session["id"])["status"] == "complete"
    deliveries.then = None
    retrieves = stripe_emulator.calls()["retrieve_session"]
    assert status_of(webhook_client, session["id"])["status"] == "complete"
    assert stripe_emulator.calls()["retrieve_session"] == retrieves + 1  # not served from cache
    assert len(logs("checkout_fulfilled")) == 1
    status_of(webhook_client, session["id"])
    assert stripe_emulator.calls()["retrieve_session"] == retrieves + 1  # now it is


def test_status_of_an_open_or_expired_session_fulfils_nothing(
    webhook_client, stripe_emulator, delivered
):
    session_id = create(webhook_client, {}).get_json()["session_id"]
    status_of(webhook_client, session_id)
    stripe_emulator.expire_session(session_id)
    status_of(webhook_client, session_id)
    assert delivered == []


def test_no_log_line_holds_a_secret(webhook_client, stripe_emulator, logs):
    created = create(webhook_client, {"imageId": "img_1"}).get_json()
    session = stripe_emulator.complete_session(created["session_id"])
    payload = event_for(session, "checkout.session.completed")
    post_event(webhook_client, payload)
    post_event(webhook_client, payload, sign(payload, OTHER_WHSEC))
    status_of(webhook_client, created["session_id"])
    text = logs.text + "".join(json.dumps(r) for r in logs())
    assert logs("checkout_fulfilled")
    for secret in (WHSEC, created["client_secret"], "_secret_", TEST_KEY, "Jenny"):
        assert secret not in text


# -- end to end: the emulator delivers to a live server ----------------------------------------


@pytest.fixture
def live_webhook(live_server, stripe_emulator: StripeEmulator):
    """A live function with the signing secret, and the emulator delivering events to it."""
    live = live_server(STRIPE_WEBHOOK_SECRET=WHSEC)
    stripe_emulator.set_webhook(live.url + WEBHOOK, WHSEC)
    yield live
    stripe_emulator.set_webhook(None)


def test_end_to_end_completion_is_delivered_signed_and_fulfilled_once(
    live_webhook, stripe_emulator
):
    live = live_webhook
    status, created = http_json("POST", live.url + CREATE, {"imageId": "img_e2e"})
    assert status == 200
    session_id = created["session_id"]

    # The customer pays; the emulator, as Stripe, signs and delivers checkout.session.completed.
    status, _ = http_json(
        "POST", f"{stripe_emulator.url}/_emulator/sessions/{session_id}/complete", {}
    )
    assert status == 200
    [delivery] = stripe_emulator.deliveries()
    assert (delivery["type"], delivery["status"]) == ("checkout.session.completed", 200)
    assert json.loads(delivery["body"]) == {"received": True}

    [record] = log_records(live.logs(), "checkout_fulfilled")
    assert record["session_id"] == session_id
    assert record["event_id"] == delivery["event_id"]
    assert (record["imageId"], record["amount_total"], record["currency"]) == (
        "img_e2e",
        200,
        "usd",
    )

    # Stripe redelivers the same event: acknowledged, not fulfilled again.
    again = stripe_emulator.deliver_event(
        session_id, "checkout.session.completed", event_id=delivery["event_id"]
    )
    assert (again["status"], json.loads(again["body"])) == (200, {"received": True})
    assert len(log_records(live.logs(), "checkout_fulfilled")) == 1
    outcomes = [r["outcome"] for r in log_records(live.logs(), "stripe_event")]
    assert outcomes == ["handled", "duplicate"]

    # The status after the webhook is served from the warmed cache: no Stripe retrieve.
    retrieves = stripe_emulator.calls()["retrieve_session"]
    status, body = http_json("GET", f"{live.url}{STATUS}?session_id={session_id}")
    assert (status, body["status"], body["payment_status"]) == (200, "complete", "paid")
    assert stripe_emulator.calls()["retrieve_session"] == retrieves

    text = live.logs()
    for secret in (WHSEC, created["client_secret"], "_secret_", TEST_KEY):
        assert secret not in text


def test_end_to_end_expiry_is_delivered_and_recorded(live_webhook, stripe_emulator):
    live = live_webhook
    _, created = http_json("POST", live.url + CREATE, {})
    session_id = created["session_id"]
    status, _ = http_json(
        "POST", f"{stripe_emulator.url}/_emulator/sessions/{session_id}/expire", {}
    )
    assert status == 200
    assert [d["status"] for d in stripe_emulator.deliveries()] == [200]
    [record] = log_records(live.logs(), "checkout_expired")
    assert record["session_id"] == session_id
    retrieves = stripe_emulator.calls()["retrieve_session"]
    assert http_json("GET", f"{live.url}{STATUS}?session_id={session_id}")[1]["status"] == "expired"
    assert stripe_emulator.calls()["retrieve_session"] == retrieves


def test_live_server_fulfils_once_under_concurrent_duplicates_and_status_calls(
    live_server, stripe_emulator
):
    live = live_server(STRIPE_WEBHOOK_SECRET=WHSEC)
    _, created = http_json("POST", live.url + CREATE, {"imageId": "img_crowd"})
    session_id = created["session_id"]
    session = stripe_emulator.complete_session(session_id)
    payload = event_for(session, "checkout.session.completed")
    signature = sign(payload)

    def deliver() -> int:
        request = urllib.request.Request(
            live.url + WEBHOOK,
            data=payload,
            method="POST",
            headers={"Content-Type": "application/json", "Stripe-Signature": signature},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status

    def poll_status() -> int:
        return http_json("GET", f"{live.url}{STATUS}?session_id={session_id}")[0]

    results = in_crowd([deliver] * CROWD + [poll_status] * 4)

    assert results == [200] * (CROWD + 4)
    [record] = log_records(live.logs(), "checkout_fulfilled")
    assert record["session_id"] == session_id
    outcomes = sorted(r["outcome"] for r in log_records(live.logs(), "stripe_event"))
    assert outcomes == ["duplicate"] * (CROWD - 1) + ["handled"]
