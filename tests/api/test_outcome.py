"""The status response's `outcome`: every payment state told truthfully, with a webhook and
without one, and the two agree."""

from __future__ import annotations

from tests.support import STATUS as STATUS_PATH
from tests.support import (
    WHSEC,
    completed_session,
    create,
    event_for,
    http_json,
    log_records,
    post_event,
    status_of,
    wait_for_records,
)


def test_open_then_paid(client, stripe_emulator):
    session_id = create(client, {}).get_json()["session_id"]
    assert status_of(client, session_id)["outcome"] == "open"
    stripe_emulator.complete_session(session_id)
    assert status_of(client, session_id)["outcome"] == "paid"


def test_free_session_is_paid(client, stripe_emulator):
    session_id = create(client, {}).get_json()["session_id"]
    stripe_emulator.complete_session(session_id, "no_payment_required")
    assert status_of(client, session_id)["outcome"] == "paid"


def test_expired(client, stripe_emulator):
    session_id = create(client, {}).get_json()["session_id"]
    stripe_emulator.expire_session(session_id)
    assert status_of(client, session_id)["outcome"] == "expired"


def test_without_a_webhook_a_delayed_payment_is_processing_then_failed(client, stripe_emulator):
    session_id = create(client, {"imageId": "img_9"}).get_json()["session_id"]
    stripe_emulator.complete_session(session_id, "unpaid")
    for _ in range(2):  # not cached while it settles: each poll asks Stripe
        assert status_of(client, session_id) == {
            "status": "complete",
            "payment_status": "unpaid",
            "outcome": "processing",
            "amount_refunded": 0,
            "metadata": {"imageId": "img_9"},
        }

    stripe_emulator.settle_payment(session_id, "failed")  # the bank debit bounced

    body = status_of(client, session_id)
    assert (body["status"], body["payment_status"], body["outcome"]) == (
        "complete",
        "unpaid",
        "failed",
    )
    # Failed is final: cached, so polling it no longer costs Stripe calls.
    retrieves = stripe_emulator.calls()["retrieve_session"]
    assert status_of(client, session_id)["outcome"] == "failed"
    assert stripe_emulator.calls()["retrieve_session"] == retrieves


def test_without_a_webhook_a_delayed_payment_that_succeeds_is_paid_and_fulfilled(
    client, stripe_emulator, delivered
):
    session_id = create(client, {}).get_json()["session_id"]
    stripe_emulator.complete_session(session_id, "unpaid")
    assert status_of(client, session_id)["outcome"] == "processing"
    assert delivered == []
    stripe_emulator.settle_payment(session_id, "succeeded")
    assert status_of(client, session_id)["outcome"] == "paid"
    assert delivered == [session_id]


def test_the_webhooks_async_payment_failed_is_recorded_as_failed(
    client, configure, stripe_emulator, deliveries, delivered
):
    # The review's finding: after async_payment_failed the status still read complete/unpaid,
    # exactly as while the debit was settling.
    configure(STRIPE_WEBHOOK_SECRET=WHSEC)
    session = completed_session(client, stripe_emulator, "unpaid")
    post_event(client, event_for(session, "checkout.session.completed"))
    assert status_of(client, session["id"])["outcome"] == "processing"

    failed = stripe_emulator.settle_payment(session["id"], "failed")
    post_event(client, event_for(failed, "checkout.session.async_payment_failed"))
    # A late redelivery of `completed` (unpaid) does not turn it back into "processing".
    post_event(client, event_for(session, "checkout.session.completed"))

    retrieves = stripe_emulator.calls()["retrieve_session"]
    from_webhook = status_of(client, session["id"])
    assert from_webhook["outcome"] == "failed"
    assert stripe_emulator.calls()["retrieve_session"] == retrieves  # answered from the record
    # The failure is an order change of its own, delivered once; nothing is ever paid.
    assert deliveries.types == ["order.payment_failed"]
    assert delivered == [session["id"]]

    configure(STRIPE_WEBHOOK_SECRET=WHSEC)  # a fresh instance, which never saw the webhook
    assert status_of(client, session["id"]) == from_webhook


def test_with_a_webhook_a_settled_payment_is_paid(client, configure, stripe_emulator, delivered):
    configure(STRIPE_WEBHOOK_SECRET=WHSEC)
    session = completed_session(client, stripe_emulator, "unpaid")
    paid = stripe_emulator.settle_payment(session["id"], "succeeded")
    post_event(client, event_for(paid, "checkout.session.async_payment_succeeded"))
    assert status_of(client, session["id"])["outcome"] == "paid"
    assert delivered == [session["id"]]


def test_end_to_end_the_emulator_fails_a_debit_and_the_live_server_says_failed(
    live_server, stripe_emulator
):
    live = live_server(STRIPE_WEBHOOK_SECRET=WHSEC)
    stripe_emulator.set_webhook(live.url + "/api/checkout/webhook", WHSEC)
    try:
        _, created = http_json("POST", live.url + "/api/checkout/embedded-session", {})
        session_id = created["session_id"]
        stripe_emulator.complete_session(session_id, "unpaid")
        status = f"{live.url}{STATUS_PATH}?session_id={session_id}"
        assert http_json("GET", status)[1]["outcome"] == "processing"
        stripe_emulator.settle_payment(session_id, "failed")
    finally:
        stripe_emulator.set_webhook(None)

    types = [(d["type"], d["status"]) for d in stripe_emulator.deliveries()]
    assert types == [
        ("checkout.session.completed", 200),
        ("checkout.session.async_payment_failed", 200),
    ]
    assert http_json("GET", status)[1]["outcome"] == "failed"
    [change] = log_records(live.logs(), "checkout_order_change")
    assert (change["type"], change["session_id"]) == ("order.payment_failed", session_id)
    # Delivered in-process after the webhook's answer (no topic): wait for it, generously.
    [delivered] = wait_for_records(live, "checkout_order_delivered")
    assert (delivered["type"], delivered["change_id"]) == (
        "order.payment_failed",
        f"{session_id}:payment_failed",
    )
