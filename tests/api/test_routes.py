"""The two browser endpoints, end to end: test client → handler → real SDK → emulator over HTTP."""

from __future__ import annotations

import re

import pytest

from tests.support import CREATE, STATUS, TEST_KEY, assert_error, create


def test_create_returns_client_secret_and_session_id(client, stripe_emulator):
    response = create(client, {"imageId": "img_123"})
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"client_secret", "session_id"}
    assert body["session_id"].startswith("cs_test_")
    assert body["client_secret"].startswith(body["session_id"] + "_secret_")
    assert TEST_KEY not in response.get_data(as_text=True)


def test_create_sends_the_contract_session_to_stripe(client, stripe_emulator):
    session_id = create(client, {"imageId": "img_123"}).get_json()["session_id"]
    session = stripe_emulator.get_session(session_id)
    assert session["ui_mode"] == "embedded_page"
    assert session["mode"] == "payment"
    assert session["return_url"] == "http://localhost:5173/hero-me?session_id={CHECKOUT_SESSION_ID}"
    assert session["redirect_on_completion"] == "if_required"
    # Our marker (the deployment id, "local" here) plus the customer's imageId.
    assert session["metadata"] == {"checkout_deployment": "local", "imageId": "img_123"}
    assert session["amount_total"] == 200
    assert session["currency"] == "usd"


def test_create_without_image_id_sends_no_metadata_key(client, stripe_emulator):
    for response in (create(client), create(client, {}), create(client, {"other": 1})):
        assert response.status_code == 200
        session = stripe_emulator.get_session(response.get_json()["session_id"])
        assert "imageId" not in session["metadata"]


def test_empty_body_without_content_type_counts_as_empty_object(client):
    assert client.post(CREATE, data=b"").status_code == 200


def test_configured_product_and_return_path_reach_stripe(client, configure, stripe_emulator):
    configure(
        PRODUCT_NAME="Poster",
        PRICE_AMOUNT="1500",
        RETURN_PATH="/done?id={CHECKOUT_SESSION_ID}",
        FRONTEND_URL="https://shop.example.com/",
    )
    session_id = create(client, {}).get_json()["session_id"]
    session = stripe_emulator.get_session(session_id)
    assert session["amount_total"] == 1500
    assert session["return_url"] == "https://shop.example.com/done?id={CHECKOUT_SESSION_ID}"


def test_price_id_replaces_price_data(client, configure, stripe_emulator):
    stripe_emulator.add_price("price_poster", 900, "usd", "Poster")
    configure(STRIPE_PRICE_ID="price_poster")
    session_id = create(client, {}).get_json()["session_id"]
    assert stripe_emulator.get_session(session_id)["amount_total"] == 900


def test_unknown_price_id_is_a_configuration_error(client, configure):
    configure(STRIPE_PRICE_ID="price_does_not_exist")
    assert_error(create(client, {}), 500, "payment_configuration_error")


def test_amount_below_stripe_minimum_is_a_configuration_error(client, configure):
    configure(PRICE_AMOUNT="10")
    body = assert_error(create(client, {}), 500, "payment_configuration_error")
    assert "minimum" not in body["error"].lower()  # Stripe's own text stays in the log


@pytest.mark.parametrize(
    "image_id",
    ["x", "a" * 500, "图像-🎨-ü", "img with spaces"],
    ids=["one-char", "500-chars", "unicode", "spaces"],
)
def test_valid_image_ids_are_stored_in_metadata(client, stripe_emulator, image_id):
    response = create(client, {"imageId": image_id})
    assert response.status_code == 200
    session = stripe_emulator.get_session(response.get_json()["session_id"])
    assert session["metadata"]["imageId"] == image_id


