"""The Stripe emulator, driven by the real stripe-python SDK over HTTP (never patched)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import stripe

from devtools.stripe_emulator import UI_MODE_NEW_TO_OLD, StripeEmulator
from tests.stripe_emulator_client import WEBHOOK_SECRET, WebhookReceiver
from tests.support import ROOT, free_port, stop_process

KEY = "sk_test_emulator"
OLD_API_VERSION = "2025-09-30.clover"
RETURN_URL = "https://app.example/hero-me?session_id={CHECKOUT_SESSION_ID}"


def sdk(emulator: StripeEmulator, key: str = KEY, **kwargs: Any) -> stripe.StripeClient:
    return stripe.StripeClient(
        key, base_addresses={"api": emulator.url}, max_network_retries=0, **kwargs
    )


def session_params(**overrides: Any) -> dict[str, Any]:
    """A valid embedded-page payment session; an override of None removes that parameter."""
    params: dict[str, Any] = {
        "ui_mode": "embedded_page",
        "mode": "payment",
        "return_url": RETURN_URL,
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 200,
                    "product_data": {"name": "Hero Me Feelings"},
                },
            }
        ],
    }
    params.update(overrides)
    return {name: value for name, value in params.items() if value is not None}


def price_data(**overrides: Any) -> list[dict[str, Any]]:
    data = {"currency": "usd", "unit_amount": 200, "product_data": {"name": "Board"}}
    data.update(overrides)
    return [{"quantity": 1, "price_data": data}]


@pytest.fixture
def client(stripe_emulator: StripeEmulator) -> stripe.StripeClient:
    return sdk(stripe_emulator)


def create(client: stripe.StripeClient, options: dict[str, Any] | None = None, **overrides: Any):
    # Loose on purpose: some tests send what the SDK's typed parameters would refuse.
    params: Any = session_params(**overrides)
    sent: Any = options
    return client.v1.checkout.sessions.create(params=params, options=sent)


def helper(emulator: StripeEmulator, method: str, path: str, **json: Any) -> requests.Response:
    return requests.request(method, f"{emulator.url}/_emulator/{path}", json=json or None)


# --- sessions --------------------------------------------------------------------------------


def test_create_retrieve_expire_round_trip(client):
    created = create(client)
    assert created.status == "open"
    retrieved = client.v1.checkout.sessions.retrieve(created.id)
    assert (retrieved.id, retrieved.client_secret) == (created.id, created.client_secret)
    expired = client.v1.checkout.sessions.expire(created.id)
    assert expired.status == "expired"
    assert client.v1.checkout.sessions.retrieve(created.id).status == "expired"


def test_embedded_session_is_shaped_like_stripes(client):
    session = create(client)
    assert re.fullmatch(r"cs_test_[A-Za-z0-9]{58}", session.id)
    assert re.fullmatch(rf"{session.id}_secret_[A-Za-z0-9]{{24}}", session.client_secret)
    assert session.object == "checkout.session"
    assert (session.ui_mode, session.mode, session.payment_status) == (
        "embedded_page",
        "payment",
        "unpaid",
    )
    assert session.return_url == RETURN_URL  # the template stays literal
    assert session.redirect_on_completion == "always"
    assert (session.amount_subtotal, session.amount_total, session.currency) == (200, 200, "usd")
    assert session.expires_at == session.created + 24 * 3600
    assert session.metadata.to_dict() == {}
    assert session.url is None and session.customer_details is None
    assert session.payment_intent is None and session.livemode is False


def test_hosted_page_is_the_default_and_takes_success_url(client):
    session = create(client, ui_mode=None, return_url=None, success_url="https://app.example/ok")
    assert session.ui_mode == "hosted_page"
    assert session.client_secret is None
    assert session.url.endswith(session.id)
    # Embedded-page fields: Stripe leaves them out of hosted sessions, rather than null.
    assert "return_url" not in session and "redirect_on_completion" not in session


def test_live_key_makes_live_sessions_that_test_keys_cannot_see(stripe_emulator):
    session = create(sdk(stripe_emulator, "sk_live_emulator"))
    assert session.id.startswith("cs_live_") and session.livemode is True
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sdk(stripe_emulator).v1.checkout.sessions.retrieve(session.id)
    assert caught.value.code == "resource_missing"


def test_nested_form_params_are_decoded(client, stripe_emulator):
    line_items = [
        {"quantity": 2, "price_data": price_data(unit_amount=150)[0]["price_data"]},
        {"quantity": 1, "price_data": price_data(unit_amount=75)[0]["price_data"]},
    ]
    session = create(
        client,
        line_items=line_items,
        metadata={"imageId": "img_123", "0": "digit keys stay a hash"},
        expand=["line_items"],
    )
    assert session.amount_total == 2 * 150 + 75
    assert [item.quantity for item in session.line_items.data] == [2, 1]
    assert session.line_items.data[0].price.unit_amount == 150
    assert session.line_items.data[1].description == "Board"
    stored = stripe_emulator.get_session(session.id)
    assert stored["metadata"] == {"imageId": "img_123", "0": "digit keys stay a hash"}
    expanded = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["line_items"]})
    assert len(expanded.line_items.data) == 2


def test_dashboard_price_is_used_by_id(client, stripe_emulator):
    stripe_emulator.add_price("price_poster", 900, "usd", "Poster")
    session = create(client, line_items=[{"price": "price_poster", "quantity": 2}])
    assert session.amount_total == 1800


@pytest.mark.parametrize("redirect", ["if_required", "always"])
def test_redirect_modes_that_need_a_return_url(client, redirect):
    assert create(client, redirect_on_completion=redirect).redirect_on_completion == redirect


def test_redirect_never_needs_no_return_url(client):
    session = create(client, redirect_on_completion="never", return_url=None)
    assert "return_url" not in session  # Stripe omits it rather than sending null


def test_metadata_at_its_limits_is_accepted_and_empty_values_unset(client):
    metadata = {f"k{i:02d}": "v" * 500 for i in range(49)}
    metadata["x" * 40] = ""
    session = create(client, metadata=metadata)
    assert len(session.metadata.to_dict()) == 49
    assert "x" * 40 not in session.metadata.to_dict()


# --- API versions ----------------------------------------------------------------------------


@pytest.mark.parametrize("old_name", sorted(UI_MODE_NEW_TO_OLD.values()))
def test_current_api_version_rejects_old_ui_mode_names(client, old_name):
    with pytest.raises(stripe.InvalidRequestError) as caught:
        create(client, ui_mode=old_name)
    assert caught.value.param == "ui_mode"
    assert caught.value.user_message == (
        "Invalid ui_mode: must be one of elements, embedded_page, form, or hosted_page"
    )


def test_old_api_version_accepts_only_old_ui_mode_names(client):
    old = {"stripe_version": OLD_API_VERSION}
    session = create(client, old, ui_mode=UI_MODE_NEW_TO_OLD["embedded_page"])
    assert session.ui_mode == UI_MODE_NEW_TO_OLD["embedded_page"]
    assert session.client_secret
    # Each API version renders the stored session with its own names.
    assert client.v1.checkout.sessions.retrieve(session.id).ui_mode == "embedded_page"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        create(client, old, ui_mode="embedded_page")
    assert caught.value.param == "ui_mode"


@pytest.mark.parametrize("version", ["2099-01-01.bogus", "2026-10-29.endive", "2019-2-19"])
def test_an_api_version_stripe_never_released_is_refused(client, version):
    with pytest.raises(stripe.InvalidRequestError) as caught:
        create(client, {"stripe_version": version})
    assert caught.value.http_status == 400
    assert caught.value.user_message == f"Invalid Stripe API version: {version}"


def test_payment_method_types_is_taken_only_before_endive(client):
    old = {"stripe_version": OLD_API_VERSION}
    session = create(client, old, ui_mode="embedded", payment_method_types=["card"])
    assert session.payment_method_types == ["card"]
    with pytest.raises(stripe.InvalidRequestError) as caught:
        create(client, payment_method_types=["card"])
    assert (caught.value.code, caught.value.param) == ("parameter_unknown", "payment_method_types")


# --- validation --------------------------------------------------------------------------------

ITEM = "line_items[0]"
PRICE_DATA = f"{ITEM}[price_data]"


@pytest.mark.parametrize(
    ("overrides", "param", "code"),
    [
        ({"mode": None}, "mode", "parameter_missing"),
        ({"mode": "donation"}, "mode", None),
        ({"return_url": None}, "return_url", None),
        ({"return_url": "/hero-me"}, "return_url", None),
        ({"return_url": "ftp://app.example/x"}, "return_url", None),
        ({"redirect_on_completion": "never"}, "return_url", None),
        ({"redirect_on_completion": "sometimes"}, "redirect_on_completion", None),
        ({"success_url": "https://app.example/ok"}, "success_url", None),
        ({"cancel_url": "https://app.example/no"}, "cancel_url", None),
        ({"line_items": None}, "line_items", "parameter_missing"),
        ({"line_items": [{**price_data()[0], "quantity": 0}]}, f"{ITEM}[quantity]", None),
        (
            {"line_items": [{"price_data": price_data()[0]["price_data"]}]},
            f"{ITEM}[quantity]",
            "parameter_missing",
        ),
        ({"line_items": [{"quantity": 1}]}, f"{ITEM}[price]", None),
        (
            {"line_items": [{"quantity": 1, "colour": "red"}]},
            f"{ITEM}[colour]",
            "parameter_unknown",
        ),
        ({"line_items": price_data(currency="USD")}, f"{PRICE_DATA}[currency]", None),
        ({"line_items": price_data(unit_amount=-1)}, f"{PRICE_DATA}[unit_amount]", None),
        (
            {"line_items": price_data(unit_amount="2.5")},
            f"{PRICE_DATA}[unit_amount]",
            "parameter_invalid_integer",
        ),
        (
            {"line_items": price_data(product_data={"name": ""})},
            f"{PRICE_DATA}[product_data][name]",
            "parameter_invalid_empty",
        ),
        (
            {"line_items": [{"price": "price_missing", "quantity": 1}]},
            f"{ITEM}[price]",
            "resource_missing",
        ),
        ({"line_items": price_data(unit_amount=49)}, "line_items", "amount_too_small"),
        ({"metadata": {f"k{i}": "v" for i in range(51)}}, "metadata", None),
        ({"metadata": {"k" * 41: "v"}}, "metadata", None),
        ({"metadata": {"imageId": "v" * 501}}, "metadata[imageId]", None),
        ({"expires_at": int(time.time()) + 60}, "expires_at", None),
        ({"expand": ["nonsense"]}, "expand", None),
        ({"foo": "bar"}, "foo", "parameter_unknown"),
    ],
    ids=lambda value: str(value) if isinstance(value, str) else None,
)
def test_invalid_session_params_are_rejected_like_stripe(
    client, stripe_emulator, overrides, param, code
):
    with pytest.raises(stripe.InvalidRequestError) as caught:
        create(client, **overrides)
    assert caught.value.http_status == 400
    assert caught.value.param == param
    assert caught.value.code == code
    assert stripe_emulator.calls()["sessions_created"] == 0


def test_missing_product_name_names_the_param(client):
    with pytest.raises(stripe.InvalidRequestError) as caught:
        create(client, line_items=price_data(product_data={"description": "no name"}))
    assert caught.value.user_message == (
        "Missing required param: line_items[0][price_data][product_data][name]."
    )


def test_unknown_price_message(client):
    with pytest.raises(stripe.InvalidRequestError, match="No such price: 'price_x'"):
        create(client, line_items=[{"price": "price_x", "quantity": 1}])


def test_unknown_parameter_message(client):
    with pytest.raises(stripe.InvalidRequestError, match="Received unknown parameter: foo"):
        create(client, foo="bar")


def test_nested_expansions_expand(client):
    session = create(client, line_items=price_data(), expand=["line_items.data.price.product"])
    product = session.line_items.data[0].price.product
    assert (product.object, product.name) == ("product", "Board")
    # A field that is null stays null when expanded, as at Stripe.
    retrieved = client.v1.checkout.sessions.retrieve(
        session.id, params={"expand": ["payment_link", "customer"]}
    )
    assert retrieved.payment_link is None and retrieved.customer is None


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("metadata", "This property cannot be expanded (metadata)."),
        ("line_items.data.price.product.x", "You cannot expand more than 4 levels"),
        ("payment_intent.nonsense", "This property cannot be expanded (payment_intent.nonsense)."),
    ],
)
def test_an_expansion_the_sdk_does_not_allow_is_refused(client, path, message):
    with pytest.raises(stripe.InvalidRequestError) as caught:
        create(client, expand=[path])
    assert caught.value.param == "expand"
    assert caught.value.user_message.startswith(message)


def test_expanding_an_object_the_emulator_does_not_model_is_an_error(client, stripe_emulator):
    recurring = price_data(recurring={"interval": "month"})
    session = create(client, mode="subscription", line_items=recurring)
    stripe_emulator.complete_session(session.id)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["subscription"]})
    assert "does not model `subscription`" in caught.value.user_message


# --- errors and auth ---------------------------------------------------------------------------


def test_unknown_session_is_resource_missing(client):
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.checkout.sessions.retrieve("cs_test_doesnotexist")
    error = caught.value
    assert (error.http_status, error.code, error.param) == (404, "resource_missing", "session")
    assert error.user_message == "No such checkout.session: 'cs_test_doesnotexist'"
    assert error.request_id.startswith("req_")


def test_expiring_twice_is_refused(client):
    session = create(client)
    client.v1.checkout.sessions.expire(session.id)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.checkout.sessions.expire(session.id)
    assert caught.value.user_message == (
        'Only Checkout Sessions with a status in ["open"] can be expired.'
    )


def test_unknown_url_is_404_and_counted_as_other(stripe_emulator):
    response = requests.get(
        f"{stripe_emulator.url}/v1/customers", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert response.status_code == 404
    assert response.json()["error"]["message"].startswith(
        "Unrecognized request URL (GET: /v1/customers)"
    )
    assert stripe_emulator.calls()["other"] == 1


def test_error_body_and_headers_have_stripes_shape(stripe_emulator):
    response = requests.get(f"{stripe_emulator.url}/v1/checkout/sessions/cs_test_x")
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json"
    request_id = response.headers["Request-Id"]
    assert request_id.startswith("req_")
    error = response.json()["error"]
    assert set(error) == {"type", "message", "request_log_url"}
    assert error["type"] == "invalid_request_error"
    assert error["request_log_url"].endswith(request_id)


def test_publishable_key_is_refused(stripe_emulator):
    with pytest.raises(stripe.AuthenticationError, match="publishable API key"):
        create(sdk(stripe_emulator, "pk_test_abc123"))


def test_malformed_key_is_refused_and_redacted(stripe_emulator):
    with pytest.raises(stripe.AuthenticationError) as caught:
        create(sdk(stripe_emulator, "mykey-secretvalueWXYZ"))
    assert caught.value.http_status == 401
    assert caught.value.user_message == "Invalid API Key provided: *****************WXYZ"


def test_key_rotation_accepts_only_the_listed_keys(stripe_emulator):
    old_client, new_client = sdk(stripe_emulator), sdk(stripe_emulator, "sk_test_rotated")
    stripe_emulator.set_valid_keys(["sk_test_rotated"])
    session = create(new_client)
    with pytest.raises(stripe.AuthenticationError) as caught:
        old_client.v1.checkout.sessions.retrieve(session.id)
    assert caught.value.user_message == "Invalid API Key provided: sk_test_****ator"
    assert helper(stripe_emulator, "POST", "keys", valid=None).ok
    assert old_client.v1.checkout.sessions.retrieve(session.id).id == session.id


# --- idempotency -------------------------------------------------------------------------------


def test_idempotent_replay_returns_the_first_session(client, stripe_emulator):
    options = {"idempotency_key": "order-1"}
    first = create(client, options)
    second = create(client, options)
    assert second.id == first.id and second.client_secret == first.client_secret
    assert second.last_response.headers["Idempotent-Replayed"] == "true"
    calls = stripe_emulator.calls()
    assert (calls["create_session"], calls["sessions_created"]) == (2, 1)


def test_idempotency_key_reused_with_other_params_is_an_idempotency_error(client):
    create(client, {"idempotency_key": "order-2"})
    with pytest.raises(stripe.IdempotencyError, match="order-2"):
        create(client, {"idempotency_key": "order-2"}, metadata={"imageId": "other"})


def test_idempotency_key_over_255_characters_is_refused(client):
    with pytest.raises(stripe.InvalidRequestError):
        create(client, {"idempotency_key": "k" * 256})
    assert create(client, {"idempotency_key": "k" * 255}).id


def test_rejected_request_does_not_consume_its_idempotency_key(client):
    with pytest.raises(stripe.InvalidRequestError):
        create(client, {"idempotency_key": "order-3"}, mode=None)
    assert create(client, {"idempotency_key": "order-3"}).status == "open"


def test_a_500_is_saved_under_its_key_and_replayed(client, stripe_emulator):
    stripe_emulator.set_faults(mode="error_500", remaining=1)
    with pytest.raises(stripe.APIError) as first:
        create(client, {"idempotency_key": "order-4"})
    assert first.value.http_status == 500
    assert first.value.headers["Stripe-Should-Retry"] == "false"
    # Stripe saved the failure: the same key replays it, even though Stripe has recovered.
    with pytest.raises(stripe.APIError) as again:
        create(client, {"idempotency_key": "order-4"})
    assert again.value.headers["Idempotent-Replayed"] == "true"
    assert again.value.json_body == first.value.json_body
    assert stripe_emulator.calls()["sessions_created"] == 0
    assert create(client, {"idempotency_key": "order-5"}).status == "open"


def test_the_sdk_does_not_retry_a_500(stripe_emulator):
    stripe_emulator.set_faults(mode="error_500")
    retrying = stripe.StripeClient(KEY, base_addresses={"api": stripe_emulator.url})
    with pytest.raises(stripe.APIError):
        create(retrying, {"idempotency_key": "order-6"})
    with pytest.raises(stripe.APIError):
        retrying.v1.checkout.sessions.retrieve("cs_test_any")
    assert stripe_emulator.calls()["total"] == 2  # Stripe-Should-Retry: false, so once each


def test_a_concurrent_duplicate_is_a_409_and_is_not_saved(client, stripe_emulator):
    stripe_emulator.hold_executions()
    first: list[Any] = []
    thread = threading.Thread(
        target=lambda: first.append(create(client, {"idempotency_key": "order-7"}))
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10  # generous: only bounds a broken emulator
        while "order-7" not in stripe_emulator.executing_keys() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert stripe_emulator.executing_keys() == ["order-7"]
        # stripe-python raises APIError for a 409 (it retries them when allowed to).
        with pytest.raises(stripe.APIError) as caught:
            create(client, {"idempotency_key": "order-7"})
        assert caught.value.http_status == 409
        assert caught.value.json_body["error"]["type"] == "idempotency_error"
        assert "another in-progress request" in caught.value.user_message
    finally:
        stripe_emulator.release_executions()
        thread.join(timeout=10)
    replayed = create(client, {"idempotency_key": "order-7"})
    assert replayed.id == first[0].id
    assert replayed.last_response.headers["Idempotent-Replayed"] == "true"
    assert stripe_emulator.calls()["sessions_created"] == 1


def test_a_failure_while_executing_is_saved(client, stripe_emulator):
    session = create(client)
    client.v1.checkout.sessions.expire(session.id, options={"idempotency_key": "expire-1"})
    options: Any = {"idempotency_key": "expire-2"}
    for replayed in ("", "true"):
        with pytest.raises(stripe.InvalidRequestError) as caught:
            client.v1.checkout.sessions.expire(session.id, options=options)
        assert caught.value.headers.get("Idempotent-Replayed", "") == replayed


# --- faults ------------------------------------------------------------------------------------


def test_500_fault_raises_api_error(client, stripe_emulator):
    stripe_emulator.set_faults(mode="error_500")
    with pytest.raises(stripe.APIError) as caught:
        client.v1.checkout.sessions.retrieve("cs_test_any")
    assert caught.value.http_status == 500
    assert caught.value.user_message == "An unknown error occurred"


def test_429_fault_raises_rate_limit_error(client, stripe_emulator):
    stripe_emulator.set_faults(mode="rate_limit_429")
    with pytest.raises(stripe.RateLimitError):
        create(client)
    assert stripe_emulator.calls() == {
        "total": 1,
        "create_session": 1,
        "retrieve_session": 0,
        "expire_session": 0,
        "other": 0,
        "sessions_created": 0,
    }


def test_remaining_faults_then_recovers(client, stripe_emulator):
    stripe_emulator.set_faults(mode="rate_limit_429", remaining=2)
    for _ in range(2):
        with pytest.raises(stripe.RateLimitError):
            create(client)
    assert create(client).status == "open"
    assert stripe_emulator.faults()["mode"] == "none"


def test_random_500_is_reproducible_with_a_seed(client, stripe_emulator):
    def outcomes() -> list[bool]:
        stripe_emulator.set_faults(mode="random_500", probability=0.5, seed=7)
        results = []
        for _ in range(20):
            try:
                client.v1.checkout.sessions.retrieve("cs_test_any")
            except stripe.APIError:
                results.append(False)
            except stripe.InvalidRequestError:
                results.append(True)
        return results

    first = outcomes()
    assert first == outcomes()
    assert True in first and False in first


def test_latency_delays_answers():
    # Its own emulator: the delayed request still runs after the client gives up on it.
    with StripeEmulator() as emulator:
        emulator.set_faults(latency_ms=30_000)
        impatient = sdk(emulator, http_client=stripe.RequestsClient(timeout=0.5))
        with pytest.raises(stripe.APIConnectionError, match="timed out"):
            create(impatient)  # no answer before the client's timeout: the latency held it
        emulator.set_faults(latency_ms=0)
        assert create(sdk(emulator)).status == "open"


def test_faults_over_http(stripe_emulator):
    response = helper(stripe_emulator, "POST", "faults", mode="hang", hang_seconds=2, remaining=1)
    assert response.json()["mode"] == "hang"
    assert helper(stripe_emulator, "GET", "faults").json()["hang_seconds"] == 2
    assert helper(stripe_emulator, "POST", "faults", mode="explode").status_code == 400
    assert helper(stripe_emulator, "POST", "faults", colour="red").status_code == 400


# The hangs below last HANG_SECONDS unless released, and a "promptly" is a join bound of a
# third of that: generous (a release takes milliseconds), and only a missed release exceeds it.
HANG_SECONDS = 90
PROMPTLY = HANG_SECONDS / 3


def test_hang_times_the_client_out_and_stop_returns_promptly():
    emulator = StripeEmulator().start()
    try:
        emulator.set_faults(mode="hang", hang_seconds=HANG_SECONDS)
        client = sdk(emulator, http_client=stripe.RequestsClient(timeout=0.5))
        with pytest.raises(stripe.APIConnectionError, match="timed out"):
            create(client)
    finally:
        stopping = threading.Thread(target=emulator.stop)
        stopping.start()
        stopping.join(timeout=PROMPTLY)
        assert not stopping.is_alive(), "stop() waited for the hanging request"


def test_reset_releases_a_hanging_request(stripe_emulator):
    stripe_emulator.set_faults(mode="hang", hang_seconds=HANG_SECONDS)
    # The client would wait longer than the join below: only the reset can end the call in time.
    client = sdk(stripe_emulator, http_client=stripe.RequestsClient(timeout=HANG_SECONDS))
    errors: list[Exception] = []

    def call() -> None:
        try:
            create(client)
        except stripe.StripeError as err:
            errors.append(err)

    thread = threading.Thread(target=call)
    thread.start()
    # The emulator counts a request before it starts to hang: once counted, a reset releases it.
    arrived = wait_until(lambda: stripe_emulator.calls()["create_session"] == 1, PROMPTLY)
    stripe_emulator.reset()
    thread.join(timeout=PROMPTLY)
    assert arrived
    assert not thread.is_alive(), "reset() did not release the hanging request"
    assert isinstance(errors[0], stripe.APIConnectionError)


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    """Poll `condition` until it holds (True) or `seconds` pass (False): an event, not a delay."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- counters, reset and helper endpoints --------------------------------------------------------


