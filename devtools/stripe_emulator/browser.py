"""What a browser sees: the stand-in Stripe.js, its checkout frame, and the /demo page.

Real Stripe.js cannot use the emulator's client secrets: docs/local-browser.md."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

from devtools.stripe_emulator.state import StripeEmulatorError, _invalid, _Response, _to_json


class Paying(Protocol):
    """What the browser pages need of the emulator (api.Paying)."""

    checkout_api: str  # where the /demo page sends its API calls

    def complete_session(
        self, session_id: str, payment_status: str = "paid", *, email: str | None = None
    ) -> dict[str, Any]: ...

    def find_by_client_secret(self, client_secret: str) -> dict[str, Any] | None: ...


_STATIC = Path(__file__).with_name("static")

# Stripe's test cards (docs.stripe.com/testing). None succeeds; otherwise (code, decline_code,
# message) as Stripe.js shows it.
_SUCCEEDS = None
TEST_CARDS: dict[str, tuple[str, str | None, str] | None] = {
    "4242424242424242": _SUCCEEDS,  # Visa
    "4000056655665556": _SUCCEEDS,  # Visa (debit)
    "5555555555554444": _SUCCEEDS,  # Mastercard
    "2223003122003222": _SUCCEEDS,  # Mastercard (2-series)
    "378282246310005": _SUCCEEDS,  # American Express
    "6011111111111117": _SUCCEEDS,  # Discover
    "4000000000000002": ("card_declined", "generic_decline", "Your card was declined."),
    "4000000000009995": (
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "4000000000009987": ("card_declined", "lost_card", "Your card was declined."),
    "4000000000009979": ("card_declined", "stolen_card", "Your card was declined."),
    "4000000000000069": ("expired_card", None, "Your card has expired."),
    "4000000000000127": ("incorrect_cvc", None, "Your card's security code is incorrect."),
    "4000000000000119": (
        "processing_error",
        None,
        "An error occurred while processing your card. Try again in a little bit.",
    ),
}
# Cards that need 3-D Secure: the stand-in has no authentication step, so it says so.
THREE_D_SECURE_CARDS = frozenset({"4000002500003155", "4000002760003184", "4000000000003220"})
_NOT_A_TEST_CARD = (
    "Your card was declined. Your request was in test mode, but used a non test card. For a list "
    "of valid test cards, visit: https://stripe.com/docs/testing."
)


class CardError(Exception):
    """A payment the form refuses: shown in the frame, and the session stays open."""

    def __init__(self, message: str, code: str, decline_code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.decline_code = message, code, decline_code

    def body(self) -> dict[str, Any]:
        error = {"type": "card_error", "code": self.code, "message": self.message}
        if self.decline_code:
            error["decline_code"] = self.decline_code
        return {"error": error}


def route(method: str, path: str) -> Callable[[Paying, str, bytes], _Response] | None:
    """The browser page for this request, or None when the path is not one of them."""
    return _ROUTES.get((method, path.rstrip("/") or "/"))


def _stripe_js(emulator: Paying, query: str, body: bytes) -> _Response:
    return _file("stripe.js", "application/javascript; charset=utf-8")


def _frame(emulator: Paying, query: str, body: bytes) -> _Response:
    return _file("checkout.html", "text/html; charset=utf-8")


def _demo(emulator: Paying, query: str, body: bytes) -> _Response:
    api = parse_qs(query).get("api", [emulator.checkout_api])[0]
    # JSON inside a <script>: no "</" may close the element early.
    config = json.dumps({"api": api.rstrip("/")}).replace("</", "<\\/")
    page = (_STATIC / "demo.html").read_text().replace("/*CONFIG*/{}", config)
    return 200, page.encode(), _page_headers("text/html; charset=utf-8")


def _session(emulator: Paying, query: str, body: bytes) -> _Response:
    """What the frame shows: the session's line items and amount, or why it cannot be paid."""
    session = _payable_session(emulator, _json_body(body))
    summary = {
        "currency": session["currency"],
        "amount_total": session["amount_total"],
        "customer_email": session["customer_email"],
        "line_items": [
            {
                "description": item["description"],
                "quantity": item["quantity"],
                "amount_total": item["amount_total"],
            }
            for item in session["line_items"]
        ],
    }
    return 200, _to_json(summary), _page_headers("application/json")


