"""Bad input over real HTTP: the server and the function, raw bytes on a socket, Stripe calls.

tests/api/test_routes.py checks the handlers through an in-process test client. This file sends the
issue's list of bad inputs to a live functions-framework server instead (gunicorn with uvicorn
workers), byte for byte (a NUL, a newline in a header, a 10 KB URL), so that what the server does
before the function is covered too. Each case asserts the exact status and code, and that Stripe
was not called.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from devtools.stripe_emulator import StripeEmulator
from tests.support import (
    CREATE,
    FRONTEND,
    JSON,
    ROOT,
    STATUS,
    TEST_KEY,
    WEBHOOK,
    Answer,
    LiveServer,
    assert_error,
    log_records,
    send,
)

LIMIT = 64 * 1024


def post_json(server: LiveServer, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> Answer:
    return send(server, "POST", CREATE, [("Content-Type", JSON), *headers], body)


@pytest.fixture(scope="module")
def server(
    stripe_emulator_server: StripeEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """One live server for the whole module: every case here is a single request."""
    env = {
        "FRONTEND_URL": FRONTEND,
        "STRIPE_SECRET_KEY": TEST_KEY,
        "STRIPE_API_BASE": stripe_emulator_server.url,
        "STRIPE_TIMEOUT_SECONDS": "2",
        "STRIPE_MAX_RETRIES": "1",
        "STRIPE_WEBHOOK_SECRET": "whsec_test_bad_input",
    }
    live = LiveServer(env, Path(tmp_path_factory.mktemp("bad-input")) / "server.log")
    yield live
    live.stop()


@pytest.fixture
def no_stripe_call(stripe_emulator: StripeEmulator) -> Iterator[None]:
    """The test's requests must not reach Stripe."""
    yield
    assert stripe_emulator.calls()["total"] == 0


# --- the create body --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{not json", JSON, 400, "invalid_json"),
        (b'{"imageId": "img_1"', JSON, 400, "invalid_json"),
        (b"{'imageId': 'img_1'}", JSON, 400, "invalid_json"),
        (b"\xff\xfe{}", JSON, 400, "invalid_json"),
        (b"[]", JSON, 400, "invalid_body"),
        (b'[{"imageId": "img_1"}]', JSON, 400, "invalid_body"),
        (b'"img_1"', JSON, 400, "invalid_body"),
        (b"42", JSON, 400, "invalid_body"),
        (b"null", JSON, 400, "invalid_body"),
        (b"{}", "text/plain", 415, "unsupported_media_type"),
        (b"imageId=img_1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"{}", "multipart/form-data; boundary=x", 415, "unsupported_media_type"),
        (b"<imageId/>", "application/xml", 415, "unsupported_media_type"),
        (b"{}", "text/json", 415, "unsupported_media_type"),
        (b" " * (LIMIT + 1), JSON, 413, "payload_too_large"),
    ],
    ids=[
        "malformed",
        "truncated",
        "single-quotes",
        "not-utf8",
        "array",
        "array-of-object",
        "string",
        "number",
        "null",
        "text-plain",
        "form",
        "multipart",
        "xml",
        "text-json",
        "64KiB+1",
    ],
)
def test_rejected_create_bodies(server, no_stripe_call, body, content_type, status, code):
    assert_error(send(server, "POST", CREATE, [("Content-Type", content_type)], body), status, code)


def test_body_over_64_kib_without_content_length_is_413(server, no_stripe_call):
    answer = send(
        server, "POST", CREATE, [("Content-Type", JSON)], b" " * (LIMIT + 1), chunked=True
    )
    assert_error(answer, 413, "payload_too_large")