def test_counters_count_every_v1_request_and_reset_clears_them(stripe_emulator):
    client = sdk(stripe_emulator)
    session = create(client)
    client.v1.checkout.sessions.retrieve(session.id)
    with pytest.raises(stripe.AuthenticationError):
        create(sdk(stripe_emulator, "pk_test_nope"))
    client.v1.checkout.sessions.expire(session.id)
    helper(stripe_emulator, "GET", f"sessions/{session.id}")  # helpers are not counted
    assert helper(stripe_emulator, "GET", "calls").json() == {
        "total": 4,
        "create_session": 2,
        "retrieve_session": 1,
        "expire_session": 1,
        "other": 0,
        "sessions_created": 1,
    }
    assert helper(stripe_emulator, "POST", "reset").ok
    assert stripe_emulator.calls()["total"] == 0
    assert stripe_emulator.get_session(session.id) is None


def test_complete_helper_pays_the_session(client, stripe_emulator):
    session = create(client, customer_email="ada@example.com")
    response = helper(stripe_emulator, "POST", f"sessions/{session.id}/complete")
    assert response.json()["status"] == "complete"
    retrieved = client.v1.checkout.sessions.retrieve(session.id)
    assert (retrieved.status, retrieved.payment_status) == ("complete", "paid")
    assert retrieved.customer_details.email == "ada@example.com"
    assert retrieved.payment_intent.startswith("pi_")
    again = helper(stripe_emulator, "POST", f"sessions/{session.id}/complete")
    assert again.status_code == 400


