"""The emulator's PaymentIntents, Charges, Refunds and Disputes, over HTTP with the real SDK."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
import stripe

from devtools.stripe_emulator import StripeEmulator
from tests.gcloud_cli import require_tools
from tests.stripe_emulator_client import (
    KEY,
    WEBHOOK_SECRET,
    WebhookReceiver,
    create,
    helper,
    line_item,
    sdk,
    shell_block_of,
)
from tests.support import ROOT


@pytest.fixture
def client(stripe_emulator: StripeEmulator) -> stripe.StripeClient:
    return sdk(stripe_emulator)


@pytest.fixture
def receiver(stripe_emulator: StripeEmulator) -> Iterator[WebhookReceiver]:
    """A webhook endpoint that gets every event, as set_webhook() configures it."""
    receiver = WebhookReceiver()
    stripe_emulator.set_webhook(receiver.url, WEBHOOK_SECRET)
    yield receiver
    stripe_emulator.set_webhook(None)
    receiver.close()


def paid_session(client: stripe.StripeClient, emulator: StripeEmulator, amount: int = 200) -> Any:
    session = create(client, line_items=[line_item(amount)])
    emulator.complete_session(session.id)
    return client.v1.checkout.sessions.retrieve(session.id)


def events_of(receiver: WebhookReceiver, count: int) -> list[stripe.Event]:
    receiver.wait_for(count, seconds=10)  # a generous bound: only says delivery does not hang
    return [receiver.verified_event(i) for i in range(len(receiver.received))]


def error_of(call: Any) -> Any:
    with pytest.raises(stripe.StripeError) as caught:
        call()
    return caught.value


# --- PaymentIntent and Charge ---------------------------------------------------------------


def test_a_paid_session_has_a_succeeded_payment_intent_and_charge(client, stripe_emulator):
    session = paid_session(client, stripe_emulator)
    intent = client.v1.payment_intents.retrieve(session.payment_intent)
    assert intent.id.startswith("pi_") and intent.object == "payment_intent"
    assert (intent.status, intent.amount, intent.amount_received) == ("succeeded", 200, 200)
    assert (intent.currency, intent.livemode) == ("usd", False)
    charge = client.v1.charges.retrieve(intent.latest_charge)
    assert charge.id.startswith("ch_") and charge.object == "charge"
    assert (charge.amount, charge.amount_captured, charge.amount_refunded) == (200, 200, 0)
    assert (charge.paid, charge.status, charge.refunded, charge.disputed) == (
        True,
        "succeeded",
        False,
        False,
    )
    assert (charge.payment_intent, charge.currency, charge.livemode) == (intent.id, "usd", False)
    assert charge.created >= session.created and charge.metadata.to_dict() == {}
    assert charge.billing_details.email == session.customer_details.email


def test_the_payment_intent_expands_its_latest_charge(client, stripe_emulator):
    session = paid_session(client, stripe_emulator)
    params: Any = {"expand": ["payment_intent"]}
    expanded = client.v1.checkout.sessions.retrieve(session.id, params=params)
    assert (expanded.payment_intent.id, expanded.payment_intent.status) == (
        session.payment_intent,
        "succeeded",
    )
    intent_params: Any = {"expand": ["latest_charge"]}
    intent = client.v1.payment_intents.retrieve(session.payment_intent, params=intent_params)
    assert intent.latest_charge.object == "charge"
    assert (intent.latest_charge.payment_intent, intent.latest_charge.amount) == (intent.id, 200)
    refund_params: Any = {"payment_intent": intent.id, "expand": ["charge"]}
    refund = client.v1.refunds.create(params=refund_params)
    assert (refund.charge.id, refund.charge.refunded) == (intent.latest_charge.id, True)


def raw_get(emulator: StripeEmulator, path: str, **params: Any) -> requests.Response:
    return requests.get(
        f"{emulator.url}{path}", params=params, headers={"Authorization": f"Bearer {KEY}"}
    )


@pytest.mark.parametrize("payment_status", ["paid", "unpaid"])
def test_a_sessions_expanded_payment_intent_is_the_one_payment_intents_serves(
    client, stripe_emulator, payment_status
):
    session = create(client)
    stripe_emulator.complete_session(session.id, payment_status=payment_status)
    expanded = raw_get(stripe_emulator, f"/v1/checkout/sessions/{session.id}",
                       **{"expand[]": "payment_intent"}).json()["payment_intent"]  # fmt: skip
    served = raw_get(stripe_emulator, f"/v1/payment_intents/{expanded['id']}").json()
    assert expanded == served
    assert expanded["latest_charge"].startswith("ch_")
    assert expanded["client_secret"].startswith(f"{expanded['id']}_secret_")


def test_a_session_expands_its_payment_intents_latest_charge(client, stripe_emulator):
    session = paid_session(client, stripe_emulator)
    params: Any = {"expand": ["payment_intent.latest_charge"]}
    expanded = client.v1.checkout.sessions.retrieve(session.id, params=params)
    charge = expanded.payment_intent.latest_charge
    assert charge.object == "charge"
    assert charge.to_dict() == client.v1.charges.retrieve(charge.id).to_dict()


def test_expanding_an_object_the_emulator_does_not_model_below_a_payment_is_an_error(
    client, stripe_emulator
):
    intent = paid_session(client, stripe_emulator).payment_intent
    for path in ("latest_charge.balance_transaction", "payment_method"):
        response = raw_get(stripe_emulator, f"/v1/payment_intents/{intent}", **{"expand[]": path})
        error = response.json()["error"]
        assert (response.status_code, error["param"]) == (400, "expand")
        assert "does not model" in error["message"]


def test_the_payment_intent_copies_payment_intent_data_not_the_session_metadata(
    client, stripe_emulator
):
    data = {"metadata": {"order": "o-7"}, "description": "Feelings board", "receipt_email": "a@b.c"}
    session = create(client, metadata={"session_only": "yes"}, payment_intent_data=data)
    stripe_emulator.complete_session(session.id)
    paid = client.v1.checkout.sessions.retrieve(session.id)
    intent = client.v1.payment_intents.retrieve(paid.payment_intent)
    assert intent.metadata.to_dict() == {"order": "o-7"}
    assert (intent.description, intent.receipt_email) == ("Feelings board", "a@b.c")
    charge = client.v1.charges.retrieve(intent.latest_charge)
    assert (charge.metadata.to_dict(), charge.description) == ({"order": "o-7"}, "Feelings board")


def test_a_delayed_payment_charges_when_it_settles(client, stripe_emulator):
    session = create(client)
    stripe_emulator.complete_session(session.id, payment_status="unpaid")
    intent_id = client.v1.checkout.sessions.retrieve(session.id).payment_intent
    intent = client.v1.payment_intents.retrieve(intent_id)
    pending = client.v1.charges.retrieve(intent.latest_charge)
    assert (intent.status, pending.status, pending.paid) == ("processing", "pending", False)
    assert pending.payment_method_details.type == "us_bank_account"
    with pytest.raises(stripe.InvalidRequestError):  # nothing has been paid yet
        client.v1.refunds.create(params={"payment_intent": intent_id})

    stripe_emulator.settle_payment(session.id, "succeeded")
    settled = client.v1.charges.retrieve(intent.latest_charge)
    assert (settled.status, settled.paid, settled.amount_captured) == ("succeeded", True, 200)
    assert client.v1.payment_intents.retrieve(intent_id).status == "succeeded"


def test_a_failed_delayed_payment_fails_its_charge(client, stripe_emulator):
    session = create(client)
    stripe_emulator.complete_session(session.id, payment_status="unpaid")
    stripe_emulator.settle_payment(session.id, "failed")
    intent_id = client.v1.checkout.sessions.retrieve(session.id).payment_intent
    intent = client.v1.payment_intents.retrieve(intent_id)
    charge = client.v1.charges.retrieve(intent.latest_charge)
    assert intent.status == "requires_payment_method"
    assert intent.last_payment_error.code == "insufficient_funds"
    assert (charge.status, charge.paid, charge.failure_code) == (
        "failed",
        False,
        "insufficient_funds",
    )


def test_an_open_session_has_no_payment_intent_yet(client, stripe_emulator):
    session = create(client)
    assert client.v1.checkout.sessions.retrieve(session.id).payment_intent is None
    caught = error_of(lambda: client.v1.payment_intents.retrieve("pi_unknown"))
    assert (caught.http_status, caught.code) == (404, "resource_missing")
    assert caught.user_message == "No such payment_intent: 'pi_unknown'"
    caught = error_of(lambda: client.v1.charges.retrieve("ch_unknown"))
    assert (caught.http_status, caught.user_message) == (404, "No such charge: 'ch_unknown'")


def test_a_live_key_cannot_see_a_test_charge(client, stripe_emulator):
    session = paid_session(client, stripe_emulator)
    live = sdk(stripe_emulator, "sk_live_emulator")
    with pytest.raises(stripe.InvalidRequestError):
        live.v1.payment_intents.retrieve(session.payment_intent)


# --- refunds -------------------------------------------------------------------------------


def test_a_full_refund_by_payment_intent_refunds_the_charge(client, stripe_emulator, receiver):
    session = paid_session(client, stripe_emulator)
    refund = client.v1.refunds.create(
        params={
            "payment_intent": session.payment_intent,
            "reason": "requested_by_customer",
            "metadata": {"ticket": "T-1"},
        }
    )
    assert refund.id.startswith("re_") and refund.object == "refund"
    assert (refund.amount, refund.currency, refund.status) == (200, "usd", "succeeded")
    assert refund.payment_intent == session.payment_intent
    assert refund.reason == "requested_by_customer"
    assert refund.metadata.to_dict() == {"ticket": "T-1"}
    charge = client.v1.charges.retrieve(refund.charge)
    assert (charge.amount_refunded, charge.refunded) == (200, True)
    assert client.v1.refunds.retrieve(refund.id).amount == 200

    # checkout.session.completed, then the refund's two events, signed like every other.
    completed, refunded, created = events_of(receiver, 3)
    assert completed.type == "checkout.session.completed"
    assert refunded.type == "charge.refunded"
    assert refunded.data.object.id == charge.id and refunded.data.object.object == "charge"
    assert (refunded.data.object.amount_refunded, refunded.data.object.refunded) == (200, True)
    assert refunded.data.object.payment_intent == session.payment_intent
    assert refunded.data.previous_attributes.to_dict() == {"amount_refunded": 0, "refunded": False}
    assert refunded.request.id is not None
    assert (created.type, created.data.object.id) == ("refund.created", refund.id)


@pytest.mark.parametrize("status", ["failed", "canceled"])
def test_a_refund_that_fails_or_is_cancelled_no_longer_counts_on_its_charge(
    client, stripe_emulator, receiver, status
):
    session = paid_session(client, stripe_emulator)
    refund = client.v1.refunds.create(params={"payment_intent": session.payment_intent})
    failed = helper(stripe_emulator, "POST", f"refunds/{refund.id}/fail", status=status)
    assert failed.status_code == 200, failed.text
    assert failed.json()["status"] == status
    assert client.v1.refunds.retrieve(refund.id).status == status
    charge = client.v1.charges.retrieve(refund.charge)
    assert (charge.amount_refunded, charge.refunded) == (0, False)
    again = helper(stripe_emulator, "POST", f"refunds/{refund.id}/fail", status=status)
    assert again.status_code == 400  # only a succeeded refund can fail
    expected = ["refund.updated", "charge.refund.updated"]
    expected += ["refund.failed"] if status == "failed" else []
    before = {"checkout.session.completed", "charge.refunded", "refund.created"}
    # Delivered each on its own, so not necessarily in the order they were emitted.
    events = [e for e in events_of(receiver, 3 + len(expected)) if e.type not in before]
    assert sorted(e.type for e in events) == sorted(expected)
    assert {(e.data.object.id, e.data.object.status) for e in events} == {(refund.id, status)}


def test_partial_refunds_add_up_then_the_charge_is_refunded(client, stripe_emulator, receiver):
    session = paid_session(client, stripe_emulator, amount=500)
    charge_id = client.v1.payment_intents.retrieve(session.payment_intent).latest_charge
    client.v1.refunds.create(params={"charge": charge_id, "amount": 200})
    charge = client.v1.charges.retrieve(charge_id)
    assert (charge.amount_refunded, charge.refunded) == (200, False)

    caught = error_of(lambda: client.v1.refunds.create(params={"charge": charge_id, "amount": 301}))
    assert (caught.http_status, caught.code, caught.param) == (400, "amount_too_large", "amount")
    assert caught.user_message == (
        "Refund amount ($3.01) is greater than unrefunded amount on charge ($3.00)"
    )

    rest = client.v1.refunds.create(params={"payment_intent": session.payment_intent})
    assert rest.amount == 300  # no amount: whatever is left
    charge = client.v1.charges.retrieve(charge_id)
    assert (charge.amount_refunded, charge.refunded) == (500, True)
    caught = error_of(lambda: client.v1.refunds.create(params={"charge": charge_id}))
    assert (caught.http_status, caught.code) == (400, "charge_already_refunded")
    assert caught.user_message == f"Charge {charge_id} has already been refunded."

    refunded = [e for e in events_of(receiver, 5) if e.type == "charge.refunded"]
    assert [(e.data.object.amount_refunded, e.data.object.refunded) for e in refunded] == [
        (200, False),
        (500, True),
    ]


@pytest.mark.parametrize(
    ("params", "code", "param"),
    [
        ({}, None, "payment_intent"),
        ({"payment_intent": "pi_nope"}, "resource_missing", "payment_intent"),
        ({"charge": "ch_nope"}, "resource_missing", "charge"),
        ({"amount": "0"}, None, "amount"),
        ({"reason": "changed_my_mind"}, None, "reason"),
        ({"currency_code": "usd"}, "parameter_unknown", "currency_code"),
    ],
)
def test_invalid_refunds_are_refused_like_stripe(client, stripe_emulator, params, code, param):
    session = paid_session(client, stripe_emulator)
    if "payment_intent" not in params and "charge" not in params and params:
        params = {"payment_intent": session.payment_intent, **params}
    sent: Any = params
    caught = error_of(lambda: client.v1.refunds.create(params=sent))
    assert isinstance(caught, stripe.InvalidRequestError)
    assert (caught.code, caught.param) == (code, param)
    expand: Any = {"expand": ["latest_charge"]}
    intent = client.v1.payment_intents.retrieve(session.payment_intent, params=expand)
    assert intent.latest_charge.amount_refunded == 0


def test_a_refund_with_an_idempotency_key_is_made_once(client, stripe_emulator):
    session = paid_session(client, stripe_emulator, amount=500)
    params: Any = {"payment_intent": session.payment_intent, "amount": 100}
    options: Any = {"idempotency_key": "refund-1"}
    first = client.v1.refunds.create(params=params, options=options)
    again = client.v1.refunds.create(params=params, options=options)
    assert again.id == first.id
    charge = client.v1.charges.retrieve(first.charge)
    assert charge.amount_refunded == 100


def test_a_double_submitted_refund_refunds_once(client, stripe_emulator):
    session = paid_session(client, stripe_emulator, amount=500)
    params: Any = {"payment_intent": session.payment_intent, "amount": 100}
    options: Any = {"idempotency_key": "refund-twice"}
    with ThreadPoolExecutor(max_workers=8) as pool:
        refunds = list(
            pool.map(lambda _: client.v1.refunds.create(params=params, options=options), range(8))
        )
    assert len({refund.id for refund in refunds}) == 1
    assert client.v1.charges.retrieve(refunds[0].charge).amount_refunded == 100


def test_a_refund_over_curl_style_form_with_the_test_key(stripe_emulator):
    session = paid_session(sdk(stripe_emulator), stripe_emulator)
    response = requests.post(
        f"{stripe_emulator.url}/v1/refunds",
        auth=(KEY, ""),
        data={"payment_intent": session.payment_intent, "amount": "50"},
    )
    assert response.status_code == 200, response.text
    assert (response.json()["object"], response.json()["amount"]) == ("refund", 50)
    assert stripe_emulator.calls()["create_refund"] == 1


# --- disputes ------------------------------------------------------------------------------


def test_a_dispute_opened_then_lost(client, stripe_emulator, receiver):
    session = paid_session(client, stripe_emulator)
    before = int(time.time())
    dispute = stripe_emulator.open_dispute(session.payment_intent, reason="fraudulent")
    assert dispute["id"].startswith("dp_") and dispute["object"] == "dispute"
    assert (dispute["amount"], dispute["currency"], dispute["status"]) == (
        200,
        "usd",
        "needs_response",
    )
    assert dispute["payment_intent"] == session.payment_intent
    assert dispute["reason"] == "fraudulent" and dispute["livemode"] is False
    due_by = dispute["evidence_details"]["due_by"]
    assert before + 7 * 24 * 3600 <= due_by <= int(time.time()) + 7 * 24 * 3600
    charge = client.v1.charges.retrieve(dispute["charge"])
    assert charge.disputed is True
    assert client.v1.disputes.retrieve(dispute["id"]).status == "needs_response"
    caught = error_of(lambda: client.v1.refunds.create(params={"charge": charge.id}))
    assert caught.code == "charge_disputed"

    closed = stripe_emulator.close_dispute(dispute["id"], "lost")
    assert closed["status"] == "lost"
    types = [(e.type, e.data.object.status) for e in events_of(receiver, 4)]
    assert types == [
        ("checkout.session.completed", "complete"),
        ("charge.dispute.created", "needs_response"),
        ("charge.dispute.funds_withdrawn", "needs_response"),
        ("charge.dispute.closed", "lost"),
    ]
    closed_event = receiver.verified_event()
    assert closed_event.data.object.charge == charge.id
    assert closed_event.data.object.payment_intent == session.payment_intent
    assert client.v1.charges.retrieve(charge.id).disputed is True


def test_a_dispute_won_over_http_helpers(client, stripe_emulator, receiver):
    session = paid_session(client, stripe_emulator)
    charge_id = client.v1.payment_intents.retrieve(session.payment_intent).latest_charge
    opened = helper(stripe_emulator, "POST", "disputes", charge=charge_id, amount=150)
    assert opened.status_code == 200, opened.text
    dispute = opened.json()
    assert (dispute["charge"], dispute["amount"]) == (charge_id, 150)
    won = helper(stripe_emulator, "POST", f"disputes/{dispute['id']}/close", status="won")
    assert won.json()["status"] == "won"
    again = helper(stripe_emulator, "POST", f"disputes/{dispute['id']}/close", status="lost")
    assert again.status_code == 400
    types = [e.type for e in events_of(receiver, 5)][1:]
    assert types == [
        "charge.dispute.created",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.funds_reinstated",
        "charge.dispute.closed",
    ]
    closed = receiver.verified_event()
    assert closed.data.object.status == "won"
    assert closed.data.previous_attributes.to_dict() == {"status": "needs_response"}


def test_an_inquiry_closes_as_warning_closed_and_moves_no_money(client, stripe_emulator, receiver):
    session = paid_session(client, stripe_emulator)
    inquiry = stripe_emulator.open_dispute(session.payment_intent, inquiry=True)
    assert inquiry["status"] == "warning_needs_response"
    stripe_emulator.close_dispute(inquiry["id"], "warning_closed")
    types = [(e.type, e.data.object.status) for e in events_of(receiver, 3)][1:]
    assert types == [
        ("charge.dispute.created", "warning_needs_response"),
        ("charge.dispute.closed", "warning_closed"),
    ]


def test_dispute_helpers_refuse_what_stripe_never_does(client, stripe_emulator):
    unpaid = create(client)
    stripe_emulator.complete_session(unpaid.id, payment_status="unpaid")
    pending_intent = client.v1.checkout.sessions.retrieve(unpaid.id).payment_intent
    paid = paid_session(client, stripe_emulator)
    for body, status in [
        ({"payment_intent": "pi_nope"}, 404),
        ({"payment_intent": pending_intent}, 400),  # a pending charge cannot be disputed
        ({"payment_intent": paid.payment_intent, "reason": "bored"}, 400),
        ({"payment_intent": paid.payment_intent, "amount": 201}, 400),
        ({}, 400),
    ]:
        response = helper(stripe_emulator, "POST", "disputes", **body)
        assert response.status_code == status, (body, response.text)
    dispute = stripe_emulator.open_dispute(paid.payment_intent)
    second = helper(stripe_emulator, "POST", "disputes", payment_intent=paid.payment_intent)
    assert second.status_code == 400  # one open dispute per charge
    bad = helper(stripe_emulator, "POST", f"disputes/{dispute['id']}/close", status="maybe")
    assert bad.json()["error"]["param"] == "status"
    missing = helper(stripe_emulator, "POST", "disputes/dp_nope/close", status="won")
    assert missing.status_code == 404


def test_reset_forgets_payments(client, stripe_emulator):
    session = paid_session(client, stripe_emulator)
    stripe_emulator.reset()
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.retrieve(session.payment_intent)


def test_event_payload_of_a_refund_is_json_of_the_charge(client, stripe_emulator, receiver):
    session = paid_session(client, stripe_emulator)
    client.v1.refunds.create(params={"payment_intent": session.payment_intent})
    receiver.wait_for(3, seconds=10)  # generous: only says delivery does not hang
    bodies = [json.loads(body) for _, body in receiver.received]
    charge = next(b for b in bodies if b["type"] == "charge.refunded")["data"]["object"]
    expected = {
        "id", "object", "amount", "amount_captured", "amount_refunded", "refunded", "currency",
        "livemode", "payment_intent", "paid", "status", "disputed", "created", "metadata",
    }  # fmt: skip
    assert expected <= set(charge)


# --- docs/local-browser.md's refund walk-through, as written --------------------------------


@pytest.mark.curl
def test_the_refund_walkthrough_gets_the_documented_answers(stripe_emulator):
    require_tools("bash", "curl", "jq")
    text = (ROOT / "docs" / "local-browser.md").read_text()
    block = shell_block_of(text, "### A refund, end to end")
    default = "http://127.0.0.1:12111"
    assert f"EMULATOR={default} " in block
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.replace(default, stripe_emulator.url)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answers = ("# {", '# "', "# [")  # the JSON each command prints, as the page shows it
    documented = [line[2:] for line in block.splitlines() if line.startswith(answers)]
    assert len(documented) == 5
    assert result.stdout.splitlines() == documented