@pytest.mark.parametrize(
    "image_id",
    [
        b"123",
        b"1.5",
        b"true",
        b"null",
        b"[]",
        b'["img_1"]',
        b"{}",
        b'""',
        b'"' + b"a" * 501 + b'"',
        json.dumps("🎨" * 501).encode(),
        # Stripe's metadata limit is 500 characters without saying which (docs.stripe.com/metadata):
        # counted as UTF-8 bytes, the strictest, 500 emoji are 2,000 and 126 are 504.
        json.dumps("🎨" * 500).encode(),
        json.dumps("🎨" * 126).encode(),
        json.dumps("é" * 251).encode(),
        b'"img\\u0000"',
        b'"line\\nbreak"',
        b'"tab\\there"',
        b'"del\\u007f"',
        b'"c1\\u0085"',
        b'"\\ud800"',
        b'"img\\udfff"',
    ],
    ids=[
        "int",
        "float",
        "bool",
        "null",
        "empty-list",
        "list",
        "object",
        "empty",
        "501-chars",
        "501-emoji",
        "500-emoji",
        "504-bytes-of-emoji",
        "502-bytes-of-accents",
        "nul",
        "newline",
        "tab",
        "del",
        "c1-control",
        "lone-surrogate",
        "lone-low-surrogate",
    ],
)
def test_invalid_image_id_is_400(server, no_stripe_call, image_id):
    assert_error(post_json(server, b'{"imageId": ' + image_id + b"}"), 400, "invalid_image_id")


@pytest.mark.parametrize(
    "image_id",
    [
        "图像-🎨-ü",
        "🎨" * 125,
        "é" * 250,
        "a" * 500,
        "a\u2028b\u200bc\ufeff",
        "<script>alert(1)</script>",
        "' OR 1=1 --",
    ],
    ids=[
        "unicode",
        "500-bytes-of-emoji",
        "500-bytes-of-accents",
        "500-chars",
        "separators",
        "html",
        "sql",
    ],
)
def test_unusual_but_valid_image_id_is_stored_verbatim(server, stripe_emulator, image_id):
    answer = post_json(server, json.dumps({"imageId": image_id}).encode())
    assert answer.status == 200, answer.body
    session = stripe_emulator.get_session(answer.json()["session_id"])
    assert session["metadata"] == {"checkout_deployment": "local", "imageId": image_id}


# --- session_id ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?",
        "?session_id",
        "?session_id=",
        "?session_id=cs_test_",
        "?session_id=cs_test_" + "a" * 10_240,
        "?session_id=cs_test_/../x",
        "?session_id=cs_test_abc/../../v1/charges",
        "?session_id=cs_test_abc%2F..%2Fx",
        "?session_id=cs_test_abc%2Fexpire",
        "?session_id=cs_test_abc%20def",
        "?session_id=cs_test_abc+def",
        "?session_id=cs_test_abc%00",
        "?session_id=cs_test_abc%0A",
        "?session_id=cs_test_x'%20OR%20'1'='1",
        "?session_id=cs_test_x;DROP%20TABLE%20sessions",
        "?session_id=%3Cscript%3Ealert(1)%3C/script%3E",
        "?session_id=cs_test_%D0%B0bc",
        "?session_id=pi_3Nabc123",
        "?session_id=CS_TEST_abc",
        "?session_id=cs_test_a&session_id=cs_test_b",
        "?session_id=cs_test_a&session_id=cs_test_a",
        "?sessionId=cs_test_abc",
        "?session_id[]=cs_test_abc",
    ],
    ids=[
        "missing",
        "empty-query",
        "no-value",
        "empty",
        "prefix-only",
        "10KB",
        "traversal",
        "traversal-to-another-api",
        "encoded-slash",
        "encoded-slash-expire",
        "space",
        "plus",
        "nul",
        "trailing-newline",
        "sql",
        "sql-drop",
        "html",
        "cyrillic-a",
        "payment-intent",
        "upper-case",
        "repeated",
        "repeated-same",
        "other-name",
        "array-syntax",
    ],
)
def test_invalid_session_id_is_400(server, no_stripe_call, query):
    assert_error(send(server, "GET", STATUS + query), 400, "invalid_session_id")