def test_complete_helper_can_leave_payment_unpaid(client, stripe_emulator):
    session = create(client)
    completed = stripe_emulator.complete_session(session.id, payment_status="unpaid")
    assert (completed["status"], completed["payment_status"]) == ("complete", "unpaid")
    assert completed["customer_details"]["name"] == "Jenny Rosen"


def test_session_helpers_answer_404_for_unknown_sessions(stripe_emulator):
    for method, path in [
        ("GET", "sessions/cs_test_nope"),
        ("POST", "sessions/cs_test_nope/complete"),
        ("POST", "sessions/cs_test_nope/expire"),
        ("POST", "sessions/cs_test_nope/settle"),
    ]:
        response = helper(stripe_emulator, method, path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "resource_missing"


def test_expire_helper_and_prices_over_http(client, stripe_emulator):
    assert helper(stripe_emulator, "POST", "prices", id="price_http", unit_amount=500).ok
    session = create(client, line_items=[{"price": "price_http", "quantity": 1}])
    response = helper(stripe_emulator, "POST", f"sessions/{session.id}/expire")
    assert (response.json()["status"], response.json()["amount_total"]) == ("expired", 500)


def test_command_line_serves_until_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.stripe_emulator", "--port", str(free_port())],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        match = re.fullmatch(r"Stripe emulator listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        client = stripe.StripeClient(KEY, base_addresses={"api": match[1]}, max_network_retries=0)
        assert create(client).status == "open"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0  # generous: a hang, not a time
    finally:
        stop_process(process)


# --- webhooks ----------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def webhooks(stripe_emulator, receiver) -> Iterator[WebhookReceiver]:
    """The emulator delivering to `receiver`, as Stripe does to a configured endpoint."""
    stripe_emulator.set_webhook(receiver.url, WEBHOOK_SECRET)
    yield receiver
    stripe_emulator.set_webhook(None)


def test_delivered_event_verifies_with_the_sdk(client, stripe_emulator, receiver):
    session = create(client, metadata={"imageId": "img_7"})
    result = helper(
        stripe_emulator,
        "POST",
        "events",
        session_id=session.id,
        type="checkout.session.completed",
        url=receiver.url,
        secret=WEBHOOK_SECRET,
    ).json()
    assert (result["status"], result["body"]) == (200, "ok")
    headers, body = receiver.received[0]
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["User-Agent"].startswith("Stripe/1.0")
    event = receiver.verified_event()
    assert event.id == result["event"]["id"] and event.id.startswith("evt_")
    assert event.type == "checkout.session.completed"
    assert event.api_version == "2026-10-28.endive"
    assert event.data.object.id == session.id
    assert event.data.object.payment_status == "paid"
    assert event.data.object.metadata.to_dict() == {"imageId": "img_7"}
    with pytest.raises(stripe.SignatureVerificationError):
        receiver.verified_event(secret="whsec_wrong")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body + b" ", headers["Stripe-Signature"], WEBHOOK_SECRET)


