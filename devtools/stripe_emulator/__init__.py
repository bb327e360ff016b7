"""A stateful emulator of Stripe's Checkout Sessions API and what a payment leads to.

stripe-mock, Stripe's own mock, is stateless: it answers with fixtures, so a retrieved session never
shows what happened to it. This emulator keeps sessions in memory, enforces the Stripe rules this
project depends on, and answers with Stripe's status codes and error bodies, so that the real
stripe-python SDK raises its real exception classes. A paid session has a PaymentIntent and a
Charge, which can be refunded (POST /v1/refunds) and disputed (helpers). Every event is kept
(GET /v1/events), signed and delivered to webhook endpoints (/v1/webhook_endpoints), and retried
when delivery fails. It injects faults (latency, 500, 429, hangs) for reliability tests and
benchmarks. docs/local-browser.md lists the endpoints and helpers beyond sessions.

    python -m devtools.stripe_emulator --port 12111      # then STRIPE_API_BASE=http://127.0.0.1:12111

    with StripeEmulator() as emulator:                   # in tests: port 0 picks a free port
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": emulator.url})

Test helpers live under /_emulator/ (JSON, no auth); see `StripeEmulator._helper_routes`. For
browsers it serves a stand-in Stripe.js for embedded Checkout (/js/stripe.js), its payment form and
a /demo page (docs/local-browser.md).

    state.py      constants, errors, form decoding, validation of a new session
    api.py        StripeEmulator: sessions in memory, /v1, /_emulator/, the Python helpers
    payments.py   PaymentIntents, Charges, Refunds and Disputes
    listing.py    list endpoints: created ranges, limit, cursors
    events.py     the event log, GET /v1/events, delivery to targets, retries
    endpoints.py  /v1/webhook_endpoints
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
