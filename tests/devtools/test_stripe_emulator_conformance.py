"""Conformance: the emulator answers as Stripe does, case by case, each with the source checked.

Each case is one raw request (form-encoded as stripe-python encodes, or deliberately not) and the
answer Stripe gives, with where that answer was checked. Every successful answer, and every
object the emulator serves, is also checked against the pinned SDK's resource classes. The last
section fails with a message naming the change when a new pinned SDK moves something the
emulator's hand-written parts depend on. How the rules are derived: docs/emulator.md.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import stripe
from stripe._api_version import _ApiVersion

from devtools.stripe_emulator import (
    LATEST_API_VERSION,
    StripeEmulator,
    params,
    resources,
    rules,
    shapes,
)
from devtools.stripe_emulator.state import RENAMED_UI_MODES_SINCE
from tests.support import free_port

KEY = "sk_test_conformance"
SESSION = shapes.session_class()

# Where each answer was checked.
SDK = "stripe-python 16.1.0: stripe/params/checkout/_session_create_params.py (SessionCreateParams)"
SDK_CLASS = "stripe-python 16.1.0: stripe/checkout/_session.py (Session)"
NODE_OMITTED = "stripe-node 22.5.0: src/resources/Checkout/Sessions.ts (`field?:` members)"
ENDIVE = "docs.stripe.com/changelog/endive (2026-09-30): payment_method_types removed from create"
ENUM_MESSAGE = "github.com/nursit/bank/issues/95: Stripe's 'Invalid locale: must be one of …' text"
BOOLEAN = "github.com/stripe/stripe-python/issues/487: 'Invalid boolean: True', code None"
UNKNOWN = "Stripe error codes (stripe-python 16.1.0 _error_object.py): parameter_unknown"
EMPTY = "Stripe error codes: parameter_invalid_empty ('You passed an empty string for …')"
INTEGER = "Stripe error codes: parameter_invalid_integer"
METADATA = "docs.stripe.com/metadata: 50 keys, 40-character keys, 500-character values"
CURRENCIES = "docs.stripe.com/currencies: presentment currencies, minimum charge amounts"
LINE_ITEMS = "docs.stripe.com/api/checkout/sessions/create: line_items (up to 100 in payment mode)"
RECURRING = "docs.stripe.com/api/checkout/sessions/create: mode (recurring prices: subscription)"
EXCLUSIVE = "docs.stripe.com/api/checkout/sessions/create: customer, customer_email"
EMBEDDED = "docs.stripe.com/api/checkout/sessions/create: return_url, redirect_on_completion"
VERSIONS = "github.com/pay-rails/pay/issues/680: 'Invalid Stripe API version: 2022-08-02'"
EXPAND = "docs.stripe.com/expand (ExpandableField in the SDK classes; four levels at most)"
IDEMPOTENCY = "docs.stripe.com/api/idempotent_requests (December 2026), stripe-facts.md"
REFUND_SDK = "stripe-python 16.1.0: stripe/params/_refund_create_params.py (RefundCreateParams)"
REFUND_DOCS = "docs.stripe.com/api/refunds/create: payment_intent or charge; amount > 0"
ENDPOINT_SDK = (
    "stripe-python 16.1.0: stripe/params/_webhook_endpoint_create_params.py "
    "(WebhookEndpointCreateParams: enabled_events and api_version are enums)"
)
ENDPOINT_UPDATE_SDK = (
    "stripe-python 16.1.0: stripe/params/_webhook_endpoint_update_params.py "
    "(WebhookEndpointUpdateParams: no api_version); stripe-facts.md, Webhook endpoints"
)
ENDPOINT_DOCS = "docs.stripe.com/api/webhook_endpoints/create: url, enabled_events required"
LIST_SDK = (
    "stripe-python 16.1.0: stripe/params/checkout/_session_list_params.py (SessionListParams), "
    "stripe/params/_event_list_params.py (EventListParams)"
)
RETRIEVE_SDK = "stripe-python 16.1.0: stripe/params/_payment_intent_retrieve_params.py"

BASE: dict[str, Any] = {
    "ui_mode": "embedded_page",
    "mode": "payment",
    "return_url": "https://app.example/done?session_id={CHECKOUT_SESSION_ID}",
    "line_items": [
        {
            "quantity": 1,
            "price_data": {
                "currency": "usd",
                "unit_amount": 200,
                "product_data": {"name": "Feelings board"},
            },
        }
    ],
}


def items(count: int = 1, **price: Any) -> list[dict[str, Any]]:
    data = {"currency": "usd", "unit_amount": 200, "product_data": {"name": "Board"}, **price}
    return [{"quantity": 1, "price_data": data} for _ in range(count)]


def encode(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """Stripe's form encoding, as stripe-python's _api_encode writes it (bools lowercase)."""
    for key, value in values.items():
        name = f"{prefix}[{key}]" if prefix else key
        if isinstance(value, dict):
            yield from encode(value, name)
        elif isinstance(value, list):
            yield from encode({str(i): item for i, item in enumerate(value)}, name)
        elif isinstance(value, bool):
            yield name, str(value).lower()
        else:
            yield name, str(value)


@dataclass(frozen=True)
class Case:
    """One create request (BASE with `overrides`; None removes a key) and Stripe's answer."""

    name: str
    overrides: dict[str, Any]
    status: int
    source: str
    code: str | None = None
    param: str | None = None
    message: str | None = None  # the start of Stripe's message
    headers: dict[str, str] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], bool] | None = None  # for a 200: what must hold

    def body(self) -> str:
        values = {**BASE, **self.overrides}
        return urlencode(list(encode({k: v for k, v in values.items() if v is not None})))


