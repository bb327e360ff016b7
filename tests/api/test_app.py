"""Routing, CORS, response headers and configuration errors, through the functions-framework app."""

from __future__ import annotations

import pytest

from tests.support import (
    CREATE,
    FRONTEND,
    ROOT,
    STATUS,
    TEST_KEY,
    WHSEC,
    assert_error,
    function_app_for,
    log_records,
)

FOREIGN = "https://evil.example"


@pytest.mark.parametrize("path", [CREATE, CREATE + "/"])
def test_create_path_matches_with_optional_trailing_slash(client, path):
    assert client.post(path, json={}).status_code == 200


def test_status_path_matches_with_optional_trailing_slash(client):
    response = client.get(STATUS + "/?session_id=cs_test_nope")
    assert_error(response, 404, "session_not_found")


@pytest.mark.parametrize(
    "path",
    ["/", "/api", "/api/checkout", CREATE + "x", "/API/checkout/embedded-session"],
)
def test_unknown_path_is_json_404(client, path):
    assert_error(client.post(path, json={}), 404, "not_found")


@pytest.mark.parametrize(
    "path",
    [
        CREATE + "//",
        "//api/checkout/embedded-session",
        "/api/checkout/embedded%2Dsession",
        "/api/./checkout/embedded-session",
        "/api/checkout/x/../embedded-session",
        CREATE + "/.",
        CREATE + "/..",
        "api/checkout/embedded-session",
    ],
)
def test_a_path_not_written_plainly_is_json_404_before_routing(client, stripe_emulator, path):
    body = assert_error(client.post(path, json={}), 404, "non_canonical_path")
    assert "percent-encoding" in body["error"]
    assert stripe_emulator.calls()["total"] == 0


@pytest.mark.parametrize("path", ["/", CREATE + "/", "/api/checkout/embedded-session.."])
def test_a_plain_path_is_routed_as_written(client, path):
    # A trailing slash is one allowed spelling; dots inside a segment are not a dot segment.
    answer = client.post(path, json={})
    assert answer.status_code in (200, 404)
    assert answer.get_json().get("code") != "non_canonical_path"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", CREATE, "OPTIONS, POST"),
        ("PUT", CREATE, "OPTIONS, POST"),
        ("DELETE", CREATE, "OPTIONS, POST"),
        ("PATCH", CREATE, "OPTIONS, POST"),
        ("POST", STATUS, "GET, OPTIONS"),
        ("PUT", STATUS, "GET, OPTIONS"),
    ],
)
def test_wrong_method_is_405_with_allow(client, stripe_emulator, method, path, allow):
    response = client.open(path, method=method)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == allow
    assert stripe_emulator.calls()["total"] == 0


def test_a_405_from_an_allowed_origin_is_readable_by_the_browser(client):
    response = client.get(CREATE, headers={"Origin": FRONTEND})
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND


def test_every_response_has_hygiene_headers(client):
    for response in (
        client.post(CREATE, json={}),
        client.get(STATUS),
        client.get("/nope"),
        client.options(CREATE, headers={"Origin": FRONTEND}),
    ):
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert len(response.headers["X-Request-Id"]) == 32


def test_request_ids_are_unique(client):
    ids = {client.get("/nope").headers["X-Request-Id"] for _ in range(20)}
    assert len(ids) == 20


# CORS -----------------------------------------------------------------------------------------


def test_allowed_origin_is_echoed_with_vary(client):
    response = client.post(CREATE, json={}, headers={"Origin": FRONTEND})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND
    assert response.headers["Vary"] == "Origin"  # a cache must not serve it to another origin
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_errors_for_an_allowed_origin_are_readable_by_the_browser(client):
    response = client.get(STATUS, headers={"Origin": FRONTEND})
    assert_error(response, 400, "invalid_session_id")
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND


@pytest.mark.parametrize(("path", "methods"), [(CREATE, "POST, OPTIONS"), (STATUS, "GET, OPTIONS")])
def test_preflight_from_allowed_origin_is_204(client, stripe_emulator, path, methods):
    response = client.options(
        path,
        headers={
            "Origin": FRONTEND,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, idempotency-key",
        },
    )
    assert response.status_code == 204
    assert response.get_data() == b""
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND
    assert response.headers["Access-Control-Allow-Methods"] == methods
    assert response.headers["Access-Control-Allow-Headers"] == "Content-Type, Idempotency-Key"
    assert response.headers["Access-Control-Max-Age"] == "3600"
    assert response.headers["Vary"] == "Origin"  # a cache must not serve it to another origin
    assert stripe_emulator.calls()["total"] == 0


