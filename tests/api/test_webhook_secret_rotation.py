"""A rolled webhook signing secret: Stripe's rolling window end to end, and re-reads of the secret
from Secret Manager rationed across requests."""

from __future__ import annotations

import functools
import time

import pytest

from tests.support import (
    CREATE,
    OTHER_WHSEC,
    WHSEC,
    assert_error,
    completed_session,
    event_for,
    http_json,
    in_crowd,
    log_records,
    post_event,
    sign,
)

PROJECT = "demo-project"
SECRET = "stripe-webhook-secret"
NEW_WHSEC = "whsec_RolledInTheDashboard02"
WEBHOOK = "/api/checkout/webhook"


def post_signed(client, payload: bytes, secret: str) -> int:
    return post_event(client, payload, sign(payload, secret)).status_code


def test_stripes_rolling_window_works_end_to_end(live_server, stripe_emulator, sm):
    sm.add_version(PROJECT, SECRET, WHSEC)
    live = live_server(
        STRIPE_WEBHOOK_SECRET_NAME=SECRET,
        GOOGLE_CLOUD_PROJECT=PROJECT,
        SECRET_MANAGER_ENDPOINT=sm.endpoint,
    )
    target = live.url + WEBHOOK

    def pay() -> str:
        _, created = http_json("POST", live.url + CREATE, {})
        stripe_emulator.complete_session(created["session_id"])
        return created["session_id"]

    try:
        stripe_emulator.set_webhook(target, WHSEC)
        paid = [pay()]
        # The operator rolls the secret in the Dashboard: for a while Stripe signs every event
        # with both, and the new one goes into Secret Manager.
        stripe_emulator.set_webhook(target, [WHSEC, NEW_WHSEC])
        sm.add_version(PROJECT, SECRET, NEW_WHSEC)
        paid.append(pay())
        assert sm.access_count == 1  # the cached old secret still matches: nothing re-read
        # The old secret expires: Stripe signs with the new one only.
        stripe_emulator.set_webhook(target, NEW_WHSEC)
        paid += [pay(), pay()]
    finally:
        stripe_emulator.set_webhook(None)

    assert [d["status"] for d in stripe_emulator.deliveries()] == [200] * 4
    assert sm.access_count == 2  # one re-read, on the first event the old secret did not sign
    changes = log_records(live.logs(), "checkout_order_change")
    assert sorted(r["session_id"] for r in changes if r["type"] == "order.paid") == sorted(paid)
    text = live.logs()
    for secret in (WHSEC, NEW_WHSEC):
        assert secret not in text


@pytest.fixture
def sm_client(client, configure, sm):
    sm.add_version(PROJECT, SECRET, WHSEC)
    configure(
        STRIPE_WEBHOOK_SECRET_NAME=SECRET,
        GOOGLE_CLOUD_PROJECT=PROJECT,
        SECRET_MANAGER_ENDPOINT=sm.endpoint,
    )
    return client


def test_forged_signatures_cannot_make_us_read_the_secret_on_every_request(
    function_app, sm_client, stripe_emulator, sm
):
    payload = event_for(completed_session(sm_client, stripe_emulator), "checkout.session.completed")
    assert post_event(sm_client, payload).status_code == 200
    assert sm.access_count == 1

    # Headers that cannot be a rolled secret's (garbage, stale, no v1 signature) never cause a
    # re-read.
    now = int(time.time())
    stale = sign(payload, OTHER_WHSEC, timestamp=now - 3600)
    for signature in ("garbage", stale, f"t={now}", f"t={now},v0={'0' * 64}"):
        assert_error(post_event(sm_client, payload, signature), 400, "invalid_signature")
    assert sm.access_count == 1

    # Well-formed, current, but signed with a secret we do not hold: one re-read, then none
    # for the rest of the interval, however many arrive, however concurrently.
    forged = sign(payload, OTHER_WHSEC)
    assert_error(post_event(sm_client, payload, forged), 400, "invalid_signature")
    assert sm.access_count == 2
    codes = in_crowd(
        [lambda: post_event(function_app.test_client(), payload, forged).status_code] * 10
    )
    assert codes == [400] * 10
    assert sm.access_count == 2
    assert post_event(sm_client, payload).status_code == 200  # the genuine secret still works


def test_concurrent_events_after_a_roll_share_one_re_read(
    function_app, sm_client, stripe_emulator, sm
):
    warm = event_for(completed_session(sm_client, stripe_emulator), "checkout.session.completed")
    assert post_event(sm_client, warm).status_code == 200
    sm.add_version(PROJECT, SECRET, NEW_WHSEC)
    payloads = [
        event_for(completed_session(sm_client, stripe_emulator), "checkout.session.completed")
        for _ in range(6)
    ]

    codes = in_crowd(
        [functools.partial(post_signed, function_app.test_client(), p, NEW_WHSEC) for p in payloads]
    )

    assert codes == [200] * 6
    assert sm.access_count == 2