CASES = [
    # Accepted before, refused by Stripe.
    Case("payment_method_types is gone since endive", {"payment_method_types": ["card"]}, 400,
         f"{SDK}; {ENDIVE}", "parameter_unknown", "payment_method_types"),
    Case("unknown nested parameter", {"payment_intent_data": {"bogus": "1"}}, 400,
         f"{SDK} (SessionCreateParamsPaymentIntentData); {UNKNOWN}", "parameter_unknown",
         "payment_intent_data[bogus]", "Received unknown parameter: payment_intent_data[bogus]"),
    Case("unknown parameter under automatic_tax", {"automatic_tax": {"enabled": True, "bogus": 1}},
         400, f"{SDK}; {UNKNOWN}", "parameter_unknown", "automatic_tax[bogus]"),
    Case("unknown parameter in a line item", {"line_items": [{**items()[0], "colour": "red"}]},
         400, f"{SDK} (SessionCreateParamsLineItem); {UNKNOWN}", "parameter_unknown",
         "line_items[0][colour]"),
    Case("locale outside the enum", {"locale": "xx"}, 400, f"{SDK}; {ENUM_MESSAGE}", None,
         "locale", "Invalid locale: must be one of auto, bg, cs"),
    Case("submit_type outside the enum", {"submit_type": "buy"}, 400, f"{SDK}; {ENUM_MESSAGE}",
         None, "submit_type", "Invalid submit_type: must be one of auto, book, donate, pay, or"),
    Case("billing_address_collection outside the enum",
         {"billing_address_collection": "sometimes"}, 400, f"{SDK}; {ENUM_MESSAGE}", None,
         "billing_address_collection", "Invalid billing_address_collection: must be one of auto or required"),  # noqa: E501
    Case("allow_promotion_codes not a boolean", {"allow_promotion_codes": "yes"}, 400,
         f"{SDK}; {BOOLEAN}", None, "allow_promotion_codes", "Invalid boolean: yes"),
    Case("quantity not an integer", {"line_items": [{**items()[0], "quantity": "one"}]}, 400,
         f"{SDK}; {INTEGER}", "parameter_invalid_integer", "line_items[0][quantity]"),
    Case("an empty string for a parameter that cannot be unset", {"customer_email": ""}, 400,
         f"{SDK}; {EMPTY}", "parameter_invalid_empty", "customer_email"),
    Case("51 metadata keys on a nested object",
         {"payment_intent_data": {"metadata": {f"k{i}": "v" for i in range(51)}}}, 400, METADATA,
         None, "payment_intent_data[metadata]"),
    Case("a 41-character metadata key in a line item",
         {"line_items": [{**items()[0], "metadata": {"k" * 41: "v"}}]}, 400, METADATA, None,
         "line_items[0][metadata]"),
    Case("a recurring price in payment mode",
         {"line_items": items(recurring={"interval": "month"})}, 400, RECURRING, None, "line_items[0]", "You specified `payment` mode but passed a recurring"),  # noqa: E501
    Case("101 line items in payment mode", {"line_items": items(101)}, 400, LINE_ITEMS, None,
         "line_items"),
    Case("a currency Stripe does not support", {"line_items": items(currency="xyz")}, 400,
         CURRENCIES, None, "line_items[0][price_data][currency]", "Invalid currency: xyz"),
    Case("under the JPY minimum", {"line_items": items(currency="jpy", unit_amount=49)}, 400,
         CURRENCIES, "amount_too_small", "line_items"),
    Case("under the HKD minimum", {"line_items": items(currency="hkd", unit_amount=399)}, 400,
         CURRENCIES, "amount_too_small", "line_items"),
    Case("under the MXN minimum", {"line_items": items(currency="mxn", unit_amount=999)}, 400,
         CURRENCIES, "amount_too_small", "line_items"),
    Case("under the SEK minimum", {"line_items": items(currency="sek", unit_amount=299)}, 400,
         CURRENCIES, "amount_too_small", "line_items"),
    Case("customer and customer_email together",
         {"customer": "cus_123", "customer_email": "a@example.com"}, 400, EXCLUSIVE,
         "parameters_exclusive", "customer"),
    Case("success_url on an embedded page", {"success_url": "https://app.example/ok"}, 400,
         EMBEDDED, None, "success_url"),
    Case("an API version Stripe never released", {}, 400, VERSIONS, None, None,
         "Invalid Stripe API version: 2099-01-01.bogus", {"Stripe-Version": "2099-01-01.bogus"}),
    Case("an unsupported expansion", {"expand": ["metadata"]}, 400, EXPAND, None, "expand",
         "This property cannot be expanded (metadata)."),
    # Refused before, accepted by Stripe.
    Case("allowed_payment_method_types", {"allowed_payment_method_types": ["card"]}, 200, SDK,
         check=lambda s: s["allowed_payment_method_types"] == ["card"]),
    Case("ui_mode=form", {"ui_mode": "form"}, 200, SDK, check=lambda s: s["ui_mode"] == "form"),
    Case("line item metadata", {"line_items": [{**items()[0], "metadata": {"sku": "b1"}}]}, 200,
         SDK),
    Case("unit_amount_decimal", {"line_items": [{"quantity": 1, "price_data": {
         "currency": "usd", "unit_amount_decimal": "250.5", "product_data": {"name": "B"}}}]},
         200, SDK),
    Case("payment_method_options", {"payment_method_options": {"card": {
         "request_three_d_secure": "any"}}}, 200, SDK,
         check=lambda s: s["payment_method_options"]["card"]["request_three_d_secure"] == "any"),
    Case("adaptive_pricing", {"adaptive_pricing": {"enabled": True}}, 200, SDK,
         check=lambda s: s["adaptive_pricing"] == {"enabled": True}),
    Case("wallet_options", {"wallet_options": {"link": {"display": "never"}}}, 200, SDK),
    Case("name_collection", {"name_collection": {"individual": {"enabled": True}}}, 200, SDK,
         check=lambda s: s["name_collection"]["individual"]["enabled"] is True),
    Case("integration_identifier", {"integration_identifier": "shop-42"}, 200, SDK,
         check=lambda s: s["integration_identifier"] == "shop-42"),
    Case("expand[]=payment_link", {"expand": ["payment_link"]}, 200, f"{SDK_CLASS}; {EXPAND}",
         check=lambda s: s["payment_link"] is None),
    Case("a nested expansion", {"expand": ["line_items.data.price.product"]}, 200, EXPAND,
         check=lambda s: s["line_items"]["data"][0]["price"]["product"]["name"]
         == "Feelings board"),
    Case("an embedded page's return_url comes back; no success_url", {}, 200,
         f"{SDK_CLASS}; {NODE_OMITTED}",
         check=lambda s: s["return_url"].endswith("{CHECKOUT_SESSION_ID}")),
    Case("a hosted page omits return_url and redirect_on_completion",
         {"ui_mode": "hosted_page", "return_url": None, "success_url": "https://app.example/ok"},
         200, NODE_OMITTED,
         check=lambda s: "return_url" not in s and "redirect_on_completion" not in s),
]  # fmt: skip