@pytest.mark.parametrize(
    "image_id",
    ["", "a" * 501, 123, 1.5, True, None, [], {}, ["img"], "bad\x00id", "line\nbreak", "\x7f"],
    ids=[
        "empty",
        "501-chars",
        "int",
        "float",
        "bool",
        "null",
        "list",
        "object",
        "list-of-str",
        "nul",
        "newline",
        "del",
    ],
)
def test_invalid_image_id_is_400_without_stripe_call(client, stripe_emulator, image_id):
    body = assert_error(create(client, {"imageId": image_id}), 400, "invalid_image_id")
    # The sentence says which rule the value broke.
    if isinstance(image_id, str) and 1 <= len(image_id) <= 500:
        assert body["error"] == "imageId must not contain control characters or broken text."
    else:
        assert body["error"] == "imageId must be a string of 1 to 500 characters (UTF-8 bytes)."
    assert stripe_emulator.calls()["total"] == 0


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "invalid_json"),
        (b"[1, 2]", "application/json", 400, "invalid_body"),
        (b'"a string"', "application/json", 400, "invalid_body"),
        (b"null", "application/json", 400, "invalid_body"),
        (b"\xff\xfe\x00", "application/json", 400, "invalid_json"),
        (b"[" * 50_000, "application/json", 400, "invalid_json"),
        (b"imageId=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"{}", "text/plain", 415, "unsupported_media_type"),
        (b"{}", "multipart/form-data; boundary=x", 415, "unsupported_media_type"),
        (b" " * (64 * 1024 + 1), "application/json", 413, "payload_too_large"),
    ],
    ids=[
        "malformed",
        "array",
        "string",
        "null",
        "not-utf8",
        "deep-nesting",
        "form",
        "text-plain",
        "multipart",
        "64KiB+1",
    ],
)
def test_rejected_bodies(client, stripe_emulator, data, content_type, status, code):
    response = client.post(CREATE, data=data, content_type=content_type)
    assert_error(response, status, code)
    assert stripe_emulator.calls()["total"] == 0


def test_json_content_type_with_charset_is_accepted(client):
    response = client.post(CREATE, data=b"{}", content_type="application/json; charset=utf-8")
    assert response.status_code == 200


def test_body_of_exactly_64_kib_is_accepted(client):
    body = b'{"pad": "' + b"x" * (64 * 1024 - 11) + b'"}'
    assert len(body) == 64 * 1024
    assert client.post(CREATE, data=body, content_type="application/json").status_code == 200


def test_idempotency_key_double_submit_returns_the_same_session(client, stripe_emulator):
    headers = {"Idempotency-Key": "order-7f3c2a"}
    first = create(client, {"imageId": "img_1"}, headers=headers).get_json()
    second = create(client, {"imageId": "img_1"}, headers=headers).get_json()
    assert first == second
    third = create(client, {"imageId": "img_1"}).get_json()
    assert third["session_id"] != first["session_id"]


def test_idempotency_key_reused_with_another_body_is_409(client):
    headers = {"Idempotency-Key": "order-reused"}
    assert create(client, {"imageId": "a"}, headers=headers).status_code == 200
    assert_error(create(client, {"imageId": "b"}, headers=headers), 409, "idempotency_conflict")


@pytest.mark.parametrize(
    "key",
    ["", "k" * 256, "tab\there", "naïve"],
    ids=["empty", "256-chars", "control-char", "non-ascii"],
)
def test_invalid_idempotency_key_is_400_without_stripe_call(client, stripe_emulator, key):
    response = create(client, {}, headers={"Idempotency-Key": key})
    body = assert_error(response, 400, "invalid_idempotency_key")
    assert body["error"] == "Idempotency-Key must be 1 to 255 printable ASCII characters."
    assert stripe_emulator.calls()["total"] == 0


def test_the_key_sent_to_stripe_is_this_deployments_hash_of_the_client_and_its_key(
    client, configure, stripe_emulator
):
    configure(DEPLOYMENT_ID="shop-eu", TRUSTED_PROXY_HOPS="1")

    def session_for(address: str, key: str) -> str:
        headers = {"Idempotency-Key": key, "X-Forwarded-For": address}
        return create(client, {}, headers=headers).get_json()["session_id"]

    alice = session_for("203.0.113.5", "1")
    assert session_for("203.0.113.5", "1") == alice  # a double submit replays
    # Another customer with the same predictable key, and another key, each get their own.
    assert session_for("198.51.100.8", "1") != alice
    assert session_for("203.0.113.5", "2") != alice
    keys = stripe_emulator.idempotency_keys()
    assert len(keys) == 3
    assert all(re.fullmatch(r"shop-eu-[0-9a-f]{64}", key) for key in keys), keys


