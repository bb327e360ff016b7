"""The Stripe webhook: signature checks, each event type, dedupe, and fulfilment exactly once."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkout.config import load_settings
from checkout.ops.command import run
from checkout.orders.intake import UNSETTLED, Kind, Outcome
from checkout.orders.model import HANDLED_EVENTS, Order
from checkout.orders.session import MARKER_KEY
from checkout.orders.stripe_fields import session_status
from checkout.runtime import Runtime
from devtools.stripe_emulator import StripeEmulator
from tests.support import (
    OTHER_WHSEC,
    STATUS,
    TEST_KEY,
    WEBHOOK,
    WHSEC,
    Deliveries,
    assert_error,
    completed_session,
    create,
    create_session,
    event_for,
    free_port,
    post_event,
    refund,
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
    assert logs("checkout_order_change") == []
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
        b"\xff\xfe not utf-8",
    ],
    ids=["not-json", "array", "no-type", "numeric-id", "not-utf8"],
)
def test_signed_body_that_is_not_a_stripe_event_is_400(webhook_client, delivered, payload):
    assert_error(post_event(webhook_client, payload), 400, "invalid_signature")
    assert delivered == []


@pytest.mark.parametrize(
    "payload",
    [
        b'{"id": "evt_1", "type": "checkout.session.completed", "data": {"object": null}}',
        b'{"id": "evt_1", "type": "checkout.session.expired", "data": {"object": {"id": "pi_1"}}}',
    ],
    ids=["no-session", "not-a-session"],
)
def test_a_signed_event_whose_object_is_not_its_types_is_acknowledged_and_refused(
    webhook_client, delivered, logs, payload
):
    # Stripe signed it: a retry would be the same event, so it is refused once, with a record.
    assert post_event(webhook_client, payload).status_code == 200
    [record] = logs("stripe_event")
    assert (record["outcome"], record["reason"]) == ("refused", "malformed_event")
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
    assert logs("checkout_order_change") == []


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


def test_free_session_is_fulfilled(webhook_client, stripe_emulator, delivered):
    session = completed_session(webhook_client, stripe_emulator, "no_payment_required")
    post_event(webhook_client, event_for(session, "checkout.session.completed"))
    assert delivered == [session["id"]]


def test_a_late_unpaid_event_does_not_hide_a_paid_status(webhook_client, stripe_emulator):
    # Events arrive out of order: `completed` (unpaid) may follow `async_payment_succeeded`.
    session = completed_session(webhook_client, stripe_emulator, "unpaid")
    paid = {**session, "payment_status": "paid"}
    post_event(webhook_client, event_for(paid, "checkout.session.async_payment_succeeded"))
    post_event(webhook_client, event_for(session, "checkout.session.completed"))
    assert status_of(webhook_client, session["id"])["payment_status"] == "paid"


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


# -- fulfilment failures ------------------------------------------------------------------------


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
    assert logs("checkout_order_change")
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


@pytest.mark.parametrize(
    "kind", ["checkout.session.completed", "checkout.session.async_payment_succeeded"]
)
def test_a_paid_event_records_one_paid_change_delivered_once_after_the_answer(
    webhook_client, stripe_emulator, logs, deliveries, kind
):
    session = completed_session(webhook_client, stripe_emulator)
    payload = event_for(session, kind, "evt_paid_once")
    assert post_event(webhook_client, payload).status_code == 200
    assert post_event(webhook_client, payload).status_code == 200  # Stripe's duplicate
    [change] = logs("checkout_order_change")
    assert (change["type"], change["change_id"]) == ("order.paid", f"{session['id']}:paid")
    assert deliveries.calls == [session["id"]]
    outcomes = [r["outcome"] for r in logs("stripe_event")]
    assert outcomes == ["handled", "duplicate"]
    retrieves = stripe_emulator.calls().get("retrieve_session", 0)
    assert status_of(webhook_client, session["id"])["outcome"] == "paid"
    assert stripe_emulator.calls().get("retrieve_session", 0) == retrieves  # the ledger answered


def test_expired_and_failed_sessions_are_recorded_and_answered_from_the_ledger(
    webhook_client, stripe_emulator, logs, deliveries
):
    unpaid = completed_session(webhook_client, stripe_emulator, payment_status="unpaid")
    failed = stripe_emulator.settle_payment(unpaid["id"], "failed")
    assert (
        post_event(
            webhook_client, event_for(failed, "checkout.session.async_payment_failed")
        ).status_code
        == 200
    )
    [change] = logs("checkout_order_change")
    assert change["type"] == "order.payment_failed"
    retrieves = stripe_emulator.calls().get("retrieve_session", 0)
    assert status_of(webhook_client, unpaid["id"])["outcome"] == "failed"
    assert stripe_emulator.calls().get("retrieve_session", 0) == retrieves


# -- one intake: the webhook, the reconciler and the status path record alike -----------------


def _intake_service(base_env: dict[str, str], deliveries: Deliveries) -> Runtime:
    """A process of its own (its own memory ledger), as another instance or a reconcile is."""
    return Runtime.from_settings(load_settings(base_env), deliveries)


def _play(
    stripe_emulator: StripeEmulator, deployment_id: str, data: Any, *, disputes: bool = True
) -> dict[str, Any]:
    """One session's life on the Stripe emulator, drawn by hypothesis: whose it is, how it ends,
    what happens to its payment after; the session as Stripe has it at the end."""
    whose = data.draw(
        st.sampled_from(["ours", "ours", "other_deployment", "unmarked", "other_price"])
    )
    params = {} if whose == "unmarked" else {f"metadata[{MARKER_KEY}]": deployment_id}
    if whose == "other_deployment":
        params[f"metadata[{MARKER_KEY}]"] = "another-deployment"
    if whose == "other_price":
        params["line_items[0][price_data][unit_amount]"] = "300"
    session_id = create_session(stripe_emulator, **params)["id"]
    endings = ["paid", "free", "settled", "failed", "unpaid", "expired"]
    # Not what we sell, and not paid at once: the status path never records it, the webhook
    # records it unpaid until its payment is refused (test_refunds_disputes.py): left out.
    ending = data.draw(st.sampled_from(endings[:2] if whose == "other_price" else endings))
    if ending == "expired":
        return stripe_emulator.expire_session(session_id)
    paid_as = {"paid": "paid", "free": "no_payment_required"}.get(ending, "unpaid")
    session = stripe_emulator.complete_session(session_id, paid_as)
    if ending in ("settled", "failed"):
        session = stripe_emulator.settle_payment(
            session_id, "succeeded" if ending == "settled" else "failed"
        )
    intent = session.get("payment_intent")
    if ending not in ("paid", "settled") or not intent:
        return session
    later = ["refund_part", "refund_all", *(["dispute_won", "dispute_lost"] if disputes else [])]
    steps = data.draw(st.lists(st.sampled_from(later), max_size=2 if disputes else 1))
    for step in steps[: steps.index("refund_all") + 1] if "refund_all" in steps else steps:
        if step.startswith("refund"):
            refund(stripe_emulator, intent, 50 if step == "refund_part" else None)
        else:
            dispute = stripe_emulator.open_dispute(intent)
            stripe_emulator.close_dispute(dispute["id"], step.removeprefix("dispute_"))
    return stripe_emulator.get_session(session_id) or session


async def _undelivered_events_of(service: Runtime, session: dict[str, Any]) -> list[dict[str, Any]]:
    """The events Stripe could not deliver about `session` and its payment, newest first."""
    ids = {session["id"], session.get("payment_intent")} - {None}
    since = int(time.time()) - 3600
    return [
        event
        async for event in service.gateway.undelivered_events_since(since, sorted(HANDLED_EVENTS))
        if {event["data"]["object"].get("id"), event["data"]["object"].get("payment_intent")} & ids
    ]


def _order_of(service: Runtime, session_id: str) -> tuple[dict[str, Any], list[str]] | None:
    """The order's answer and its changes' types, as `service`'s ledger holds it."""

    async def read(service: Runtime) -> Order | None:
        return await service.ledger.order(session_id)

    order = run(service, read)
    return None if order is None else (order.public(), _types(order))


