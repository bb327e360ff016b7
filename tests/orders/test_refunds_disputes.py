"""An order's life after payment: refunds and disputes take access away, on every instance, once.

The Stripe emulator refunds (POST /v1/refunds) and opens and closes disputes, and delivers the
signed events to a live server, as Stripe does. Where the rule is about instances, two live
servers share Google's Firestore emulator and publish to its Pub/Sub emulator.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import requests

from checkout.orders.session import MARKER_KEY
from devtools.loopback import free_port
from tests.firestore_emulator import Firestore
from tests.pubsub_emulator import PubSub
from tests.support import (
    CREATE,
    STATUS,
    TEST_KEY,
    WEBHOOK,
    WHSEC,
    LiveServer,
    create_session,
    http_json,
    log_records,
    refund,
    sign,
    wait_for_records,
)


def hooked(live_server, stripe_emulator, **env: str) -> LiveServer:
    """A live server that checks our signing secret, and the emulator's webhooks sent to it."""
    server = live_server(STRIPE_WEBHOOK_SECRET=WHSEC, **env)
    stripe_emulator.set_webhook(f"{server.url}{WEBHOOK}", WHSEC)
    return server


def paid(server: LiveServer, stripe_emulator) -> dict[str, Any]:
    status, created = http_json("POST", f"{server.url}{CREATE}", {"imageId": "img_9"})
    assert status == 200, created
    return stripe_emulator.complete_session(created["session_id"], "paid")


def answer(server: LiveServer, session_id: str) -> dict[str, Any]:
    status, body = http_json("GET", f"{server.url}{STATUS}?session_id={session_id}")
    assert status == 200, body
    return body


def eventually(server: LiveServer, session_id: str, outcome: str) -> dict[str, Any]:
    """The answer once it says `outcome`: polled, with a generous bound (a hang, not a timing)."""
    body: dict[str, Any] = {}
    for _ in range(300):
        body = answer(server, session_id)
        if body["outcome"] == outcome:
            return body
        time.sleep(0.1)
    raise AssertionError(f"still {body} after 30 s")


def deliveries_to(server: LiveServer) -> list[dict[str, Any]]:
    return [r for r in log_records(server.logs(), "stripe_event") if r.get("outcome") != "ignored"]


def changes(server: LiveServer) -> list[str]:
    return [r["change_id"] for r in log_records(server.logs(), "checkout_order_change")]


def test_a_full_refund_reaches_a_second_instance_within_its_bound_once(
    live_server, stripe_emulator, firestore: Firestore, pubsub: PubSub
) -> None:
    env = {
        **firestore.env(),
        **pubsub.env(),
        "STRIPE_WEBHOOK_SECRET": WHSEC,
        "STATUS_PAID_TTL_SECONDS": "0.5",
    }
    first, second = live_server(**env), live_server(**env)
    stripe_emulator.set_webhook(f"{first.url}{WEBHOOK}", WHSEC)
    session = paid(first, stripe_emulator)
    assert answer(second, session["id"])["outcome"] == "paid"  # cached on the second now
    refund(stripe_emulator, session["payment_intent"])
    body = eventually(second, session["id"], "refunded")
    assert body["amount_refunded"] == 200
    types = [m.attributes["type"] for m in pubsub.messages(timeout=30, count=2)]
    assert sorted(types) == ["order.paid", "order.refunded"]
    # Stripe's duplicate delivery of the refund, to the other instance, changes nothing.
    [refunded] = [e for e in stripe_emulator.deliveries() if e.get("type") == "charge.refunded"]
    again = stripe_emulator.deliver_event(
        "", "charge.refunded", url=f"{second.url}{WEBHOOK}", event_id=refunded["event_id"]
    )
    assert again["status"] == 200
    assert answer(second, session["id"])["outcome"] == "refunded"
    assert pubsub.messages(timeout=1.0) == []  # waits for nothing: no second order.refunded
    assert [c.split(":")[1] for c in changes(first) + changes(second)] == ["paid", "refunded"]