@pytest.mark.parametrize(
    "origin",
    [
        FOREIGN,
        "http://localhost:5174",
        "https://localhost:5173",
        "null",
        FRONTEND + ".evil.example",
    ],
)
def test_foreign_origin_is_403_without_cors_headers_or_stripe_call(client, stripe_emulator, origin):
    for response in (
        client.post(CREATE, json={}, headers={"Origin": origin}),
        client.get(STATUS + "?session_id=cs_test_abc", headers={"Origin": origin}),
        client.options(CREATE, headers={"Origin": origin, "Access-Control-Request-Method": "POST"}),
    ):
        assert_error(response, 403, "origin_not_allowed")
        assert not [h for h, _ in response.headers if h.startswith("Access-Control-Allow")]
    assert stripe_emulator.calls()["total"] == 0


def test_no_origin_is_served_without_cors_headers(client):
    response = client.post(CREATE, json={})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers


def test_allowed_origins_list_replaces_frontend_origin(client, configure):
    configure(ALLOWED_ORIGINS="https://a.example, https://b.example:8443")
    ok = client.post(CREATE, json={}, headers={"Origin": "https://b.example:8443"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://b.example:8443"
    assert_error(
        client.post(CREATE, json={}, headers={"Origin": FRONTEND}), 403, "origin_not_allowed"
    )


def test_default_allowlist_is_the_frontend_url_origin(client, configure):
    configure(FRONTEND_URL="https://shop.example.com/app")
    ok = client.post(CREATE, json={}, headers={"Origin": "https://shop.example.com"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"


def test_explicit_star_allows_any_origin(client, configure):
    configure(ALLOWED_ORIGINS="*")
    response = client.post(CREATE, json={}, headers={"Origin": FOREIGN})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == FOREIGN


# Configuration --------------------------------------------------------------------------------


def test_no_key_is_a_configuration_error_not_a_fake(client, configure, stripe_emulator):
    configure(STRIPE_SECRET_KEY=None)
    assert_error(client.post(CREATE, json={}), 500, "payment_configuration_error")
    assert stripe_emulator.calls()["total"] == 0


def test_cloud_run_without_frontend_url_answers_configuration_error(client, configure):
    configure(K_SERVICE="checkout", FRONTEND_URL=None)
    body = assert_error(client.post(CREATE, json={}), 500, "payment_configuration_error")
    assert "FRONTEND_URL" not in body["error"]  # the detail is logged, not sent


def test_a_configuration_error_is_logged_once_and_answered_on_every_request(
    client, configure, logs
):
    configure(K_SERVICE="checkout", FRONTEND_URL=None)
    for _ in range(3):  # the verdict is kept: the environment cannot change under a process
        assert_error(client.post(CREATE, json={}), 500, "payment_configuration_error")
    said = [r for r in logs() if r["message"].startswith("configuration error: ")]
    assert len(said) == 1 and "FRONTEND_URL" in said[0]["message"]


def test_each_handler_is_built_once_from_the_one_runtime(configure, deliveries):
    from checkout.api.app import CheckoutApi

    api = CheckoutApi(deliver=deliveries)
    try:
        runtime, parts = api.runtime(), api.parts()
        assert api.runtime() is runtime and api.parts() is parts  # built once, on first use
        handlers = parts.handlers
        assert handlers.create_session.gateway is runtime.gateway
        assert handlers.session_status.ledger is runtime.ledger
        assert handlers.session_status.recorder is runtime.recorder
        assert handlers.stripe_webhook.intake is runtime.intake
        assert handlers.stripe_webhook.secret is runtime.webhook_secret
        # What the webhook forgets is what the status poll answers from.
        assert handlers.stripe_webhook.status_cache is handlers.session_status.status_cache
    finally:
        api.close()


def test_publishable_key_is_refused(client, configure, stripe_emulator):
    configure(STRIPE_SECRET_KEY="pk_test_abcdefghijklmnop")
    assert_error(client.post(CREATE, json={}), 500, "payment_configuration_error")
    assert stripe_emulator.calls()["total"] == 0


def test_revoked_key_is_a_configuration_error(client, stripe_emulator):
    stripe_emulator.set_valid_keys(["sk_test_someotherkey"])
    body = assert_error(client.post(CREATE, json={}), 500, "payment_configuration_error")
    assert TEST_KEY[-4:] not in body["error"]


def test_import_main_creates_no_client_and_skips_secret_manager(tmp_path):
    import subprocess
    import sys

    # Nor the HTTP libraries stripe would pick default clients from: every call goes through our
    # transport. (aiohttp is installed here, for the benchmarks; requests, for Secret Manager.)
    code = (
        "import sys, main\n"
        "import checkout.api.app\n"
        "assert 'google.cloud.secretmanager' not in sys.modules\n"
        "assert not main.api.built\n"
        "loaded = [m for m in ('requests', 'urllib3', 'aiohttp', 'httpx') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "import requests, aiohttp  # still there for whoever needs them\n"
    )
    env = {"STRIPE_SECRET_KEY": TEST_KEY, "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=str(ROOT))


def test_a_deliver_order_that_does_not_import_is_a_configuration_error(configure):
    from checkout.api.app import CheckoutApi
    from checkout.errors import ApiError

    configure(DELIVER_ORDER="tests.no_such_module:deliver")
    with pytest.raises(ApiError) as caught:
        CheckoutApi().parts()  # as main.py builds it: DELIVER_ORDER names the function
    assert (caught.value.status, caught.value.code) == (500, "payment_configuration_error")
    assert "DELIVER_ORDER" in (caught.value.detail or "")


# -- an unhandled error: diagnosable from its log line, with no secret in it ---------------------


def test_an_unhandled_error_is_logged_once_with_message_and_traceback_and_no_secret(
    function_app, client, stripe_emulator, capsys
):
    from checkout.api.app import CheckoutApi
    from checkout.config import Settings

    session = client.post(CREATE, json={}).get_json()
    client_secret = session["client_secret"]
    capsys.readouterr()

    def buggy() -> Settings:  # a bug where the service is built: no test hook, a real crash
        known: dict[str, Settings] = {}
        try:
            return known["imageId"]
        except KeyError as cause:
            # A message quoting secrets, as a library's error might: the key, a signing
            # secret, a client secret and a bearer token (a live-looking key, built here so that
            # no secret scanner mistakes this file for a leak).
            live_key = "sk_" + "live_" + "SuperSecretLiveKey99"
            raise RuntimeError(
                f"template broke near {TEST_KEY} / {WHSEC} / {client_secret} / "
                f"Authorization: Bearer {live_key}"
            ) from cause

    broken = CheckoutApi(load=buggy)
    function_app.serve(function_app_for(broken))
    response = client.post(CREATE, json={})

    body = assert_error(response, 500, "internal_error")
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and "template broke" not in text
    out = capsys.readouterr().out
    records = [r for r in log_records(out) if r.get("request_id") == body["request_id"]]
    [line] = [r for r in records if r["severity"] == "ERROR"]  # logged once
    assert len(records) == 1
    assert line["logger"] == "checkout.request" and line["code"] == "internal_error"
    assert line["error_type"] == "RuntimeError"
    assert line["error_message"].startswith("template broke near sk_test_[redacted]")
    trace = line["stack_trace"]
    assert trace.startswith("Traceback (most recent call last):")
    assert "in buggy" in trace and "KeyError: 'imageId'" in trace  # the frame and the cause
    assert trace.rstrip().endswith("Bearer [redacted]")
    for secret in (TEST_KEY, WHSEC, client_secret, "SuperSecretLiveKey99", "_secret_cs"):
        assert secret not in out


def every_subclass(kind: type) -> set[type]:
    import importlib
    import pkgutil

    import checkout

    for module in pkgutil.walk_packages(checkout.__path__, "checkout."):
        importlib.import_module(module.name)  # every class of ours defined
    found: set[type] = set()
    todo: list[type] = [kind]
    while todo:
        subclasses: list[type] = todo.pop().__subclasses__()
        found.update(subclasses)
        todo += subclasses
    return found


def test_a_retry_later_error_of_ours_raised_anywhere_is_the_retry_answer():
    from checkout.api.errors import api_error_for
    from checkout.errors import RetryLater
    from checkout.keys import SecretUnavailable
    from checkout.ops.subscriptions import SubscriptionsUnavailable
    from checkout.orders.ledger import LedgerUnavailable

    retry_later = every_subclass(RetryLater)
    assert {LedgerUnavailable, SecretUnavailable, SubscriptionsUnavailable} <= retry_later
    for kind in [RetryLater, *retry_later]:
        error = api_error_for(kind("the ledger timed out"))
        assert error is not None, kind
        assert (error.status, error.detail) == (503, "the ledger timed out"), kind
        assert int(error.headers["Retry-After"]) > 0, kind


def test_an_exception_the_table_does_not_answer_is_a_crash_not_an_answer():
    from checkout.api.errors import api_error_for
    from checkout.config import ConfigError
    from checkout.orders.delivery import DeliveryFailed

    for error in (ConfigError("x"), DeliveryFailed("x"), KeyError("x")):
        assert api_error_for(error) is None  # app.py: 500 internal_error, its trace in the log
