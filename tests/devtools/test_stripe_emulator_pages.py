"""The emulator's browser-facing pages over plain HTTP, no browser: the script, the form, /demo."""

from __future__ import annotations

import pytest
import requests

from tests.support import create_session

GOOD = {"email": "jenny@example.com", "card_number": "4242 4242 4242 4242", "expiry": "12 / 34"}


def confirm(emulator, secret: str, **fields: str) -> requests.Response:
    body = {"client_secret": secret, **GOOD, "cvc": "123", **fields}
    return requests.post(f"{emulator.url}/embedded-checkout/confirm", json=body, timeout=10)


def test_stand_in_script_and_frame_are_served_uncached(stripe_emulator):
    script = requests.get(f"{stripe_emulator.url}/js/stripe.js", timeout=10)
    frame = requests.get(f"{stripe_emulator.url}/embedded-checkout?parent_origin=x", timeout=10)
    assert script.headers["Content-Type"].startswith("application/javascript")
    assert "createEmbeddedCheckoutPage" in script.text
    assert frame.headers["Content-Type"].startswith("text/html")
    assert 'label for="card_number">Card number' in frame.text
    assert script.headers["Cache-Control"] == frame.headers["Cache-Control"] == "no-store"
    assert stripe_emulator.calls()["total"] == 0  # pages are not API calls


def test_frame_summary_shows_line_items_and_total_but_no_secrets(stripe_emulator):
    session = create_session(stripe_emulator, **{"metadata[imageId]": "img_1"})
    response = requests.post(
        f"{stripe_emulator.url}/embedded-checkout/session",
        json={"client_secret": session["client_secret"]},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json() == {
        "currency": "usd",
        "amount_total": 200,
        "customer_email": None,
        "line_items": [{"description": "Feelings board", "quantity": 1, "amount_total": 200}],
    }


@pytest.mark.parametrize(
    ("card", "code", "decline_code", "message"),
    [
        ("4000000000000002", "card_declined", "generic_decline", "Your card was declined."),
        ("4000000000009995", "card_declined", "insufficient_funds", "insufficient funds"),
        ("4000000000000069", "expired_card", None, "Your card has expired."),
        ("4000002500003155", "authentication_required", None, "3-D Secure"),
        ("4111111111111111", "card_declined", "test_mode_live_card", "non test card"),
    ],
)
def test_declining_test_cards_leave_the_session_open(
    stripe_emulator, card, code, decline_code, message
):
    session = create_session(stripe_emulator)
    response = confirm(stripe_emulator, session["client_secret"], card_number=card)
    assert response.status_code == 402
    error = response.json()["error"]
    assert (error["type"], error["code"], error.get("decline_code")) == (
        "card_error",
        code,
        decline_code,
    )
    assert message in error["message"]
    assert stripe_emulator.get_session(session["id"])["status"] == "open"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"email": "jenny"}, "Your email address is incomplete."),
        ({"card_number": "4242 4242"}, "Your card number is incomplete."),
        ({"card_number": "4242 4242 4242 4241"}, "Your card number is invalid."),
        ({"expiry": "12"}, "Your card's expiration date is incomplete."),
        ({"expiry": "13 / 30"}, "Your card's expiration date is invalid."),
        ({"expiry": "01 / 20"}, "Your card's expiration year is in the past."),
        ({"cvc": "1"}, "Your card's security code is incomplete."),
    ],
)
def test_incomplete_forms_are_refused_like_stripe_js_does(stripe_emulator, fields, message):
    session = create_session(stripe_emulator)
    response = confirm(stripe_emulator, session["client_secret"], **fields)
    assert (response.status_code, response.json()["error"]["message"]) == (402, message)


def test_4242_completes_the_session_and_fills_the_return_url(stripe_emulator):
    session = create_session(stripe_emulator, redirect_on_completion="always")
    response = confirm(stripe_emulator, session["client_secret"])
    assert response.json() == {
        "status": "complete",
        "payment_status": "paid",
        "redirect_on_completion": "always",
        "return_url": f"http://shop.test/done?session_id={session['id']}",
    }
    paid = stripe_emulator.get_session(session["id"])
    assert (paid["status"], paid["payment_status"]) == ("complete", "paid")
    assert paid["customer_details"]["email"] == "jenny@example.com"
    again = confirm(stripe_emulator, session["client_secret"])  # a second Pay pays nothing
    assert again.status_code == 400
    assert "already complete" in again.json()["error"]["message"]


def test_4242_on_a_session_that_never_redirects_has_no_return_url(stripe_emulator):
    form = {
        "ui_mode": "embedded_page",
        "mode": "payment",
        "redirect_on_completion": "never",
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "200",
        "line_items[0][price_data][product_data][name]": "Feelings board",
        "line_items[0][quantity]": "1",
    }
    created = requests.post(
        f"{stripe_emulator.url}/v1/checkout/sessions",
        data=form,
        headers={"Authorization": "Bearer sk_test_browser"},
        timeout=10,
    )
    assert "return_url" not in created.json()  # Stripe omits it
    response = confirm(stripe_emulator, created.json()["client_secret"])
    assert response.json() == {
        "status": "complete",
        "payment_status": "paid",
        "redirect_on_completion": "never",
        "return_url": None,
    }


def test_a_wrong_client_secret_opens_nothing(stripe_emulator):
    session = create_session(stripe_emulator)
    for secret in (session["id"] + "_secret_guess", "cs_test_unknown_secret_x"):
        assert confirm(stripe_emulator, secret).status_code == 404
    assert confirm(stripe_emulator, session["id"]).status_code == 400  # an id is not a secret
    assert stripe_emulator.get_session(session["id"])["status"] == "open"


def test_demo_page_calls_the_configured_function_and_escapes_the_override(stripe_emulator):
    default = requests.get(f"{stripe_emulator.url}/demo", timeout=10)
    assert 'const CONFIG = {"api": "http://127.0.0.1:8080"};' in default.text
    assert '<script src="/js/stripe.js"></script>' in default.text
    hostile = requests.get(
        f"{stripe_emulator.url}/demo", params={"api": "http://x/</script><b>"}, timeout=10
    )
    assert '{"api": "http://x/<\\/script><b>"}' in hostile.text