@dataclass(frozen=True)
class Call:
    """A request to an endpoint beyond the session create, and Stripe's answer.

    In `path` and in `params`' values, `{pi}` and `{we}` stand for a paid session's PaymentIntent
    and a webhook endpoint made for the case.
    """

    name: str
    method: str
    path: str
    params: dict[str, Any]
    status: int
    source: str
    code: str | None = None
    param: str | None = None
    message: str | None = None  # the start of Stripe's message
    check: Callable[[dict[str, Any]], bool] | None = None  # for a 200: what must hold

    def filled(self, ids: dict[str, str]) -> tuple[str, dict[str, Any]]:
        return fill(self.path, ids), fill(self.params, ids)


def fill(value: Any, ids: dict[str, str]) -> Any:
    """`value` with `{pi}` and `{we}` replaced by those ids, at any depth."""
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {key: fill(item, ids) for key, item in value.items()}
    if isinstance(value, list):
        return [fill(item, ids) for item in value]
    return value


HOOK = {"url": "https://shop.example/hook", "enabled_events": ["charge.refunded"]}

CALLS = [
    # POST /v1/refunds
    Call("refund: an unknown parameter", "POST", "/v1/refunds",
         {"payment_intent": "{pi}", "bogus": "1"}, 400, f"{REFUND_SDK}; {UNKNOWN}",
         "parameter_unknown", "bogus", "Received unknown parameter: bogus"),
    Call("refund: reason outside the enum", "POST", "/v1/refunds",
         {"payment_intent": "{pi}", "reason": "changed_my_mind"}, 400,
         f"{REFUND_SDK}; {ENUM_MESSAGE}", None, "reason",
         "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer"),
    Call("refund: origin outside the enum", "POST", "/v1/refunds",
         {"payment_intent": "{pi}", "origin": "bank"}, 400, f"{REFUND_SDK}; {ENUM_MESSAGE}",
         None, "origin", "Invalid origin: must be one of customer_balance"),
    Call("refund: amount not an integer", "POST", "/v1/refunds",
         {"payment_intent": "{pi}", "amount": "ten"}, 400, f"{REFUND_SDK}; {INTEGER}",
         "parameter_invalid_integer", "amount"),
    Call("refund: refund_application_fee not a boolean", "POST", "/v1/refunds",
         {"payment_intent": "{pi}", "refund_application_fee": "yes"}, 400,
         f"{REFUND_SDK}; {BOOLEAN}", None, "refund_application_fee", "Invalid boolean: yes"),
    Call("refund: neither payment_intent nor charge", "POST", "/v1/refunds", {"amount": "100"},
         400, REFUND_DOCS, None, "payment_intent", "One of the following params should be"),
    Call("refund: a zero amount", "POST", "/v1/refunds", {"payment_intent": "{pi}",
         "amount": "0"}, 400, REFUND_DOCS, None, "amount"),
    Call("refund: 51 metadata keys", "POST", "/v1/refunds",
         {"payment_intent": "{pi}", "metadata": {f"k{i}": "v" for i in range(51)}}, 400,
         METADATA, None, "metadata"),
    Call("refund: an unsupported expansion", "POST", "/v1/refunds",
         {"payment_intent": "{pi}", "expand": ["bogus"]}, 400, f"{REFUND_SDK}; {EXPAND}", None,
         "expand", "This property cannot be expanded (bogus)."),
    Call("refund: a partial refund, its charge expanded", "POST", "/v1/refunds",
         {"payment_intent": "{pi}", "amount": "50", "expand": ["charge"]}, 200,
         f"{REFUND_SDK}; {EXPAND}",
         check=lambda r: r["amount"] == 50 and r["charge"]["amount_refunded"] == 50),
    # POST /v1/webhook_endpoints and /v1/webhook_endpoints/{id}
    Call("endpoint: no url", "POST", "/v1/webhook_endpoints",
         {"enabled_events": ["charge.refunded"]}, 400, f"{ENDPOINT_SDK}; {ENDPOINT_DOCS}",
         "parameter_missing", "url"),
    Call("endpoint: no enabled_events", "POST", "/v1/webhook_endpoints",
         {"url": HOOK["url"]}, 400, f"{ENDPOINT_SDK}; {ENDPOINT_DOCS}", "parameter_missing",
         "enabled_events"),
    Call("endpoint: an event type Stripe does not have", "POST", "/v1/webhook_endpoints",
         {**HOOK, "enabled_events": ["charge.refund"]}, 400, f"{ENDPOINT_SDK}; {ENUM_MESSAGE}",
         None, "enabled_events[0]", "Invalid enabled_events[0]: must be one of *, account."),
    Call("endpoint: an API version Stripe never released", "POST", "/v1/webhook_endpoints",
         {**HOOK, "api_version": "2099-01-01.bogus"}, 400, f"{ENDPOINT_SDK}; {VERSIONS}", None,
         "api_version", "Invalid api_version: must be one of 2011-01-01"),
    Call("endpoint: a released older API version", "POST", "/v1/webhook_endpoints",
         {**HOOK, "api_version": "2025-09-30.clover"}, 200, ENDPOINT_SDK,
         check=lambda e: e["api_version"] == "2025-09-30.clover" and e["secret"]),
    Call("endpoint: connect not a boolean", "POST", "/v1/webhook_endpoints",
         {**HOOK, "connect": "yes"}, 400, f"{ENDPOINT_SDK}; {BOOLEAN}", None, "connect",
         "Invalid boolean: yes"),
    Call("endpoint: an unknown parameter", "POST", "/v1/webhook_endpoints",
         {**HOOK, "colour": "red"}, 400, f"{ENDPOINT_SDK}; {UNKNOWN}", "parameter_unknown",
         "colour"),
    Call("endpoint: an unsupported expansion", "POST", "/v1/webhook_endpoints",
         {**HOOK, "expand": ["bogus"]}, 400, f"{ENDPOINT_SDK}; {EXPAND}", None, "expand",
         "This property cannot be expanded (bogus)."),
    Call("endpoint update: api_version", "POST", "/v1/webhook_endpoints/{we}",
         {"api_version": "2025-09-30.clover"}, 400, f"{ENDPOINT_UPDATE_SDK}; {UNKNOWN}",
         "parameter_unknown", "api_version"),
    Call("endpoint update: disabled not a boolean", "POST", "/v1/webhook_endpoints/{we}",
         {"disabled": "maybe"}, 400, f"{ENDPOINT_UPDATE_SDK}; {BOOLEAN}", None, "disabled",
         "Invalid boolean: maybe"),
    Call("endpoint update: an empty description unsets it", "POST",
         "/v1/webhook_endpoints/{we}", {"description": "", "disabled": "true"}, 200,
         ENDPOINT_UPDATE_SDK,
         check=lambda e: e["description"] is None and e["status"] == "disabled"),
    # Lists and retrieves
    Call("session list: status outside the enum", "GET", "/v1/checkout/sessions",
         {"status": "paid"}, 400, f"{LIST_SDK}; {ENUM_MESSAGE}", None, "status",
         "Invalid status: must be one of complete, expired, or open"),
    Call("session list: an unknown created operator", "GET", "/v1/checkout/sessions",
         {"created": {"since": "1"}}, 400, f"{LIST_SDK}; {UNKNOWN}", "parameter_unknown",
         "created[since]"),
    Call("session list: an expansion below line items that does not exist", "GET",
         "/v1/checkout/sessions", {"expand": ["data.line_items.data.price.bogus"]}, 400,
         f"{SDK_CLASS}; {EXPAND}", None, "expand",
         "This property cannot be expanded (data.line_items.data.price.bogus)."),
    Call("session list: an expansion below the PaymentIntent that does not exist", "GET",
         "/v1/checkout/sessions", {"expand": ["data.payment_intent.bogus"]}, 400,
         f"{SDK_CLASS}; {EXPAND}", None, "expand",
         "This property cannot be expanded (data.payment_intent.bogus)."),
    Call("session list: the deepest expansion", "GET", "/v1/checkout/sessions",
         {"expand": ["data.line_items.data.price.product"]}, 200, EXPAND,
         check=lambda page: page["data"][0]["line_items"]["data"][0]["price"]["product"]["name"]
         == "Feelings board"),
    Call("event list: delivery_success not a boolean", "GET", "/v1/events",
         {"delivery_success": "maybe"}, 400, f"{LIST_SDK}; {BOOLEAN}", None,
         "delivery_success", "Invalid boolean: maybe"),
    Call("event list: limit not an integer", "GET", "/v1/events", {"limit": "ten"}, 400,
         f"{LIST_SDK}; {INTEGER}", "parameter_invalid_integer", "limit"),
    Call("payment intent: an unknown parameter", "GET", "/v1/payment_intents/{pi}",
         {"colour": "red"}, 400, f"{RETRIEVE_SDK}; {UNKNOWN}", "parameter_unknown", "colour"),
    Call("payment intent: its latest charge expanded", "GET", "/v1/payment_intents/{pi}",
         {"expand": ["latest_charge"]}, 200, f"{RETRIEVE_SDK}; {EXPAND}",
         check=lambda pi: pi["latest_charge"]["payment_intent"] == pi["id"]),
]  # fmt: skip

