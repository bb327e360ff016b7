"""Only our own sessions: the marker on create, 404 for the others, and fulfilment only of what
this deployment sells (checkout/orders/catalogue.py)."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from checkout.orders.catalogue import Catalogue, Refusal
from checkout.orders.session import SessionStatus
from devtools.stripe_emulator import StripeEmulator
from tests.support import (
    STATUS,
    TEST_KEY,
    WHSEC,
    assert_error,
    create,
    event_for,
    post_event,
    status_of,
)

OTHER_PRODUCT = {
    "currency": "eur",
    "unit_amount": 50,
    "product_data": {"name": "Other product"},
}


@pytest.fixture
def webhook_client(client, configure):
    configure(STRIPE_WEBHOOK_SECRET=WHSEC)
    return client


def other_integration(
    emulator: StripeEmulator, price: dict[str, Any] | None = None, **params: Any
) -> str:
    """A session made on the same Stripe account by someone else's code (the real SDK)."""
    client = stripe.StripeClient(TEST_KEY, base_addresses={"api": emulator.url})
    line_item = {"quantity": 1, "price_data": OTHER_PRODUCT} if price is None else price
    sent: Any = {  # loose on purpose: whatever another integration sends
        "ui_mode": "embedded_page",
        "mode": "payment",
        "return_url": "https://other.example/done",
        "line_items": [line_item],
        **params,
    }
    session = client.v1.checkout.sessions.create(params=sent)
    return session.id


# -- the marker ---------------------------------------------------------------------------------


def test_create_marks_the_session_with_this_deployment(client, configure, stripe_emulator):
    configure(DEPLOYMENT_ID="shop-eu")
    session_id = create(client, {"imageId": "img_1"}).get_json()["session_id"]
    metadata = stripe_emulator.get_session(session_id)["metadata"]
    assert metadata == {"checkout_deployment": "shop-eu", "imageId": "img_1"}
    body = status_of(client, session_id)
    assert body["metadata"] == {"imageId": "img_1"}  # the marker is never shown
    assert "checkout_deployment" not in str(body) and "shop-eu" not in str(body)


def test_another_integrations_session_is_404_exactly_like_an_unknown_id(client, stripe_emulator):
    theirs = other_integration(stripe_emulator, metadata={"imageId": "img_theirs"})
    stripe_emulator.complete_session(theirs)
    unknown = "cs_test_" + "x" * 58

    answers = [client.get(STATUS, query_string={"session_id": sid}) for sid in (theirs, unknown)]

    bodies = [assert_error(answer, 404, "session_not_found") for answer in answers]
    assert bodies[0]["error"] == bodies[1]["error"]
    theirs_headers, unknown_headers = ({name for name, _ in a.headers} for a in answers)
    assert theirs_headers == unknown_headers
    # Remembered as unknown, as an unknown id is: polling it does not spend Stripe's rate limit.
    retrieves = stripe_emulator.calls()["retrieve_session"]
    assert_error(client.get(STATUS, query_string={"session_id": theirs}), 404, "session_not_found")
    assert stripe_emulator.calls()["retrieve_session"] == retrieves


def test_another_deployments_session_is_not_ours(client, configure, stripe_emulator, delivered):
    configure(DEPLOYMENT_ID="shop-us", STRIPE_WEBHOOK_SECRET=WHSEC)
    session_id = create(client, {}).get_json()["session_id"]
    session = stripe_emulator.complete_session(session_id)

    configure(DEPLOYMENT_ID="shop-eu", STRIPE_WEBHOOK_SECRET=WHSEC)  # same account, same price
    assert_error(
        client.get(STATUS, query_string={"session_id": session_id}), 404, "session_not_found"
    )
    assert post_event(client, event_for(session, "checkout.session.completed")).status_code == 200
    assert delivered == []


def test_a_paid_session_of_another_product_is_acknowledged_and_never_fulfilled(
    webhook_client, stripe_emulator, logs, delivered
):
    # The review's finding: a €0.50 "Other product" session, completed, was fulfilled.
    theirs = stripe_emulator.complete_session(other_integration(stripe_emulator))
    assert (theirs["amount_total"], theirs["currency"]) == (50, "eur")

    for kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        response = post_event(webhook_client, event_for(theirs, kind))
        assert (response.status_code, response.get_json()) == (200, {"received": True})

    assert delivered == []
    assert logs("checkout_order_change") == []  # nothing recorded, so nothing to deliver
    outcomes = [(r["outcome"], r["reason"]) for r in logs("stripe_event")]
    assert outcomes == [("ignored", "not_ours")] * 2
    assert_error(
        webhook_client.get(STATUS, query_string={"session_id": theirs["id"]}),
        404,
        "session_not_found",
    )


def test_other_integrations_expired_and_failed_events_leave_no_trace(
    webhook_client, stripe_emulator, logs
):
    expired = stripe_emulator.expire_session(other_integration(stripe_emulator))
    failing = other_integration(stripe_emulator)
    stripe_emulator.complete_session(failing, "unpaid")
    failed = stripe_emulator.settle_payment(failing, "failed")
    post_event(webhook_client, event_for(expired, "checkout.session.expired"))
    post_event(webhook_client, event_for(failed, "checkout.session.async_payment_failed"))

    assert [r["reason"] for r in logs("stripe_event")] == ["not_ours", "not_ours"]
    assert logs("checkout_expired") == [] and logs("checkout_payment_failed") == []
    for session_id in (expired["id"], failing):  # nothing cached: still unknown to the status
        response = webhook_client.get(STATUS, query_string={"session_id": session_id})
        assert_error(response, 404, "session_not_found")


