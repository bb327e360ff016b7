"""How Stripe failures reach the client: the contract's mapping table, over HTTP."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from checkout import errors
from checkout.api.errors import api_error_for
from tests.support import CREATE, STATUS, assert_error, create, free_port


def status_of(client, session_id="cs_test_abc123"):
    return client.get(STATUS, query_string={"session_id": session_id})


def test_stripe_500_is_502_without_a_retry(client, stripe_emulator):
    stripe_emulator.set_faults(mode="error_500")
    assert_error(create(client, {}), 502, "payment_provider_error")
    # Stripe-Should-Retry: false, so STRIPE_MAX_RETRIES=1 does not apply: a retry would replay.
    assert stripe_emulator.calls()["create_session"] == 1
    assert_error(status_of(client), 502, "payment_provider_error")
    assert stripe_emulator.calls()["retrieve_session"] == 1


def test_stripe_429_is_503_with_retry_after(client, stripe_emulator):
    stripe_emulator.set_faults(mode="rate_limit_429")
    for response in (create(client, {}), status_of(client)):
        assert_error(response, 503, "payment_provider_busy")
        assert int(response.headers["Retry-After"]) > 0


def test_stripe_hanging_past_the_timeout_is_504(client, configure, stripe_emulator, logs):
    configure(STRIPE_TIMEOUT_SECONDS="0.3", STRIPE_MAX_RETRIES="0")
    stripe_emulator.set_faults(mode="hang", hang_seconds=60)  # released when the test ends
    assert_error(create(client, {}), 504, "payment_provider_unreachable")
    # Our timeout ended the call (a hang that ended on its own would be a ConnectionResetError).
    [record] = [r for r in logs() if r.get("code") == "payment_provider_unreachable"]
    assert record["detail"].endswith("(TimeoutError)")


def test_closed_port_is_504(client, configure, stripe_emulator):
    configure(STRIPE_API_BASE=f"http://127.0.0.1:{free_port()}", STRIPE_MAX_RETRIES="0")
    assert_error(create(client, {}), 504, "payment_provider_unreachable")
    assert_error(status_of(client), 504, "payment_provider_unreachable")


def test_stripe_recovering_means_the_next_request_succeeds(client, configure, stripe_emulator):
    configure(STRIPE_MAX_RETRIES="0")
    stripe_emulator.set_faults(mode="error_500", remaining=1)
    assert_error(create(client, {}), 502, "payment_provider_error")
    assert create(client, {}).status_code == 200


@pytest.mark.slow
def test_sdk_retry_hides_a_single_timeout_with_the_same_key(client, configure, stripe_emulator):
    configure(STRIPE_TIMEOUT_SECONDS="0.5", STRIPE_MAX_RETRIES="1")
    stripe_emulator.set_faults(mode="hang", hang_seconds=30, remaining=1)
    assert create(client, {}, headers={"Idempotency-Key": "order-1"}).status_code == 200
    assert stripe_emulator.calls()["create_session"] == 2
    assert len(stripe_emulator.idempotency_keys()) == 1  # the SDK's retry reused the key


def test_a_retry_after_a_502_with_the_same_key_gets_a_session(client, stripe_emulator):
    key = {"Idempotency-Key": "order-2"}
    stripe_emulator.set_faults(mode="error_500", remaining=1)
    assert_error(create(client, {}, headers=key), 502, "payment_provider_error")
    # Stripe saved that 500 under the Stripe key; the retry is sent under a fresh one.
    created = create(client, {}, headers=key)
    assert created.status_code == 200
    again = create(client, {}, headers=key)
    assert again.get_json() == created.get_json()
    first, fresh = stripe_emulator.idempotency_keys()
    assert fresh == f"{first}-retry1"
    assert stripe_emulator.calls()["sessions_created"] == 1


def test_a_concurrent_duplicate_at_stripe_is_503_busy(client, configure, stripe_emulator):
    configure(STRIPE_MAX_RETRIES="0")
    key = {"Idempotency-Key": "order-3"}
    stripe_emulator.hold_executions()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(create, client, {}, headers=key)
        try:
            deadline = time.monotonic() + 10  # generous: only bounds a broken emulator
            while not stripe_emulator.executing_keys() and time.monotonic() < deadline:
                time.sleep(0.005)
            response = create(client, {}, headers=key)
            assert_error(response, 503, "payment_provider_busy")
            assert int(response.headers["Retry-After"]) > 0
        finally:
            stripe_emulator.release_executions()
        assert first.result(timeout=10).status_code == 200


def test_stripe_request_id_and_error_detail_are_logged_not_sent(client, stripe_emulator, logs):
    stripe_emulator.set_faults(mode="error_500")
    response = client.post(CREATE, json={})
    assert_error(response, 502, "payment_provider_error")
    # The log line of this very request (by its X-Request-Id), not any line that mentions req_.
    [line] = [
        r
        for r in logs()
        if "httpRequest" in r and r["request_id"] == response.headers["X-Request-Id"]
    ]
    assert line["code"] == "payment_provider_error"
    assert re.fullmatch(r"req_[A-Za-z0-9]+", line["stripe_request_id"])
    assert "APIError http=500" in line["detail"]
    assert "An unknown error occurred" in line["detail"]
    body = response.get_data(as_text=True)
    assert line["stripe_request_id"] not in body
    assert "unknown error" not in body.lower()


# The contract's table of Stripe failures: what the gateway raises, what the client is answered.
CONTRACT = {
    errors.SessionNotFound: (404, "session_not_found", False),
    errors.ProviderBusy: (503, "payment_provider_busy", True),
    errors.ProviderUnreachable: (504, "payment_provider_unreachable", False),
    errors.ProviderError: (502, "payment_provider_error", False),
    errors.StripeMisconfigured: (500, "payment_configuration_error", False),
    errors.IdempotencyConflict: (409, "idempotency_conflict", False),
    errors.ProviderUnavailable: (503, "payment_provider_unavailable", True),
}


def test_every_stripe_failure_has_its_row_in_the_contract():
    assert set(errors.StripeFailure.__subclasses__()) == set(CONTRACT)


@pytest.mark.parametrize("failure", CONTRACT)
def test_each_stripe_failure_answers_its_row_with_the_sentence_not_the_detail(failure):
    error = api_error_for(failure("stripe create: APIError http=500 message=sk_test_..."))
    status, code, retry_after = CONTRACT[failure]
    assert error is not None
    assert (error.status, error.code, "Retry-After" in error.headers) == (status, code, retry_after)
    assert error.message == errors.CODES[code].message
    assert error.detail == "stripe create: APIError http=500 message=sk_test_..."  # the log's


def unknown_session(client, stripe_emulator):
    return status_of(client, "cs_test_nosuchsession1")


def revoked_key(client, stripe_emulator):
    stripe_emulator.set_valid_keys(["sk_test_someotherkey"])
    return create(client, {})


def reused_key(client, stripe_emulator):
    key = {"Idempotency-Key": "order-reused-elsewhere"}
    assert create(client, {"imageId": "a"}, headers=key).status_code == 200
    return create(client, {"imageId": "b"}, headers=key)


@pytest.mark.parametrize(
    ("scenario", "status", "code", "said"),
    [
        (
            unknown_session,
            404,
            "session_not_found",
            "stripe retrieve: InvalidRequestError http=404",
        ),
        (revoked_key, 500, "payment_configuration_error", "stripe create: AuthenticationError"),
        (reused_key, 409, "idempotency_conflict", "stripe create: IdempotencyError http=400"),
    ],
)
def test_a_stripe_failure_is_its_json_error_to_the_client_and_its_detail_to_the_log(
    client, stripe_emulator, logs, scenario, status, code, said
):
    response = scenario(client, stripe_emulator)
    body = assert_error(response, status, code)
    assert body["error"] == errors.CODES[code].message
    [line] = [
        r
        for r in logs()
        if "httpRequest" in r and r["request_id"] == response.headers["X-Request-Id"]
    ]
    assert (line["code"], line["httpRequest"]["status"]) == (code, status)
    assert line["detail"].startswith(said)
    assert "stripe" not in response.get_data(as_text=True).lower()


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def point_proxy_at_nothing(monkeypatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")  # nothing listens there


def test_proxy_variables_apply_to_stripe_calls(client, configure, monkeypatch, stripe_emulator):
    point_proxy_at_nothing(monkeypatch)
    configure(STRIPE_MAX_RETRIES="0")  # the client is built after the variables are set
    assert_error(create(client, {}), 504, "payment_provider_unreachable")
    assert stripe_emulator.calls()["create_session"] == 0


def test_proxy_variables_are_read_when_the_client_is_built_not_per_call(
    client, monkeypatch, stripe_emulator
):
    assert create(client, {}).status_code == 200
    point_proxy_at_nothing(monkeypatch)
    assert create(client, {}).status_code == 200
    assert stripe_emulator.calls()["create_session"] == 2


def test_stripe_connections_are_kept_alive_across_requests(client, stripe_emulator):
    session_id = create(client, {}).get_json()["session_id"]
    opened = stripe_emulator.connections_opened()
    for _ in range(5):
        assert create(client, {}).status_code == 200
        assert status_of(client, session_id).status_code == 200
    assert stripe_emulator.connections_opened() == opened  # ten calls, no new connection


def test_concurrent_requests_share_the_loops_pool_one_connection_per_call_in_flight(
    function_app, configure, stripe_emulator
):
    # Four senders, one event loop (as in a gunicorn worker), so one pool: never more
    # connections than calls in flight at once, however many requests are made.
    def one_create(_: int) -> int:
        return create(function_app.test_client(), {}).status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(one_create, range(40)))
    assert statuses == [200] * 40
    assert 1 <= stripe_emulator.connections_opened() <= 4  # not one per call