def _types(order: Order) -> list[str]:
    return sorted(entry["change"]["type"] for entry in order.changes.values())


def test_the_stripe_event_record_says_what_the_intake_did_with_the_event(
    webhook_client, stripe_emulator, logs
) -> None:
    # The fields operators read (docs/operations.md): strings, and only those that apply.
    ours = completed_session(webhook_client, stripe_emulator)
    foreign = stripe_emulator.complete_session(create_session(stripe_emulator)["id"], "paid")
    paid = event_for(ours, "checkout.session.completed")
    for payload in (paid, paid, event_for(foreign, "checkout.session.completed")):
        assert post_event(webhook_client, payload).status_code == 200
    fields = ("outcome", "reason", "detail", "session_id", "changes", "published")
    records = [{k: r[k] for k in fields if k in r} for r in logs("stripe_event")]
    handled = {"session_id": ours["id"], "changes": "1", "published": "1"}
    assert records == [
        {"outcome": "handled", **handled},
        {"outcome": "duplicate", **handled, "changes": "0", "published": "0"},
        {"outcome": "ignored", "reason": "not_ours"},
    ]


# Each example is one session's life on the emulator and a few in-process services: a few ms.
SESSION_LIVES = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def webhook_down(stripe_emulator: StripeEmulator) -> None:
    """Stripe delivers every event to an address where nothing listens: each one fails."""
    stripe_emulator.set_webhook(f"http://127.0.0.1:{free_port()}{WEBHOOK}", WHSEC)


