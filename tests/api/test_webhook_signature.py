"""A refused webhook event: the client gets one sentence, the log says which check refused it."""

from __future__ import annotations

import pytest

from tests.support import OTHER_WHSEC, WHSEC, CapturedLogs, assert_error, post_event, sign

PROJECT = "demo-project"
SECRET = "stripe-webhook-secret"
SENTENCE = "The request is not a correctly signed Stripe event."


def refusal_logged(logs: CapturedLogs) -> str:
    [line] = [r for r in logs() if r.get("code") == "invalid_signature"]
    return line["detail"]


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b"not json", "the signed body is not JSON"),
        (b'{"id": "evt_1"}', "the signed body is not a Stripe event"),
        (b"\xff\xfe not utf-8", "the body is not UTF-8"),
    ],
    ids=["not-json", "not-an-event", "not-utf8"],
)
def test_a_signed_body_that_is_no_event_is_logged_as_such(webhook_client, logs, payload, detail):
    body = assert_error(post_event(webhook_client, payload), 400, "invalid_signature")
    assert body["error"] == SENTENCE
    assert refusal_logged(logs) == detail


def test_a_forged_signature_is_logged_with_stripes_reason(webhook_client, logs):
    payload = b'{"id": "evt_1", "type": "checkout.session.completed"}'
    body = assert_error(
        post_event(webhook_client, payload, sign(payload, OTHER_WHSEC)), 400, "invalid_signature"
    )
    assert body["error"] == SENTENCE
    assert refusal_logged(logs).startswith("No signatures found matching the expected signature")


def test_a_forged_signature_is_logged_as_checked_twice_after_a_re_read(client, configure, sm, logs):
    sm.add_version(PROJECT, SECRET, WHSEC)
    configure(
        STRIPE_WEBHOOK_SECRET_NAME=SECRET,
        GOOGLE_CLOUD_PROJECT=PROJECT,
        SECRET_MANAGER_ENDPOINT=sm.endpoint,
    )
    payload = b'{"id": "evt_1", "type": "customer.created"}'  # signed, of a type we ignore
    assert post_event(client, payload).status_code == 200  # the secret is read and cached
    sm.add_version(PROJECT, SECRET, "whsec_RolledInTheDashboard02")
    assert_error(post_event(client, payload, sign(payload, OTHER_WHSEC)), 400, "invalid_signature")
    detail = refusal_logged(logs)
    assert detail.startswith("No signatures found matching the expected signature")
    assert detail.endswith("(also with the re-read secret)")
    assert sm.access_count == 2  # the cached secret, then the re-read that changed it