def _confirm(emulator: Paying, query: str, body: bytes) -> _Response:
    """Pay with the card typed in the frame: a decline leaves the session open for a retry."""
    fields = _json_body(body)
    session = _payable_session(emulator, fields)
    try:
        email = _check_form(fields)
    except CardError as err:
        return 402, _to_json(err.body()), _page_headers("application/json")
    completed = emulator.complete_session(session["id"], "paid", email=email)
    redirect = completed.get("redirect_on_completion")
    return_url = completed.get("return_url")  # absent with redirect_on_completion=never
    answer = {
        "status": completed["status"],
        "payment_status": completed["payment_status"],
        "redirect_on_completion": redirect,
        # Stripe fills the template itself, on redirect.
        "return_url": return_url.replace("{CHECKOUT_SESSION_ID}", completed["id"])
        if return_url
        else None,
    }
    return 200, _to_json(answer), _page_headers("application/json")


def _payable_session(emulator: Paying, fields: dict[str, Any]) -> dict[str, Any]:
    client_secret = fields.get("client_secret")
    if not isinstance(client_secret, str) or "_secret_" not in client_secret:
        raise _invalid("This is not a Checkout Session client_secret.", "client_secret")
    session = emulator.find_by_client_secret(client_secret)
    if session is None:
        raise StripeEmulatorError(
            404,
            "No such Checkout Session: the client_secret is unknown to this emulator (was it "
            "restarted?).",
            code="resource_missing",
        )
    if session["status"] == "expired" or session["expires_at"] <= _now():
        raise _invalid("This Checkout Session has expired.", code="checkout_session_expired")
    if session["status"] == "complete":
        raise _invalid("This Checkout Session is already complete.", code="checkout_complete")
    return session


def _check_form(fields: dict[str, Any]) -> str:
    """Validate the form as Stripe.js does; return the email, or raise CardError."""
    email = str(fields.get("email") or "").strip()
    if "@" not in email or email.startswith("@") or email.endswith("@"):
        raise CardError("Your email address is incomplete.", "email_invalid")
    number = "".join(str(fields.get("card_number") or "").split())
    if not number.isdigit() or len(number) < 13:
        raise CardError("Your card number is incomplete.", "incomplete_number")
    if not _luhn_valid(number):
        raise CardError("Your card number is invalid.", "invalid_number")
    _check_expiry(str(fields.get("expiry") or ""))
    cvc = str(fields.get("cvc") or "").strip()
    if not (cvc.isdigit() and len(cvc) in (3, 4)):
        raise CardError("Your card's security code is incomplete.", "incomplete_cvc")
    if number in THREE_D_SECURE_CARDS:
        raise CardError(
            "This test card needs 3-D Secure authentication, which the local Stripe emulator "
            "does not emulate. Use 4242 4242 4242 4242.",
            "authentication_required",
        )
    if number not in TEST_CARDS:
        raise CardError(_NOT_A_TEST_CARD, "card_declined", "test_mode_live_card")
    outcome = TEST_CARDS[number]
    if outcome is not None:
        raise CardError(outcome[2], outcome[0], outcome[1])
    return email


def _check_expiry(text: str) -> None:
    digits = "".join(ch for ch in text if ch.isdigit())
    if len(digits) != 4:
        raise CardError("Your card's expiration date is incomplete.", "incomplete_expiry")
    month, year = int(digits[:2]), 2000 + int(digits[2:])
    if not 1 <= month <= 12:
        raise CardError("Your card's expiration date is invalid.", "invalid_expiry_month")
    today = datetime.date.today()
    if (year, month) < (today.year, today.month):
        raise CardError("Your card's expiration year is in the past.", "invalid_expiry_year_past")


def _luhn_valid(number: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError as err:
        raise _invalid(f"Invalid JSON body: {err}") from err
    if not isinstance(value, dict):
        raise _invalid("The JSON body must be an object.")
    return value


def _now() -> int:
    return int(datetime.datetime.now(datetime.UTC).timestamp())


def _file(name: str, content_type: str) -> _Response:
    return 200, (_STATIC / name).read_bytes(), _page_headers(content_type)


def _page_headers(content_type: str) -> list[tuple[str, str]]:
    # no-store: a restarted emulator must never be answered from a stale cache.
    return [("Content-Type", content_type), ("Cache-Control", "no-store")]


_ROUTES: dict[tuple[str, str], Callable[[Paying, str, bytes], _Response]] = {
    ("GET", "/js/stripe.js"): _stripe_js,
    ("GET", "/embedded-checkout"): _frame,
    ("POST", "/embedded-checkout/session"): _session,
    ("POST", "/embedded-checkout/confirm"): _confirm,
    ("GET", "/demo"): _demo,
    ("GET", "/favicon.ico"): lambda *_: (204, b"", _page_headers("image/x-icon")),
}