def test_redelivery_sends_the_same_event(client, stripe_emulator, webhooks):
    session = create(client)
    first = stripe_emulator.deliver_event(session.id, "checkout.session.completed")
    again = stripe_emulator.deliver_event(
        session.id, "checkout.session.completed", event_id=first["event"]["id"]
    )
    assert again["event"] == first["event"]
    assert webhooks.received[0][1] == webhooks.received[1][1]
    assert webhooks.verified_event().id == first["event"]["id"]


def test_completing_delivers_checkout_session_completed(client, stripe_emulator, webhooks):
    session = create(client)
    stripe_emulator.complete_session(session.id)
    event = webhooks.verified_event()
    assert (event.type, event.data.object.status) == ("checkout.session.completed", "complete")
    assert stripe_emulator.deliveries()[0]["status"] == 200


def test_expiring_through_the_api_delivers_checkout_session_expired(client, webhooks):
    session = create(client)
    client.v1.checkout.sessions.expire(session.id)
    webhooks.wait_for(1)
    event = webhooks.verified_event()
    assert (event.type, event.data.object.id) == ("checkout.session.expired", session.id)


def test_async_payment_events_settle_an_unpaid_session(client, stripe_emulator, webhooks):
    session = create(client)
    stripe_emulator.complete_session(session.id, payment_status="unpaid")
    assert webhooks.verified_event().data.object.payment_status == "unpaid"
    result = stripe_emulator.deliver_event(session.id, "checkout.session.async_payment_succeeded")
    assert result["event"]["data"]["object"]["payment_status"] == "paid"
    assert client.v1.checkout.sessions.retrieve(session.id).payment_status == "paid"


