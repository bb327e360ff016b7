"""A stateful emulator of Stripe's Checkout Sessions API, for local development and tests.

stripe-mock, Stripe's own mock, is stateless: it answers with fixtures, so a retrieved session never
shows what happened to it. This emulator keeps sessions in memory, enforces the Stripe rules this
project depends on, and answers with Stripe's status codes and error bodies, so that the real
stripe-python SDK raises its real exception classes. It also signs and delivers webhook events, and
injects faults (latency, 500, 429, hangs) for reliability tests and benchmarks.

    python -m devtools.stripe_emulator --port 12111      # then STRIPE_API_BASE=http://127.0.0.1:12111

    with StripeEmulator() as emulator:                   # in tests: port 0 picks a free port
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": emulator.url})

What a payment leads to, in modules of their own (docs/local-browser.md lists the endpoints and
helpers): payments.py (PaymentIntents, Charges, Refunds, Disputes), events.py (every event kept,
GET /v1/events, delivery to webhook endpoints, retries), endpoints.py (/v1/webhook_endpoints),
listing.py (list filters and cursors), resources.py (their /v1 routes), form_params.py.

Test helpers live under /_emulator/ (JSON, no auth); see `StripeEmulator._helper_routes`. For
browsers it serves a stand-in Stripe.js for embedded Checkout (/js/stripe.js), its payment form and
a /demo page (docs/local-browser.md).

    state.py      constants, errors, form decoding, validation of a new session
    api.py        StripeEmulator: sessions in memory, /v1, /_emulator/, the Python helpers
    webhooks.py   events signed and posted as Stripe sends them
    browser.py    the stand-in Stripe.js, its payment form's endpoints (test cards), /demo
    static/       the script and pages browser.py serves
    server.py     the HTTP server; __main__.py the command line

Standard library only: it is dev tooling, must start fast, and is never deployed.
"""

from devtools.stripe_emulator.api import StripeEmulator
from devtools.stripe_emulator.events import retry_schedule
from devtools.stripe_emulator.state import (
    LATEST_API_VERSION,
    UI_MODE_NEW_TO_OLD,
    StripeEmulatorError,
    decode_form,
)
from devtools.stripe_emulator.webhooks import sign_payload

__all__ = [
    "LATEST_API_VERSION",
    "UI_MODE_NEW_TO_OLD",
    "StripeEmulator",
    "StripeEmulatorError",
    "decode_form",
    "retry_schedule",
    "sign_payload",
]