# --- paths and methods --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/api",
        "/api/checkout",
        "/api/checkout/embedded-session/x",
        "/API/checkout/embedded-session",
        "/api/checkout/session-status.json",
        "/robots.txt",
        "/favicon.ico",
        "/" + "a" * 10_000,
    ],
)
def test_unknown_path_is_json_404(server, no_stripe_call, path):
    assert_error(send(server, "POST", path, [("Content-Type", JSON)], b"{}"), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", CREATE, "OPTIONS, POST"),
        ("PUT", CREATE, "OPTIONS, POST"),
        ("PATCH", CREATE, "OPTIONS, POST"),
        ("DELETE", CREATE, "OPTIONS, POST"),
        ("TRACE", CREATE, "OPTIONS, POST"),
        ("PROPFIND", CREATE, "OPTIONS, POST"),
        ("POST", STATUS, "GET, OPTIONS"),
        ("PUT", STATUS, "GET, OPTIONS"),
        ("DELETE", STATUS, "GET, OPTIONS"),
        ("GET", WEBHOOK, "POST"),
        ("PUT", WEBHOOK, "POST"),
        ("DELETE", WEBHOOK, "POST"),
        ("OPTIONS", WEBHOOK, "POST"),
    ],
)
def test_wrong_method_is_405_with_allow(server, no_stripe_call, method, path, allow):
    answer = send(server, method, path + "?session_id=cs_test_abc")
    assert_error(answer, 405, "method_not_allowed")
    assert answer.headers["Allow"] == allow


def test_head_on_create_is_405_without_a_body(server, no_stripe_call):
    answer = send(server, "HEAD", CREATE)
    assert answer.status == 405
    assert answer.headers["Allow"] == "OPTIONS, POST"
    assert answer.body == b""


# --- Idempotency-Key ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["k" * 256, "k" * 8_000, "tab\tinside", "naïve"],
    ids=["256-chars", "8000-chars", "tab", "non-ascii"],
)
def test_invalid_idempotency_key_is_400(server, no_stripe_call, key):
    answer = post_json(server, b"{}", [("Idempotency-Key", key)])
    assert_error(answer, 400, "invalid_idempotency_key")


def test_blank_idempotency_key_is_400(server, no_stripe_call):
    # HTTP trims the spaces, so the function sees an empty value, not a missing header.
    answer = post_json(server, b"{}", [("Idempotency-Key", "   ")])
    assert_error(answer, 400, "invalid_idempotency_key")


# --- one path, one spelling: what the app routes is what docs/abuse.md's edge rules match ----


def documented_rules() -> dict[str, str]:
    """The Cloud Armor rules' path expressions in docs/abuse.md: {regex: the path it limits}."""
    text = (ROOT / "docs" / "abuse.md").read_text()
    patterns = re.findall(r"--expression=\"request\.path\.matches\('([^']+)'\)\"", text)
    assert len(patterns) == 2, patterns
    return {p: next(path for path in (CREATE, STATUS) if re.search(p, path)) for p in patterns}


# Each way of writing (or seeming to write) a routed path, and the endpoint a decoder would reach.
SPELLINGS = [
    (CREATE, CREATE),
    (CREATE + "/", CREATE),
    (STATUS, STATUS),
    (STATUS + "/", STATUS),
    ("/api/checkout/embedded%2Dsession", CREATE),
    ("/api/checkout/embedded%2dsession", CREATE),
    ("/api/checkout/%65mbedded-session", CREATE),
    ("/api/checkout/session%2Dstatus", STATUS),
    ("/api%2Fcheckout%2Fembedded-session", CREATE),
    ("/api/checkout/embedded-session%2F", CREATE),
    ("/api/checkout/session-status%00", STATUS),
    ("//api/checkout/embedded-session", CREATE),
    ("/api//checkout/session-status", STATUS),
    ("/api/checkout/embedded-session//", CREATE),
    ("/api/checkout/./embedded-session", CREATE),
    ("/api/checkout/x/../embedded-session", CREATE),
    ("/api/checkout/../checkout/session-status", STATUS),
    ("/api/checkout/embedded-session/.", CREATE),
    ("/./api/checkout/session-status", STATUS),
    ("/api/checkout/%2e/embedded-session", CREATE),
    ("/api/checkout/webhook%2F..%2Fembedded-session", CREATE),
]