def _payment_intent(client: stripe.StripeClient, session_id: str) -> Any:
    params: Any = {"expand": ["payment_intent"]}
    return client.v1.checkout.sessions.retrieve(session_id, params=params).payment_intent


def test_a_delayed_payment_that_later_succeeds(client, stripe_emulator, webhooks):
    session = create(client)
    stripe_emulator.complete_session(session.id, payment_status="unpaid")
    intent = _payment_intent(client, session.id)
    assert (intent.object, intent.status, intent.amount) == ("payment_intent", "processing", 200)

    settled = helper(stripe_emulator, "POST", f"sessions/{session.id}/settle", result="succeeded")
    assert (settled.json()["status"], settled.json()["payment_status"]) == ("complete", "paid")
    event = webhooks.verified_event()
    assert event.type == "checkout.session.async_payment_succeeded"
    assert event.data.object.payment_status == "paid"
    assert _payment_intent(client, session.id).status == "succeeded"


def test_a_delayed_payment_that_later_fails(client, stripe_emulator, webhooks):
    session = create(client)
    stripe_emulator.complete_session(session.id, payment_status="unpaid")
    failed = stripe_emulator.settle_payment(session.id, "failed")
    assert (failed["status"], failed["payment_status"]) == ("complete", "unpaid")
    event = webhooks.verified_event()
    assert event.type == "checkout.session.async_payment_failed"
    assert (event.data.object.status, event.data.object.payment_status) == ("complete", "unpaid")
    # Stripe's PaymentIntent goes back to asking for a payment method when a payment fails.
    assert _payment_intent(client, session.id).status == "requires_payment_method"
    retrieved = client.v1.checkout.sessions.retrieve(session.id)
    assert (retrieved.status, retrieved.payment_status) == ("complete", "unpaid")