def test_a_partial_refund_stays_paid_with_the_amount_and_one_change(
    live_server, stripe_emulator
) -> None:
    server = hooked(live_server, stripe_emulator)
    session = paid(server, stripe_emulator)
    refund(stripe_emulator, session["payment_intent"], amount=50)
    for _ in range(300):  # until the refund's event is applied (bounded, generous: a hang)
        body = answer(server, session["id"])
        if body["amount_refunded"] == 50:
            break
        time.sleep(0.1)
    assert (body["outcome"], body["amount_refunded"]) == ("paid", 50)
    assert changes(server) == [f"{session['id']}:paid", f"{session['id']}:partially_refunded_50"]


def test_a_dispute_is_disputed_with_a_warning_then_won_is_paid_and_lost_is_disputed(
    live_server, stripe_emulator
) -> None:
    server = hooked(live_server, stripe_emulator, STATUS_PAID_TTL_SECONDS="0.1")
    won, lost = paid(server, stripe_emulator), paid(server, stripe_emulator)
    won_dispute = stripe_emulator.open_dispute(won["payment_intent"])
    lost_dispute = stripe_emulator.open_dispute(lost["payment_intent"])
    eventually(server, won["id"], "disputed")
    eventually(server, lost["id"], "disputed")
    warnings = log_records(server.logs(), "checkout_dispute_opened")
    assert {w["session_id"] for w in warnings} == {won["id"], lost["id"]}
    for warning in warnings:
        assert warning["severity"] == "WARNING"
        assert warning["dispute_amount"] == 200
        assert warning["evidence_due_by"].endswith("Z")
    stripe_emulator.close_dispute(won_dispute["id"], "won")
    stripe_emulator.close_dispute(lost_dispute["id"], "lost")
    eventually(server, won["id"], "paid")
    eventually(server, lost["id"], "disputed")
    assert sorted(c.split(":")[1] for c in changes(server) if c.startswith(won["id"])) == [
        f"dispute_won_{won_dispute['id']}",
        f"disputed_{won_dispute['id']}",
        "paid",
    ]
    assert sorted(c.split(":")[1] for c in changes(server) if c.startswith(lost["id"])) == [
        f"dispute_lost_{lost_dispute['id']}",
        f"disputed_{lost_dispute['id']}",
        "paid",
    ]