# The SDK class of each object the emulator answers with, by its `object`.
CLASSES: dict[str, type] = {
    "checkout.session": SESSION,
    "payment_intent": stripe.PaymentIntent,
    "charge": stripe.Charge,
    "refund": stripe.Refund,
    "dispute": stripe.Dispute,
    "webhook_endpoint": stripe.WebhookEndpoint,
    "event": stripe.Event,
}


def valid_body() -> str:
    return urlencode(list(encode(BASE)))


def post(emulator: StripeEmulator, path: str, body: str, **headers: str) -> requests.Response:
    return requests.post(
        f"{emulator.url}{path}",
        data=body,
        headers={
            "Authorization": f"Bearer {KEY}",
            "Content-Type": "application/x-www-form-urlencoded",
            **headers,
        },
        timeout=30,
    )


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_the_emulator_answers_as_stripe_does(stripe_emulator, case):
    response = post(stripe_emulator, "/v1/checkout/sessions", case.body(), **case.headers)
    body = response.json()
    assert response.status_code == case.status, f"{case.source}: {body}"
    if case.status != 200:
        error = body["error"]
        assert (error.get("code"), error.get("param")) == (case.code, case.param), case.source
        assert error["message"].startswith(case.message or ""), case.source
        assert stripe_emulator.calls()["sessions_created"] == 0
        return
    assert shapes.problems(SESSION, body) == [], SDK_CLASS
    if case.check is not None:
        assert case.check(body), case.source