def test_only_a_processing_payment_can_settle(client, stripe_emulator):
    paid = create(client)
    stripe_emulator.complete_session(paid.id)
    open_session = create(client)
    pending = create(client)
    stripe_emulator.complete_session(pending.id, payment_status="unpaid")
    stripe_emulator.settle_payment(pending.id, "failed")
    for session_id in (paid.id, open_session.id, pending.id):
        response = helper(stripe_emulator, "POST", f"sessions/{session_id}/settle")
        assert response.status_code == 400, session_id
    bad = helper(stripe_emulator, "POST", f"sessions/{paid.id}/settle", result="maybe")
    assert bad.json()["error"]["param"] == "result"
    assert helper(stripe_emulator, "POST", "sessions/cs_test_nope/settle").status_code == 404


def test_an_async_payment_failed_event_fails_the_payment_intent(client, stripe_emulator, webhooks):
    session = create(client)
    stripe_emulator.deliver_event(session.id, "checkout.session.async_payment_failed")
    assert _payment_intent(client, session.id).status == "requires_payment_method"


def test_while_a_secret_is_rolled_events_carry_one_signature_per_secret(
    client, stripe_emulator, receiver
):
    stripe_emulator.set_webhook(receiver.url, ["whsec_old", "whsec_new"])
    try:
        stripe_emulator.complete_session(create(client).id)
    finally:
        stripe_emulator.set_webhook(None)
    header = receiver.received[0][0]["Stripe-Signature"]
    assert header.count("v1=") == 2
    for secret in ("whsec_old", "whsec_new"):
        assert receiver.verified_event(secret=secret).type == "checkout.session.completed"
    with pytest.raises(stripe.SignatureVerificationError):
        receiver.verified_event(secret="whsec_other")


def test_endpoint_failures_are_reported_not_raised(client, stripe_emulator, receiver):
    session = create(client)
    receiver.status = 500
    failed = stripe_emulator.deliver_event(
        session.id, "checkout.session.expired", url=receiver.url, secret=WEBHOOK_SECRET
    )
    assert failed["status"] == 500
    closed = f"http://127.0.0.1:{free_port()}/webhook"
    unreachable = stripe_emulator.deliver_event(session.id, "checkout.session.expired", url=closed)
    assert unreachable["status"] == 0 and unreachable["body"]


def test_webhook_target_and_delivery_log_over_http(client, stripe_emulator, receiver):
    configured = helper(stripe_emulator, "POST", "webhooks", url=receiver.url, secret="whsec_x")
    assert configured.json() == {"url": receiver.url, "secret_set": True}
    try:
        session = create(client)
        helper(stripe_emulator, "POST", f"sessions/{session.id}/complete")
        [delivery] = helper(stripe_emulator, "GET", "events").json()["deliveries"]
        assert (delivery["type"], delivery["status"]) == ("checkout.session.completed", 200)
        assert receiver.verified_event(secret="whsec_x").id == delivery["event_id"]
    finally:
        stripe_emulator.set_webhook(None)