def post(server: LiveServer, payload: bytes) -> int:
    request = urllib.request.Request(
        f"{server.url}{WEBHOOK}",
        data=payload,
        headers={"Stripe-Signature": sign(payload), "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def events_of(stripe_emulator, payment_intent: str, session_id: str) -> list[dict[str, Any]]:
    """Every event the emulator emitted for this order, oldest first (GET /v1/events)."""
    listed = requests.get(
        f"{stripe_emulator.url}/v1/events",
        params={"limit": "100"},
        headers={"Authorization": f"Bearer {TEST_KEY}"},
        timeout=10,
    ).json()["data"]
    ours = []
    for event in reversed(listed):
        obj = event["data"]["object"]
        if obj.get("id") == session_id or obj.get("payment_intent") == payment_intent:
            ours.append(event)
    return ours


@pytest.mark.slow
def test_events_in_reverse_order_and_duplicated_end_in_the_same_state_and_changes(
    live_server, stripe_emulator, tmp_path: Path
) -> None:
    # Made with no webhook, then delivered by hand: in order to one server, reversed to another.
    maker = live_server()
    session = paid(maker, stripe_emulator)
    refund(stripe_emulator, session["payment_intent"], amount=80)
    dispute = stripe_emulator.open_dispute(session["payment_intent"])
    stripe_emulator.close_dispute(dispute["id"], "lost")
    events = events_of(stripe_emulator, session["payment_intent"], session["id"])
    kinds = [e["type"] for e in events]
    assert "charge.refunded" in kinds and "charge.dispute.closed" in kinds
    payloads = [json.dumps(e).encode() for e in events]
    in_order = live_server(STRIPE_WEBHOOK_SECRET=WHSEC)
    reversed_twice = live_server(STRIPE_WEBHOOK_SECRET=WHSEC)
    assert {post(in_order, p) for p in payloads} == {200}
    assert {post(reversed_twice, p) for p in [*payloads[::-1], *payloads[::-1]]} == {200}
    one, other = answer(in_order, session["id"]), answer(reversed_twice, session["id"])
    assert one == other
    assert (one["outcome"], one["amount_refunded"]) == ("disputed", 80)
    assert sorted(changes(in_order)) == sorted(changes(reversed_twice))
    assert len(changes(reversed_twice)) == len(set(changes(reversed_twice))) == 4


def handled_events(server: LiveServer, event_type: str) -> list[dict[str, Any]]:
    """The server's stripe_event records of `event_type`, once there is one (or after 30 s)."""
    records: list[dict[str, Any]] = []
    for _ in range(300):  # bounded, generous: a hang, not a timing
        records = [
            r for r in log_records(server.logs(), "stripe_event") if r["event_type"] == event_type
        ]
        if records:
            break
        time.sleep(0.1)
    return records


def test_a_refund_of_another_integrations_charge_is_acknowledged_and_changes_nothing(
    live_server, stripe_emulator
) -> None:
    server = hooked(live_server, stripe_emulator)
    foreign = create_session(stripe_emulator)  # no marker of ours
    completed = stripe_emulator.complete_session(foreign["id"], "paid")
    refund(stripe_emulator, completed["payment_intent"])
    handled = handled_events(server, "charge.refunded")
    assert [(r["outcome"], r["reason"]) for r in handled] == [("ignored", "not_ours")]
    assert changes(server) == []
    status, body = http_json("GET", f"{server.url}{STATUS}?session_id={foreign['id']}")
    assert (status, body["code"]) == (404, "session_not_found")


@pytest.mark.parametrize("later", ["refund_part", "refund_all", "dispute"])
def test_a_refund_or_dispute_of_an_order_refused_when_its_delayed_payment_came_grants_nothing(
    live_server, stripe_emulator, later
) -> None:
    # Ours, but not what we sell (another price), paid by a bank debit: its completion records
    # an unpaid order, its success is refused (an operator must look). A refund or dispute of
    # that payment implies it was paid, but must not turn the refused order into a paid one.
    server = hooked(live_server, stripe_emulator)
    other_price = {"line_items[0][price_data][unit_amount]": "300"}
    session_id = create_session(
        stripe_emulator, **{f"metadata[{MARKER_KEY}]": "local"}, **other_price
    )["id"]
    stripe_emulator.complete_session(session_id, "unpaid")
    intent = stripe_emulator.settle_payment(session_id, "succeeded")["payment_intent"]
    assert handled_events(server, "checkout.session.async_payment_succeeded")
    if later == "dispute":
        stripe_emulator.open_dispute(intent)
        kind = "charge.dispute.created"
    else:
        refund(stripe_emulator, intent, 50 if later == "refund_part" else None)
        kind = "charge.refunded"
    records = handled_events(server, kind)
    assert [(r["outcome"], r.get("reason")) for r in records] == [("ignored", "amount_mismatch")]
    assert changes(server) == []  # nothing recorded or published, so nothing delivered


def test_a_refund_whose_order_the_ledger_never_saw_is_found_through_stripe(
    live_server, stripe_emulator
) -> None:
    server = live_server(STRIPE_WEBHOOK_SECRET=WHSEC)
    session = paid(server, stripe_emulator)  # no webhook yet: the ledger never hears of it
    stripe_emulator.set_webhook(f"{server.url}{WEBHOOK}", WHSEC)
    refund(stripe_emulator, session["payment_intent"])
    body = eventually(server, session["id"], "refunded")
    assert body["amount_refunded"] == 200
    assert changes(server) == [f"{session['id']}:paid", f"{session['id']}:refunded"]


def test_a_refund_whose_webhook_never_came_is_answered_and_recorded_from_stripe(
    live_server, stripe_emulator
) -> None:
    server = live_server()  # no webhook reaches it: only the status path learns anything
    session = paid(server, stripe_emulator)
    refund(stripe_emulator, session["payment_intent"])
    body = answer(server, session["id"])
    assert (body["outcome"], body["amount_refunded"]) == ("refunded", 200)
    # Recorded as the webhook would have: paid first, then refunded, once each.
    assert changes(server) == [f"{session['id']}:paid", f"{session['id']}:refunded"]
    assert answer(server, session["id"])["outcome"] == "refunded"
    assert changes(server) == [f"{session['id']}:paid", f"{session['id']}:refunded"]


@pytest.mark.slow
def test_with_the_ledger_unreachable_a_refunded_order_is_still_answered_refunded(
    live_server, stripe_emulator
) -> None:
    server = live_server(
        ORDER_LEDGER="firestore",
        GOOGLE_CLOUD_PROJECT="demo-checkout",
        FIRESTORE_EMULATOR_HOST=f"127.0.0.1:{free_port()}",  # nothing listens there
        STATUS_PAID_TTL_SECONDS="0.1",  # Stripe's answer is kept like any other, this long
    )
    session = paid(server, stripe_emulator)
    refund(stripe_emulator, session["payment_intent"], amount=50)
    body = answer(server, session["id"])
    assert (body["outcome"], body["amount_refunded"]) == ("paid", 50)
    refund(stripe_emulator, session["payment_intent"])  # the rest
    time.sleep(0.2)  # past the cache period
    body = answer(server, session["id"])
    assert (body["outcome"], body["amount_refunded"]) == ("refunded", 200)


def test_a_refund_that_fails_after_succeeding_gives_the_purchase_back_with_one_change(
    live_server, stripe_emulator
) -> None:
    server = hooked(live_server, stripe_emulator, STATUS_PAID_TTL_SECONDS="0.1")
    session = paid(server, stripe_emulator)
    made = refund(stripe_emulator, session["payment_intent"])
    eventually(server, session["id"], "refunded")
    stripe_emulator.fail_refund(made["id"])  # the card was closed: the money came back
    body = eventually(server, session["id"], "paid")
    assert body["amount_refunded"] == 0
    handled_events(server, "refund.failed")  # the last of its events
    assert [c.split(":")[1] for c in changes(server)] == [
        "paid",
        "refunded",
        f"refund_reversed_{made['id']}",
    ]


def test_an_inquiry_moves_no_money_so_the_order_stays_paid_with_a_warning_and_no_change(
    live_server, stripe_emulator
) -> None:
    server = hooked(live_server, stripe_emulator, STATUS_PAID_TTL_SECONDS="0.1")
    session = paid(server, stripe_emulator)
    inquiry = stripe_emulator.open_dispute(session["payment_intent"], inquiry=True)
    warnings = wait_for_records(server, "checkout_inquiry", seconds=30)
    assert [(w["severity"], w["dispute_id"]) for w in warnings] == [("WARNING", inquiry["id"])]
    assert warnings[0]["evidence_due_by"].endswith("Z")
    assert answer(server, session["id"])["outcome"] == "paid"
    stripe_emulator.close_dispute(inquiry["id"], "warning_closed")
    assert answer(server, session["id"])["outcome"] == "paid"
    assert changes(server) == [f"{session['id']}:paid"]


@pytest.mark.slow
def test_a_refund_whose_webhook_never_came_reaches_a_polling_customer_within_the_recheck_period(
    live_server, stripe_emulator
) -> None:
    # No webhook: the order is recorded paid by the first poll, then refunded at Stripe only.
    server = live_server(STATUS_PAID_TTL_SECONDS="0.1", STATUS_RECHECK_SECONDS="0.5")
    session = paid(server, stripe_emulator)
    assert answer(server, session["id"])["outcome"] == "paid"
    refund(stripe_emulator, session["payment_intent"])
    body = eventually(server, session["id"], "refunded")  # within the period (0.5 s here)
    assert body["amount_refunded"] == 200
    assert changes(server) == [f"{session['id']}:paid", f"{session['id']}:refunded"]


@pytest.mark.slow
def test_a_recheck_that_stripe_cannot_answer_is_answered_from_the_ledger(
    live_server, stripe_emulator
) -> None:
    server = live_server(STATUS_PAID_TTL_SECONDS="0.1", STATUS_RECHECK_SECONDS="0.1")
    session = paid(server, stripe_emulator)
    assert answer(server, session["id"])["outcome"] == "paid"  # recorded; its period starts
    stripe_emulator.set_faults(mode="rate_limit_429")
    for _ in range(3):  # each past the period: a recheck that Stripe refuses
        time.sleep(0.2)
        assert answer(server, session["id"])["outcome"] == "paid"
    assert stripe_emulator.calls()["retrieve_session"] >= 2  # it did ask