@pytest.mark.parametrize("call", CALLS, ids=lambda call: call.name)
def test_the_other_endpoints_answer_as_stripe_does(stripe_emulator, call):
    ids = {"pi": paid_intent(stripe_emulator), "we": webhook_endpoint(stripe_emulator)}
    path, values = call.filled(ids)
    form = urlencode(list(encode(values)))
    if call.method == "GET":
        response = requests.get(f"{stripe_emulator.url}{path}?{form}", headers=AUTH, timeout=30)
    else:
        response = post(stripe_emulator, path, form)
    body = response.json()
    assert response.status_code == call.status, f"{call.source}: {body}"
    if call.status != 200:
        error = body["error"]
        assert (error.get("code"), error.get("param")) == (call.code, call.param), call.source
        assert error["message"].startswith(call.message or ""), call.source
        assert charge_of(stripe_emulator, ids["pi"])["amount_refunded"] == 0
        listed = requests.get(f"{stripe_emulator.url}/v1/webhook_endpoints", headers=AUTH)
        assert [e["id"] for e in listed.json()["data"]] == [ids["we"]]
        return
    for item in body["data"] if body["object"] == "list" else [body]:
        conforming(CLASSES[item["object"]], item)
    if call.check is not None:
        assert call.check(body), call.source


AUTH = {"Authorization": f"Bearer {KEY}"}


