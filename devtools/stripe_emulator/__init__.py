"""A stateful emulator of Stripe's Checkout Sessions API, for local development and tests.

Its modules, where its rules come from and what it does not model: docs/emulator.md."""

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
