"""The emulator's lists: GET /v1/checkout/sessions and GET /v1/events, through the real SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import stripe

from devtools.stripe_emulator import StripeEmulator
from tests.stripe_emulator_client import (
    KEY,
    OLD_API_VERSION,
    WEBHOOK_SECRET,
    WebhookReceiver,
    create,
    helper,
    sdk,
)
from tests.support import free_port


@pytest.fixture
def client(stripe_emulator: StripeEmulator) -> stripe.StripeClient:
    return sdk(stripe_emulator)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


def ids(listing: Any) -> list[str]:
    return [item.id for item in listing.data]


def sessions_list(client: stripe.StripeClient, **params: Any) -> Any:
    sent: Any = params
    return client.v1.checkout.sessions.list(params=sent)


def events_list(client: stripe.StripeClient, **params: Any) -> Any:
    sent: Any = params
    return client.v1.events.list(params=sent)


# --- GET /v1/checkout/sessions ----------------------------------------------------------------


def test_sessions_are_listed_newest_first_with_stripes_list_shape(client, stripe_emulator):
    made = [create(client).id for _ in range(3)]
    listing = sessions_list(client)
    assert (listing.object, listing.url, listing.has_more) == (
        "list",
        "/v1/checkout/sessions",
        False,
    )
    assert ids(listing) == made[::-1]  # same second: the later session first
    assert listing.data[0].object == "checkout.session"
    assert stripe_emulator.calls()["list_sessions"] == 1


def test_sessions_page_with_limit_starting_after_and_ending_before(client, stripe_emulator):
    made = [create(client).id for _ in range(5)][::-1]  # newest first
    first = sessions_list(client, limit=2)
    assert (ids(first), first.has_more) == (made[:2], True)
    second = sessions_list(client, limit=2, starting_after=made[1])
    assert (ids(second), second.has_more) == (made[2:4], True)
    last = sessions_list(client, limit=2, starting_after=made[3])
    assert (ids(last), last.has_more) == (made[4:], False)
    back = sessions_list(client, limit=2, ending_before=made[4])
    assert (ids(back), back.has_more) == (made[2:4], True)
    # The SDK's auto-pagination follows starting_after to the end.
    assert [s.id for s in sessions_list(client, limit=2).auto_paging_iter()] == made
    default = sessions_list(client)
    assert len(default.data) == 5


def test_sessions_default_to_ten_and_allow_at_most_a_hundred(client, stripe_emulator):
    for _ in range(11):
        create(client)
    listing = sessions_list(client)
    assert (len(listing.data), listing.has_more) == (10, True)
    for bad in (0, 101):
        with pytest.raises(stripe.InvalidRequestError) as caught:
            sessions_list(client, limit=bad)
        assert caught.value.param == "limit"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sessions_list(client, starting_after="cs_test_nope")
    assert (caught.value.code, caught.value.param) == ("resource_missing", "starting_after")


def test_sessions_filter_by_status_payment_intent_and_customer(client, stripe_emulator):
    open_one = create(client).id
    paid = create(client).id
    stripe_emulator.complete_session(paid)
    expired = create(client).id
    client.v1.checkout.sessions.expire(expired)
    customer = create(client, customer="cus_123").id
    assert ids(sessions_list(client, status="complete")) == [paid]
    assert ids(sessions_list(client, status="expired")) == [expired]
    assert ids(sessions_list(client, status="open")) == [customer, open_one]
    intent = stripe_emulator.get_session(paid)["payment_intent"]
    assert ids(sessions_list(client, payment_intent=intent)) == [paid]
    assert ids(sessions_list(client, payment_intent="pi_other")) == []
    assert ids(sessions_list(client, customer="cus_123")) == [customer]
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sessions_list(client, status="paid")
    assert caught.value.param == "status"


def test_sessions_filter_by_created_window(client, stripe_emulator):
    now = int(time.time())
    old, middle, recent = (create(client).id for _ in range(3))
    stripe_emulator.set_session_created(old, now - 5 * 86400)
    moved = helper(stripe_emulator, "POST", f"sessions/{middle}/created", created=now - 86400)
    assert moved.json()["created"] == now - 86400
    assert moved.json()["expires_at"] == now - 86400 + 24 * 3600  # moved with it
    window = sessions_list(client, created={"gte": now - 3 * 86400})
    assert ids(window) == [recent, middle]
    assert ids(sessions_list(client, created={"lt": now - 86400})) == [old]
    assert ids(sessions_list(client, created={"lte": now - 86400, "gt": now - 6 * 86400})) == [
        middle,
        old,
    ]
    assert ids(sessions_list(client, created=now - 5 * 86400)) == [old]
    bad = helper(stripe_emulator, "POST", f"sessions/{old}/created", created="yesterday")
    assert bad.status_code == 400


def test_session_list_is_per_mode_and_in_the_callers_api_version(client, stripe_emulator):
    test_session = create(client).id
    live = sdk(stripe_emulator, "sk_live_emulator")
    live_session = live.v1.checkout.sessions.create(
        params={
            "ui_mode": "embedded_page",
            "mode": "payment",
            "return_url": "https://app.example/r",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": 200,
                        "product_data": {"name": "B"},
                    },
                }
            ],
        }
    ).id
    assert ids(sessions_list(client)) == [test_session]
    assert ids(sessions_list(live)) == [live_session]
    old = requests.get(
        f"{stripe_emulator.url}/v1/checkout/sessions",
        headers={"Authorization": f"Bearer {KEY}", "Stripe-Version": OLD_API_VERSION},
    )
    assert old.json()["data"][0]["ui_mode"] == "embedded"


def test_listed_sessions_expand_their_payment_intent(client, stripe_emulator):
    paid = create(client).id
    stripe_emulator.complete_session(paid)
    listing = sessions_list(client, expand=["data.payment_intent"])
    assert listing.data[0].payment_intent.status == "succeeded"


def test_a_list_expansion_names_the_items_with_data(client, stripe_emulator):
    stripe_emulator.complete_session(create(client).id)
    session = sessions_list(client, expand=["data.payment_intent.latest_charge"]).data[0]
    assert session.payment_intent.latest_charge.object == "charge"
    for path in ("payment_intent", "data.payment_intent.nonsense"):
        with pytest.raises(stripe.InvalidRequestError) as caught:
            sessions_list(client, expand=[path])
        assert caught.value.user_message == f"This property cannot be expanded ({path})."


# --- GET /v1/events ------------------------------------------------------------------------


def test_every_event_is_kept_even_without_a_webhook(client, stripe_emulator):
    paid = create(client).id
    stripe_emulator.complete_session(paid)
    intent = stripe_emulator.get_session(paid)["payment_intent"]
    client.v1.refunds.create(params={"payment_intent": intent, "amount": 50})
    expired = create(client).id
    client.v1.checkout.sessions.expire(expired)
    types = [event.type for event in events_list(client).data]
    assert types == [
        "checkout.session.expired",
        "refund.created",
        "charge.refunded",
        "checkout.session.completed",
    ]


def test_an_event_has_stripes_shape(client, stripe_emulator):
    paid = create(client).id
    stripe_emulator.complete_session(paid)
    [listed] = events_list(client).data
    event = client.v1.events.retrieve(listed.id)
    assert event.id.startswith("evt_") and event.object == "event"
    assert event.type == "checkout.session.completed"
    assert (event.api_version, event.livemode, event.pending_webhooks) == (
        "2026-10-28.endive",
        False,
        0,
    )
    assert event.data.object.id == paid and event.created >= int(time.time()) - 60
    assert event.request.to_dict() == {"id": None, "idempotency_key": None}
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.events.retrieve("evt_nope")
    assert (caught.value.http_status, caught.value.code) == (404, "resource_missing")
    with pytest.raises(stripe.InvalidRequestError):
        sdk(stripe_emulator, "sk_live_emulator").v1.events.retrieve(listed.id)


def test_events_filter_by_type_types_and_wildcard(client, stripe_emulator):
    paid = create(client).id
    stripe_emulator.complete_session(paid)
    intent = stripe_emulator.get_session(paid)["payment_intent"]
    dispute = stripe_emulator.open_dispute(intent)
    stripe_emulator.close_dispute(dispute["id"], "won")
    assert [e.type for e in events_list(client, type="charge.dispute.closed").data] == [
        "charge.dispute.closed"
    ]
    both = events_list(client, types=["checkout.session.completed", "charge.dispute.created"])
    assert [e.type for e in both.data] == ["charge.dispute.created", "checkout.session.completed"]
    assert len(events_list(client, type="charge.dispute.*").data) == 4
    with pytest.raises(stripe.InvalidRequestError):
        events_list(client, type="charge.refunded", types=["charge.refunded"])


def test_events_filter_by_created_and_page_newest_first(client, stripe_emulator):
    made = [create(client).id for _ in range(5)]
    for session_id in made:
        stripe_emulator.expire_session(session_id)
    events = events_list(client, limit=2)
    assert [e.data.object.id for e in events.data] == made[::-1][:2] and events.has_more
    everything = [e.data.object.id for e in events_list(client, limit=2).auto_paging_iter()]
    assert everything == made[::-1]
    now = int(time.time())
    assert events_list(client, created={"gt": now + 60}).data == []
    assert len(events_list(client, created={"gte": now - 60}).data) == 5
    assert events_list(client).url == "/v1/events"


def test_delivery_success_tells_delivered_events_from_failed_ones(
    client, stripe_emulator, receiver
):
    stripe_emulator.set_webhook(receiver.url, WEBHOOK_SECRET)
    try:
        delivered = create(client).id
        stripe_emulator.complete_session(delivered)
        receiver.status = 500
        failed = create(client).id
        stripe_emulator.complete_session(failed)
        stripe_emulator.set_webhook(f"http://127.0.0.1:{free_port()}/webhook", WEBHOOK_SECRET)
        unreachable = create(client).id
        stripe_emulator.complete_session(unreachable)
    finally:
        stripe_emulator.set_webhook(None)
    nowhere = create(client).id
    stripe_emulator.complete_session(nowhere)  # no endpoint: nothing is pending

    not_delivered = events_list(client, delivery_success=False)
    assert [e.data.object.id for e in not_delivered.data] == [unreachable, failed]
    assert [e.pending_webhooks for e in not_delivered.data] == [1, 1]
    ok = events_list(client, delivery_success=True)
    assert [e.data.object.id for e in ok.data] == [nowhere, delivered]
    [record] = [d for d in stripe_emulator.deliveries() if d["session_id"] == failed]
    assert (record["status"], record["attempt"], record["endpoint"]) == (500, 1, None)
    state = helper(stripe_emulator, "GET", f"events/{not_delivered.data[1].id}").json()
    assert (state["delivered"], state["failed"], state["pending"]) == (False, ["set_webhook"], [])


def test_a_late_redelivery_marks_the_event_delivered(client, stripe_emulator, receiver):
    receiver.status = 503
    stripe_emulator.set_webhook(receiver.url, WEBHOOK_SECRET)
    try:
        session = create(client).id
        stripe_emulator.complete_session(session)
        [event] = events_list(client, delivery_success=False).data
        receiver.status = 200
        again = stripe_emulator.deliver_event(session, event.type, event_id=event.id)
    finally:
        stripe_emulator.set_webhook(None)
    assert again["status"] == 200
    assert receiver.received[0][1] == receiver.received[1][1]  # the same bytes
    assert events_list(client, delivery_success=False).data == []
    assert client.v1.events.retrieve(event.id).pending_webhooks == 0


def test_a_refund_event_can_be_redelivered_by_id(client, stripe_emulator, receiver):
    paid = create(client).id
    stripe_emulator.complete_session(paid)
    intent = stripe_emulator.get_session(paid)["payment_intent"]
    client.v1.refunds.create(params={"payment_intent": intent})
    [refunded] = events_list(client, type="charge.refunded").data
    sent = stripe_emulator.deliver_event(
        "", "charge.refunded", event_id=refunded.id, url=receiver.url, secret=WEBHOOK_SECRET
    )
    assert sent["status"] == 200
    event = receiver.verified_event()
    assert (event.id, event.data.object.payment_intent) == (refunded.id, intent)
    assert stripe_emulator.deliveries()[-1]["session_id"] == paid


def test_invalid_event_list_params_are_refused(client, stripe_emulator):
    for params in (
        {"delivery_success": "maybe"},
        {"created": {"since": 1}},
        {"limit": 1000},
        {"colour": "red"},
    ):
        response = requests.get(
            f"{stripe_emulator.url}/v1/events",
            params={
                f"{k}[{kk}]" if isinstance(v, dict) else k: vv
                for k, v in params.items()
                for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])
            },
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error"]["type"] == "invalid_request_error"