def paid_intent(emulator: StripeEmulator) -> str:
    """A paid session's PaymentIntent (the session has BASE's line item)."""
    created = post(emulator, "/v1/checkout/sessions", valid_body()).json()
    return str(emulator.complete_session(created["id"])["payment_intent"])


def webhook_endpoint(emulator: StripeEmulator) -> str:
    form = urlencode(list(encode(HOOK)))
    return str(post(emulator, "/v1/webhook_endpoints", form).json()["id"])


def charge_of(emulator: StripeEmulator, intent: str) -> dict[str, Any]:
    url = f"{emulator.url}/v1/payment_intents/{intent}?expand[]=latest_charge"
    found: dict[str, Any] = requests.get(url, headers=AUTH, timeout=30).json()["latest_charge"]
    return found


# --- idempotency ---------------------------------------------------------------------------------


def test_a_500_is_saved_and_replayed_and_marked_not_to_retry(stripe_emulator):
    stripe_emulator.set_faults(mode="error_500", remaining=1)
    body = valid_body()
    first = post(stripe_emulator, "/v1/checkout/sessions", body, **{"Idempotency-Key": "k1"})
    again = post(stripe_emulator, "/v1/checkout/sessions", body, **{"Idempotency-Key": "k1"})
    assert (first.status_code, again.status_code) == (500, 500), IDEMPOTENCY
    assert first.headers["Stripe-Should-Retry"] == "false", IDEMPOTENCY
    assert again.headers["Idempotent-Replayed"] == "true", IDEMPOTENCY
    assert again.json() == first.json()


def test_a_validation_failure_is_not_saved(stripe_emulator):
    key = {"Idempotency-Key": "k2"}
    refused = post(stripe_emulator, "/v1/checkout/sessions", "mode=payment&locale=xx", **key)
    accepted = post(stripe_emulator, "/v1/checkout/sessions", valid_body(), **key)
    assert (refused.status_code, accepted.status_code) == (400, 200), IDEMPOTENCY
    assert "Idempotent-Replayed" not in accepted.headers


@pytest.mark.parametrize(
    ("path", "refused", "corrected"),
    [
        ("/v1/refunds", {"payment_intent": "{pi}", "bogus": "1"}, {"payment_intent": "{pi}"}),
        ("/v1/webhook_endpoints", {**HOOK, "bogus": "1"}, HOOK),
        ("/v1/webhook_endpoints/{we}", {"api_version": "2025-09-30.clover"}, {"url": HOOK["url"]}),
    ],
)
def test_a_refund_or_endpoint_that_fails_validation_is_not_saved(
    stripe_emulator, path, refused, corrected
):
    ids = {"pi": paid_intent(stripe_emulator), "we": webhook_endpoint(stripe_emulator)}
    path = fill(path, ids)
    key = {"Idempotency-Key": "k-validation"}
    first = post(stripe_emulator, path, urlencode(list(encode(fill(refused, ids)))), **key)
    again = post(stripe_emulator, path, urlencode(list(encode(fill(corrected, ids)))), **key)
    assert first.json()["error"]["code"] == "parameter_unknown", IDEMPOTENCY
    assert again.status_code == 200, f"{IDEMPOTENCY}: {again.json()}"
    assert "Idempotent-Replayed" not in again.headers
    assert stripe_emulator.idempotency_keys() == ["k-validation"]


