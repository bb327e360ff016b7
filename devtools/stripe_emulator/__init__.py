"""A stateful emulator of Stripe's Checkout Sessions API, for local development and tests.

stripe-mock, Stripe's own mock, is stateless: it answers with fixtures, so a retrieved session never
shows what happened to it. This emulator keeps sessions in memory, checks requests against the
pinned stripe-python's generated types and Stripe's other rules, shapes its answers by the SDK's
resource classes, and answers with Stripe's status codes and error bodies, so that the real
stripe-python SDK raises its real exception classes. It also signs and delivers webhook events, and
injects faults (latency, 500, 429, hangs) for reliability tests and benchmarks. How its rules are
derived, and what it does not model: docs/emulator.md.

    python -m devtools.stripe_emulator --port 12111      # then STRIPE_API_BASE=http://127.0.0.1:12111

    with StripeEmulator() as emulator:                   # in tests: port 0 picks a free port
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": emulator.url})

Test helpers live under /_emulator/ (JSON, no auth); see `StripeEmulator._helper_routes`. For
browsers it serves a stand-in Stripe.js for embedded Checkout (/js/stripe.js), its payment form and
a /demo page (docs/local-browser.md).

    state.py        constants, errors, form decoding, the sessions' objects
    params.py       request validation compiled from the SDK's *Params TypedDicts; API versions
    rules.py        the rules the types cannot express, one named function each
    shapes.py       responses built from the SDK's resource classes; expansions; object checks
    idempotency.py  saved first results, replays, concurrent duplicates
    api.py          StripeEmulator: sessions in memory, /v1, /_emulator/, the Python helpers
    webhooks.py     events signed and posted as Stripe sends them
    browser.py      the stand-in Stripe.js, its payment form's endpoints (test cards), /demo
    static/         the script and pages browser.py serves
    server.py       the HTTP server; __main__.py the command line

Standard library and the pinned stripe-python only: it is dev tooling, and never deployed.
"""

from devtools.stripe_emulator.api import StripeEmulator
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
    "sign_payload",
]