# -- what this deployment sells -----------------------------------------------------------------


def test_a_session_of_ours_for_another_amount_is_not_fulfilled_and_is_logged_as_an_error(
    client, configure, stripe_emulator, logs, delivered
):
    configure(PRICE_AMOUNT="300", STRIPE_WEBHOOK_SECRET=WHSEC)
    session_id = create(client, {"imageId": "img_old"}).get_json()["session_id"]
    session = stripe_emulator.complete_session(session_id)
    configure(PRICE_AMOUNT="200", STRIPE_WEBHOOK_SECRET=WHSEC)  # the price changed meanwhile

    assert post_event(client, event_for(session, "checkout.session.completed")).status_code == 200
    assert status_of(client, session_id)["outcome"] == "paid"  # ours: the customer is told

    assert delivered == []
    [event] = logs("stripe_event")
    assert (event["outcome"], event["reason"]) == ("ignored", "amount_mismatch")
    refusals = logs("checkout_not_fulfilled")
    assert {r["severity"] for r in refusals} == {"ERROR"}
    assert "300 usd" in refusals[0]["detail"] and "200 usd" in refusals[0]["detail"]


def test_another_currency_is_not_what_we_sell(client, configure, stripe_emulator, delivered):
    configure(PRICE_CURRENCY="eur", STRIPE_WEBHOOK_SECRET=WHSEC)
    session = stripe_emulator.complete_session(create(client, {}).get_json()["session_id"])
    configure(PRICE_CURRENCY="usd", STRIPE_WEBHOOK_SECRET=WHSEC)
    post_event(client, event_for(session, "checkout.session.completed"))
    assert delivered == []


@pytest.fixture
def price_client(client, configure, stripe_emulator):
    """The service selling a Dashboard price (STRIPE_PRICE_ID)."""
    stripe_emulator.add_price("price_board", 900, "usd", "Hero Me board")
    stripe_emulator.add_price("price_sticker", 900, "usd", "Sticker")
    configure(STRIPE_PRICE_ID="price_board", STRIPE_WEBHOOK_SECRET=WHSEC)
    return client


def test_with_a_price_id_the_line_items_stripe_charged_are_checked(
    price_client, stripe_emulator, logs, delivered
):
    ours = stripe_emulator.complete_session(create(price_client, {}).get_json()["session_id"])
    # Marked as ours, same amount and currency, but another price: not what we sell.
    forged = other_integration(
        stripe_emulator,
        price={"price": "price_sticker", "quantity": 1},
        metadata={"checkout_deployment": "local"},
    )
    forged_session = stripe_emulator.complete_session(forged)
    assert forged_session["amount_total"] == ours["amount_total"] == 900

    retrieves = stripe_emulator.calls()["retrieve_session"]
    for session in (ours, forged_session):
        post_event(price_client, event_for(session, "checkout.session.completed"))

    assert delivered == [ours["id"]]
    # The events hold no line items: each was read back from Stripe, expanded.
    assert stripe_emulator.calls()["retrieve_session"] == retrieves + 2
    assert [r.get("reason") for r in logs("stripe_event")] == [None, "price_mismatch"]


def test_with_a_price_id_the_status_endpoint_fulfils_in_one_retrieve(
    price_client, stripe_emulator, delivered
):
    session_id = create(price_client, {}).get_json()["session_id"]
    stripe_emulator.complete_session(session_id)
    retrieves = stripe_emulator.calls()["retrieve_session"]
    assert status_of(price_client, session_id)["outcome"] == "paid"
    assert delivered == [session_id]
    assert stripe_emulator.calls()["retrieve_session"] == retrieves + 1


# --- Catalogue.refusal itself: which sessions are refused, why, and whether an operator must look


def catalogue(price_id: str | None = None) -> Catalogue:
    return Catalogue(deployment_id="shop-eu", amount=200, currency="usd", price_id=price_id)


def paid(marker: str | None, **fields: Any) -> SessionStatus:
    values: dict[str, Any] = {"amount_total": 200, "currency": "usd", **fields}
    return SessionStatus("cs_test_a", "complete", "paid", {}, marker=marker, **values)


def test_what_this_deployment_sells_is_not_refused():
    assert catalogue().refusal(paid("shop-eu")) is None
    line_items = (("price_123", 1),)
    assert catalogue("price_123").refusal(paid("shop-eu", line_items=line_items)) is None


@pytest.mark.parametrize(
    ("session", "reason", "ours", "detail"),
    [
        (paid(None), "not_ours", False, "no checkout_deployment in its metadata"),
        (
            paid("shop-us"),
            "other_deployment",
            False,
            "checkout_deployment is 'shop-us', this deployment is 'shop-eu'",
        ),
        (
            paid("shop-eu", amount_total=50, currency="eur"),
            "amount_mismatch",
            True,
            "it charged 50 eur, this deployment sells 200 usd",
        ),
    ],
    ids=["unmarked", "another-deployment", "another-amount"],
)
def test_a_refusal_says_why_and_whether_a_customer_of_ours_paid(session, reason, ours, detail):
    refusal = catalogue().refusal(session)
    assert refusal == Refusal(reason, detail, ours=ours)


@pytest.mark.parametrize(
    ("line_items", "sold"),
    [(None, "unknown"), ((("price_other", 1),), "[('price_other', 1)]")],
    ids=["unread", "another-price"],
)
def test_with_a_price_id_other_line_items_are_ours_and_refused(line_items, sold):
    refusal = catalogue("price_123").refusal(paid("shop-eu", line_items=line_items))
    assert refusal == Refusal(
        "price_mismatch", f"line items {sold} are not one of price_123", ours=True
    )