def test_a_refunds_500_is_saved_and_replayed_like_a_sessions(stripe_emulator):
    body = urlencode({"payment_intent": paid_intent(stripe_emulator)})
    stripe_emulator.set_faults(mode="error_500", remaining=1)
    first = post(stripe_emulator, "/v1/refunds", body, **{"Idempotency-Key": "k-500"})
    again = post(stripe_emulator, "/v1/refunds", body, **{"Idempotency-Key": "k-500"})
    assert (first.status_code, again.status_code) == (500, 500), IDEMPOTENCY
    assert first.headers["Stripe-Should-Retry"] == "false", IDEMPOTENCY
    assert again.headers["Idempotent-Replayed"] == "true", IDEMPOTENCY


def test_a_concurrent_duplicate_is_409_and_not_saved(stripe_emulator):
    body, key = valid_body(), {"Idempotency-Key": "k3"}
    stripe_emulator.hold_executions()
    first: list[requests.Response] = []
    thread = threading.Thread(
        target=lambda: first.append(post(stripe_emulator, "/v1/checkout/sessions", body, **key))
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10  # generous: only bounds a broken emulator
        while not stripe_emulator.executing_keys() and time.monotonic() < deadline:
            time.sleep(0.005)
        duplicate = post(stripe_emulator, "/v1/checkout/sessions", body, **key)
    finally:
        stripe_emulator.release_executions()
        thread.join(timeout=10)
    assert duplicate.status_code == 409, IDEMPOTENCY
    assert duplicate.json()["error"]["type"] == "idempotency_error"
    replay = post(stripe_emulator, "/v1/checkout/sessions", body, **key)
    assert replay.json()["id"] == first[0].json()["id"]


# --- every object the emulator serves, against the SDK's classes ---------------------------------


def conforming(cls: type, value: dict[str, Any]) -> dict[str, Any]:
    found = shapes.problems(cls, value)
    assert found == [], f"{cls.__qualname__} differs from the pinned SDK's class: {found}"
    return value


def test_every_object_the_emulator_serves_matches_its_sdk_class(stripe_emulator):
    client = stripe.StripeClient(KEY, base_addresses={"api": stripe_emulator.url})
    stripe_emulator.add_price("price_sub", 900, "usd", "Monthly")
    expand = {"expand": ["line_items.data.price.product", "payment_intent.latest_charge"]}
    kinds: list[dict[str, Any]] = [
        {**BASE, "metadata": {"imageId": "img_1"}, "customer_email": "ada@example.com"},
        {"mode": "payment", "success_url": "https://app.example/ok", "line_items": items()},
        {"mode": "setup", "ui_mode": "elements", "return_url": BASE["return_url"],
         "currency": "usd"},
        {"mode": "subscription", "ui_mode": "embedded_page", "return_url": BASE["return_url"],
         "line_items": items(recurring={"interval": "month", "interval_count": 3})},
    ]  # fmt: skip
    for params_ in kinds:
        created = client.v1.checkout.sessions.create(params=params_)  # type: ignore[arg-type]
        conforming(SESSION, json.loads(str(created.last_response.body)))
        setup = params_["mode"] == "setup"
        paid = "no_payment_required" if setup else "unpaid"
        stripe_emulator.complete_session(created.id, payment_status=paid)
        got = client.v1.checkout.sessions.retrieve(created.id, params=expand)  # type: ignore[arg-type]
        session = conforming(SESSION, json.loads(str(got.last_response.body)))
        if session["payment_intent"]:  # a bank debit still settling: pending, in us_bank_account
            conforming(stripe.PaymentIntent, session["payment_intent"])
            conforming(stripe.Charge, session["payment_intent"]["latest_charge"])
        for item in session["line_items"]["data"]:
            conforming(stripe.LineItem, item)
            conforming(stripe.Product, item["price"]["product"])
        closed = f"http://127.0.0.1:{free_port()}/webhook"
        kind = "checkout.session.completed" if setup else "checkout.session.async_payment_succeeded"
        event = stripe_emulator.deliver_event(created.id, kind, url=closed)["event"]
        conforming(stripe.Event, event)
        conforming(SESSION, event["data"]["object"])
    conforming(SESSION, stripe_emulator.expire_session(client.v1.checkout.sessions.create(
        params=BASE).id))  # type: ignore[arg-type]  # fmt: skip
    payments_and_endpoints_conform(stripe_emulator, client)


def payments_and_endpoints_conform(emulator: StripeEmulator, client: stripe.StripeClient) -> None:
    """A card payment, a refund, a dispute and a webhook endpoint: every answer and event."""

    def body(found: Any) -> dict[str, Any]:
        return dict(json.loads(str(found.last_response.body)))

    intent_id = paid_intent(emulator)
    intent = body(client.v1.payment_intents.retrieve(intent_id))
    conforming(stripe.PaymentIntent, intent)
    refund = body(client.v1.refunds.create(params={"payment_intent": intent_id, "amount": 50}))
    conforming(stripe.Refund, refund)
    conforming(stripe.Refund, body(client.v1.refunds.retrieve(refund["id"])))
    charge = body(client.v1.charges.retrieve(intent["latest_charge"], params={
        "expand": ["refunds"]}))  # fmt: skip
    conforming(stripe.Charge, charge)
    assert [r["id"] for r in charge["refunds"]["data"]] == [refund["id"]]
    dispute = emulator.open_dispute(paid_intent(emulator))
    conforming(stripe.Dispute, body(client.v1.disputes.retrieve(dispute["id"])))
    conforming(stripe.Dispute, emulator.close_dispute(dispute["id"], "lost"))
    created = body(client.v1.webhook_endpoints.create(params=HOOK))  # type: ignore[arg-type]
    assert created["secret"].startswith("whsec_")  # on creation only
    conforming(stripe.WebhookEndpoint, created)
    for found in (
        client.v1.webhook_endpoints.retrieve(created["id"]),
        client.v1.webhook_endpoints.update(created["id"], params={"disabled": True}),
    ):
        assert "secret" not in body(found)
        conforming(stripe.WebhookEndpoint, body(found))
    conforming(stripe.WebhookEndpoint, body(client.v1.webhook_endpoints.list())["data"][0])
    events = body(client.v1.events.list(params={"limit": 100}))["data"]
    assert {"charge.refunded", "refund.created", "charge.dispute.closed"} <= {
        event["type"] for event in events
    }
    for event in events:
        conforming(stripe.Event, event)
        conforming(CLASSES[event["data"]["object"]["object"]], event["data"]["object"])


# --- when the pinned SDK moves -------------------------------------------------------------------


def test_the_emulator_speaks_the_pinned_sdks_api_version():
    assert _ApiVersion.CURRENT == LATEST_API_VERSION, (
        f"The pinned stripe-python now speaks {_ApiVersion.CURRENT}: set LATEST_API_VERSION in "
        "devtools/stripe_emulator/state.py to it, and read that version's changelog for "
        "removed parameters (params.register_removed) and renamed values (rules.py)."
    )
    assert _ApiVersion.CURRENT in params.api_versions()
    renames = [v for v in params.api_versions() if v.startswith(RENAMED_UI_MODES_SINCE)]
    assert renames == ["2026-03-25.dahlia"], "the dahlia ui_mode rename's version moved"


def test_every_endpoint_the_emulator_serves_is_checked_against_a_typed_dict_of_the_sdk():
    served = {"create_session", "retrieve_session", "expire_session", *resources.ENDPOINTS}
    assert served == set(params.registered())
    for endpoint, typed_dict in params.registered().items():
        # Compiling it fails if the pinned SDK no longer has it; only a DELETE takes nothing.
        schema = params.schema(endpoint)
        assert schema.name == typed_dict.rpartition(".")[2]
        assert schema.fields or endpoint.startswith("delete_"), f"{typed_dict} has no parameters"


def test_removed_parameters_are_still_absent_from_the_sdk():
    assert "payment_method_types" not in params.schema("create_session").fields, (
        "SessionCreateParams has payment_method_types again: drop its register_removed line"
    )


def test_the_fields_stripe_omits_are_still_fields_of_the_sdk_classes():
    for qualname, newer in shapes.NEWER_THAN_NODE.items():
        gone = sorted(newer - set(shapes.fields(shapes.resource(f"stripe.checkout.{qualname}"))))
        assert not gone, f"stripe-python's {qualname} no longer has {gone}: edit NEWER_THAN_NODE"
    # The generated table covers every object the emulator serves.
    for path in shapes.SERVED:
        name = path.rpartition(".")[2]
        assert name in shapes.OMITTED, f"omitted.txt has no {name}: rerun omitted_from_node.py"


@pytest.mark.parametrize(
    "name",
    sorted(
        {"mode", "ui_mode", "return_url", "success_url", "cancel_url", "redirect_on_completion"}
        | {"line_items", "currency", "customer", "customer_email", "client_reference_id"}
        | {"expires_at", "metadata", "payment_intent_data", "subscription_data"}
    ),
)
def test_the_hand_written_rules_name_parameters_the_sdk_still_has(name):
    assert name in params.schema("create_session").fields, (
        f"SessionCreateParams no longer has {name}: rules.py checks it; update the rule"
    )


def test_every_rule_is_named_in_the_docs():
    from tests.support import ROOT

    text = (ROOT / "docs" / "emulator.md").read_text()
    named = {rule.__name__ for endpoint_rules in rules.RULES.values() for rule in endpoint_rules}
    missing = sorted(name for name in named if name not in text)
    assert not missing, f"docs/emulator.md does not list {missing}"