def test_idempotency_key_of_255_chars_is_accepted(client):
    assert create(client, {}, headers={"Idempotency-Key": "k" * 255}).status_code == 200


def test_status_of_open_session(client):
    session_id = create(client, {"imageId": "img_9"}).get_json()["session_id"]
    response = client.get(STATUS, query_string={"session_id": session_id})
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "open",
        "payment_status": "unpaid",
        "outcome": "open",
        "amount_refunded": 0,
        "metadata": {"imageId": "img_9"},
    }


def test_session_goes_open_to_complete(client, stripe_emulator):
    session_id = create(client, {"imageId": "img_9"}).get_json()["session_id"]
    assert (
        client.get(STATUS, query_string={"session_id": session_id}).get_json()["status"] == "open"
    )
    stripe_emulator.complete_session(session_id)
    body = client.get(STATUS, query_string={"session_id": session_id}).get_json()
    assert body == {
        "status": "complete",
        "payment_status": "paid",
        "outcome": "paid",
        "amount_refunded": 0,
        "metadata": {"imageId": "img_9"},
    }


def test_session_goes_open_to_expired(client, stripe_emulator):
    session_id = create(client, {}).get_json()["session_id"]
    stripe_emulator.expire_session(session_id)
    body = client.get(STATUS, query_string={"session_id": session_id}).get_json()
    assert body == {
        "status": "expired",
        "payment_status": "unpaid",
        "outcome": "expired",
        "amount_refunded": 0,
        "metadata": {},
    }


def test_status_reveals_only_our_fields(client, stripe_emulator):
    session_id = create(client, {"imageId": "img_9"}).get_json()["session_id"]
    stripe_emulator.complete_session(session_id)
    response = client.get(STATUS, query_string={"session_id": session_id})
    text = response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"status", "payment_status", "outcome", "amount_refunded", "metadata"}
    assert body["amount_refunded"] == 0  # only refunds are told, never what was paid
    leaks = (
        "client_secret",
        "jenny",
        "Jenny",
        "pi_",
        "customer",
        "amount_total",
        "amount_subtotal",
        "currency",
        "checkout_deployment",
    )
    for leak in (*leaks, TEST_KEY):
        assert leak not in text


def test_unknown_session_is_404(client):
    response = client.get(STATUS, query_string={"session_id": "cs_test_doesnotexist123"})
    assert_error(response, 404, "session_not_found")


@pytest.mark.parametrize(
    "query",
    [
        "",
        "session_id=",
        "session_id=cs_test_",
        "session_id=" + "cs_test_" + "a" * 251,
        "session_id=cs_test_abc%2F..%2Fx",
        "session_id=cs_test_/../x",
        "session_id=cs_test_abc%20def",
        "session_id=cs_test_abc%00",
        "session_id=cs_test_abc'%20OR%201=1--",
        "session_id=cs_test_%3Cscript%3E",
        "session_id=pi_3abc123",
        "session_id=cs_prod_abc",
        "session_id=cs_test_a&session_id=cs_test_b",
        "session_id=cs_test_a&session_id=cs_test_a",
        "session_id=" + "x" * 10_000,
    ],
    ids=[
        "missing",
        "empty",
        "prefix-only",
        "251-chars",
        "encoded-traversal",
        "traversal",
        "space",
        "nul",
        "sql",
        "html",
        "payment-intent",
        "bad-mode",
        "repeated",
        "repeated-same",
        "10KB",
    ],
)
def test_invalid_session_id_is_400_without_stripe_call(client, stripe_emulator, query):
    response = client.get(f"{STATUS}?{query}")
    assert_error(response, 400, "invalid_session_id")
    assert stripe_emulator.calls()["total"] == 0


def test_session_id_of_250_chars_after_prefix_is_looked_up(client, stripe_emulator):
    response = client.get(STATUS, query_string={"session_id": "cs_live_" + "a" * 250})
    assert_error(response, 404, "session_not_found")
    assert stripe_emulator.calls()["retrieve_session"] == 1