@pytest.mark.slow
@SESSION_LIVES
@given(data=st.data())
def test_the_webhook_and_the_reconciler_take_the_same_events_to_the_same_order(
    stripe_emulator, base_env, webhook_down, deliveries, data
) -> None:
    # The same events, taken as the webhook takes them (each as it comes, asking Stripe for a
    # payment it does not know) and as the reconciler does (its window's sessions first, then
    # the events newest first, asking Stripe nothing more), on two ledgers of their own.
    session = _play(stripe_emulator, load_settings(base_env).deployment_id, data)
    webhook = _intake_service(base_env, deliveries)
    reconciler = _intake_service(base_env, deliveries)
    events = run(webhook, lambda service: _undelivered_events_of(service, session))
    assert events, session["id"]

    async def as_the_webhook(service: Runtime) -> list[Outcome]:
        return [await service.intake.record_event(event) for event in reversed(events)]

    async def as_the_reconciler(service: Runtime) -> tuple[list[Outcome], list[Outcome]]:
        window = []
        if session["status"] == "complete":  # what its list of the window's sessions holds
            listed = session_status(session)
            window.append(await service.intake.record_listed_session(listed))
        taken = [await service.intake.record_event(e, look_up_payments=False) for e in events]
        return window, taken[::-1]

    by_webhook = run(webhook, as_the_webhook)
    window, by_reconciler = run(reconciler, as_the_reconciler)
    for one, other in zip(by_webhook, by_reconciler, strict=True):
        assert one.kind == other.kind, (one, other)
        if one.recorded:
            assert one.session_id == other.session_id == session["id"]
        elif not (one.not_ours or other.not_ours):
            assert one.log_fields() == other.log_fields()  # the same reason, the same fields
    made = sum(o.changes for o in [*window, *by_reconciler])
    assert sum(o.changes for o in by_webhook) == made
    assert _order_of(webhook, session["id"]) == _order_of(reconciler, session["id"])


@pytest.mark.slow
@SESSION_LIVES
@given(data=st.data())
def test_the_status_path_records_the_order_the_webhook_records(
    client, stripe_emulator, base_env, webhook_down, deliveries, data
) -> None:
    # Every event and no poll on one instance; on others, a customer who polls once the session
    # has settled and never a webhook: one order, one answer. (A poll sees the charge's refunds
    # as they are now, and not its disputes: one refund at most, no dispute.)
    session = _play(stripe_emulator, load_settings(base_env).deployment_id, data, disputes=False)
    webhook = _intake_service(base_env, deliveries)
    events = run(webhook, lambda service: _undelivered_events_of(service, session))

    async def as_the_webhook(service: Runtime) -> list[Outcome]:
        return [await service.intake.record_event(event) for event in reversed(events)]

    async def as_the_status_path(service: Runtime) -> Outcome:
        read = await service.gateway.retrieve_session(session["id"])
        until = asyncio.get_running_loop().time() + 30  # a hang, not a timing
        return await service.intake.record_polled_session(read, until)

    outcomes = run(webhook, as_the_webhook)
    recorded = _order_of(webhook, session["id"])
    polled = run(_intake_service(base_env, deliveries), as_the_status_path)
    response = client.get(STATUS, query_string={"session_id": session["id"]})
    if not any(o.recorded for o in outcomes):  # not ours, or not what we sell
        assert (recorded, polled.order) == (None, None)
        assert (response.status_code == 404) == polled.not_ours
        return
    assert recorded is not None
    assert response.status_code == 200
    assert response.get_json() == recorded[0]
    if polled.reason == UNSETTLED:  # a delayed payment still settling: only its event records it
        assert recorded[0]["outcome"] == "processing"
        return
    assert polled.kind is Kind.HANDLED
    assert polled.order is not None
    assert (polled.order.public(), _types(polled.order)) == recorded