@pytest.mark.parametrize(("target", "meant"), SPELLINGS, ids=[t for t, _ in SPELLINGS])
def test_every_spelling_of_a_path_is_refused_or_matched_by_the_edge_rule(
    server, stripe_emulator, target, meant
):
    # Cloud Armor matches request.path as written; the server decodes it before routing. So the
    # app serves a path only as written plainly (and the documented rule for it matches that), and
    # refuses every other spelling before routing, without a Stripe call.
    method = "POST" if meant == CREATE else "GET"
    answer = send(server, method, target + "?session_id=cs_test_edge1", [("Content-Type", JSON)])
    rules = documented_rules()
    if target.removesuffix("/") == meant:
        assert answer.status in (200, 404), answer.body  # a session, or one Stripe does not know
        assert answer.json().get("code") != "not_found"
        assert [limited for pattern, limited in rules.items() if re.search(pattern, target)] == [
            meant
        ]
    else:
        assert_error(answer, 404, "non_canonical_path")
        assert stripe_emulator.calls()["total"] == 0
        assert not [p for p in rules if re.search(p, target)]  # nothing to limit: never routed


# --- not HTTP at all: refused by the server (uvicorn's httptools parser) before the function ----


@pytest.mark.parametrize(
    ("method", "target", "headers", "status"),
    [
        ("GET", STATUS + "?session_id=cs_test_abc\x00", [], 400),
        ("GET", STATUS + "?session_id=cs_test_abc def", [], 400),
        ("POST", CREATE, [("Idempotency-Key", "order-1\ninjected: yes")], 400),
        ("POST", CREATE, [("Idempotency-Key", "order-1\rinjected: yes")], 400),
        ("POST", CREATE, [("Idempotency-Key", "order-1\r\n folded")], 400),
        ("POST", CREATE, [("Idempotency-Key", "order\x00-1")], 400),
        ("POST", CREATE, [("Idempotency-Key", "order\x7f-1")], 400),
    ],
    ids=[
        "nul-in-url",
        "space-in-url",
        "newline-in-key",
        "carriage-return-in-key",
        "folded-key",
        "nul-in-key",
        "del-in-key",
    ],
)
def test_malformed_http_is_refused_before_the_function(
    server, no_stripe_call, method, target, headers, status
):
    answer = send(server, method, target, [("Content-Type", JSON), *headers], b"{}")
    # The server's own answer (the request never became an ASGI call), but the contract's JSON
    # with its id and headers all the same, and the same id in its log line.
    body = assert_error(answer, status, "invalid_http")
    assert answer.headers["Connection"] == "close"
    [line] = [r for r in log_records(server.logs()) if r.get("request_id") == body["request_id"]]
    assert (line["code"], line["httpRequest"]["status"]) == ("invalid_http", 400)
    assert_error(send(server, "GET", STATUS), 400, "invalid_session_id")  # still serving


def test_a_header_line_over_8_kib_is_431(server, no_stripe_call):
    # uvicorn's parser takes any header size (gunicorn refused a line over 8190 bytes with 431):
    # the function keeps that limit, and answers it as the contract's JSON error.
    answer = send(
        server, "POST", CREATE, [("Content-Type", JSON), ("Idempotency-Key", "k" * 9_000)], b"{}"
    )
    assert_error(answer, 431, "header_too_large")
    # Past the whole head's cap (32 KiB), the server refuses it before the function sees it.
    answer = send(
        server, "POST", CREATE, [("Content-Type", JSON), ("Idempotency-Key", "k" * 100_000)], b"{}"
    )
    assert_error(answer, 431, "headers_too_large")
    assert_error(send(server, "GET", STATUS), 400, "invalid_session_id")  # still serving
