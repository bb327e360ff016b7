"""Stripe misbehaving (the emulator's fault modes): the contract's answer, reached the way the
budget assumes.

The budget is the documented worst case of one Stripe call, `stripe_budget_seconds(timeout,
retries)`: every attempt times out and every SDK backoff is the longest. These tests check what the
budget counts, never a clock (the machine is noisy): how many attempts reached Stripe, that a hung
attempt was ended by our timeout (the log says TimeoutError) and that a refused one was not (it
says ConnectionRefusedError). `python -m bench.faults` measures each against its budget.
"""

from __future__ import annotations

import pytest

from checkout.config import (
    REQUEST_MARGIN_SECONDS,
    SECRET_MANAGER_BUDGET_SECONDS,
    ConfigError,
    load_settings,
    request_budget_seconds,
    stripe_budget_seconds,
)
from tests.support import STATUS, CapturedLogs, assert_error, create, free_port

# Longer than any test here runs: a hang that ended on its own would not end by TimeoutError.
HANG_SECONDS = 60


def status_of(client, session_id: str = "cs_test_abc123"):
    return client.get(STATUS, query_string={"session_id": session_id})


def stripe_failure(logs: CapturedLogs) -> str:
    """The Stripe error of the last request logged, as the request log line names it."""
    return [record for record in logs() if "httpRequest" in record][-1]["detail"]


# --- the budget itself ---------------------------------------------------------------------------


def test_budget_counts_every_attempt_and_the_longest_backoffs():
    assert stripe_budget_seconds(10, 0) == 10
    assert stripe_budget_seconds(10, 2) == 3 * 10 + 0.5 + 1  # the defaults: 31.5 s
    assert stripe_budget_seconds(1, 5) == 6 * 1 + 0.5 + 1 + 2 + 4 + 5  # backoff capped at 5 s


def test_a_budget_that_does_not_fit_the_deployed_request_timeout_is_refused():
    # The review's case: a 60 s deploy with timeout 30 s and 2 retries (worst case 91.5 s).
    env = {
        "REQUEST_TIMEOUT_SECONDS": "60s",
        "STRIPE_TIMEOUT_SECONDS": "30",
        "STRIPE_MAX_RETRIES": "2",
    }
    assert stripe_budget_seconds(30, 2) == 91.5
    with pytest.raises(ConfigError, match="more than REQUEST_TIMEOUT_SECONDS"):
        load_settings(env)
    # The same Stripe settings fit Cloud Run's default 300 s.
    assert load_settings({**env, "REQUEST_TIMEOUT_SECONDS": "300"}).stripe_timeout_seconds == 30


def test_the_default_budget_fits_the_deploys_timeout_with_secret_manager():
    settings = load_settings({"REQUEST_TIMEOUT_SECONDS": "60", "STRIPE_SECRET_NAME": "stripe-key"})
    assert request_budget_seconds(settings) == 31.5 + SECRET_MANAGER_BUDGET_SECONDS
    assert request_budget_seconds(settings) <= 60 - REQUEST_MARGIN_SECONDS
    # Secret Manager's own worst case counts: 52.5 s of Stripe alone fits in 60 s, not with it.
    tight = {"REQUEST_TIMEOUT_SECONDS": "60", "STRIPE_TIMEOUT_SECONDS": "17"}
    assert load_settings(tight).stripe_timeout_seconds == 17
    with pytest.raises(ConfigError, match="Secret Manager"):
        load_settings({**tight, "STRIPE_SECRET_NAME": "stripe-key"})


# --- one fault at a time -------------------------------------------------------------------------


def test_stripe_500_is_502_at_once(client, configure, stripe_emulator):
    configure(STRIPE_TIMEOUT_SECONDS="2", STRIPE_MAX_RETRIES="2")
    stripe_emulator.set_faults(mode="error_500")
    assert_error(create(client, {}), 502, "payment_provider_error")
    # Stripe marks its 500s Stripe-Should-Retry: false (a retry would replay the saved failure).
    assert stripe_emulator.calls()["create_session"] == 1
    assert_error(status_of(client), 502, "payment_provider_error")
    assert stripe_emulator.calls()["retrieve_session"] == 1


def test_stripe_429_is_503_with_retry_after_without_retrying(client, configure, stripe_emulator):
    configure(STRIPE_TIMEOUT_SECONDS="2", STRIPE_MAX_RETRIES="2")
    stripe_emulator.set_faults(mode="rate_limit_429")
    for request in (lambda: create(client, {}), lambda: status_of(client)):
        response = request()
        assert_error(response, 503, "payment_provider_busy")
        assert int(response.headers["Retry-After"]) >= 1
    # Stripe's 429 carries no Stripe-Should-Retry, so the SDK does not hammer a busy Stripe.
    assert stripe_emulator.calls()["total"] == 2


@pytest.mark.parametrize("retries", [0, 1])
@pytest.mark.slow
def test_stripe_hanging_past_the_timeout_is_504_after_each_attempt_times_out(
    client, configure, stripe_emulator, logs, retries
):
    configure(STRIPE_TIMEOUT_SECONDS="0.5", STRIPE_MAX_RETRIES=str(retries))
    stripe_emulator.set_faults(mode="hang", hang_seconds=HANG_SECONDS)
    assert_error(create(client, {}), 504, "payment_provider_unreachable")
    assert stripe_emulator.calls()["create_session"] == retries + 1
    assert stripe_failure(logs).endswith("(TimeoutError)")  # our timeout ended the last attempt


@pytest.mark.slow
def test_closed_port_is_504_without_waiting_for_the_timeout(client, configure, logs):
    configure(
        STRIPE_API_BASE=f"http://127.0.0.1:{free_port()}",
        STRIPE_TIMEOUT_SECONDS="5",
        STRIPE_MAX_RETRIES="1",
    )
    for request in (lambda: create(client, {}), lambda: status_of(client)):
        assert_error(request(), 504, "payment_provider_unreachable")
        # Refused, not timed out: the budget of a closed port is only the SDK's backoff.
        assert stripe_failure(logs).endswith("(ConnectionRefusedError)")


@pytest.mark.slow
def test_stripe_recovering_means_the_next_request_succeeds(client, configure, stripe_emulator):
    configure(STRIPE_TIMEOUT_SECONDS="2", STRIPE_MAX_RETRIES="1")
    stripe_emulator.set_faults(mode="error_500", remaining=1)  # the SDK does not retry a 500
    assert_error(create(client, {"imageId": "img_1"}), 502, "payment_provider_error")
    created = create(client, {"imageId": "img_1"})
    assert created.status_code == 200
    session_id = created.get_json()["session_id"]
    metadata = stripe_emulator.get_session(session_id)["metadata"]
    assert metadata == {"checkout_deployment": "local", "imageId": "img_1"}

    stripe_emulator.set_faults(mode="hang", hang_seconds=HANG_SECONDS, remaining=2)
    configure(STRIPE_TIMEOUT_SECONDS="0.5", STRIPE_MAX_RETRIES="1")
    assert_error(status_of(client, session_id), 504, "payment_provider_unreachable")
    assert status_of(client, session_id).get_json()["status"] == "open"


def test_half_the_calls_failing_at_random_are_each_answered_cleanly(
    client, configure, stripe_emulator
):
    configure(STRIPE_TIMEOUT_SECONDS="2", STRIPE_MAX_RETRIES="0")
    stripe_emulator.set_faults(mode="random_500", probability=0.5, seed=20261126)
    created: dict[str, str] = {}
    outcomes: dict[str, list[int]] = {"create": [], "status": []}
    for attempt in range(30):
        response = create(client, {"imageId": f"img_{attempt}"})
        outcomes["create"].append(response.status_code)
        if response.status_code == 200:
            body = response.get_json()
            assert set(body) == {"client_secret", "session_id"}
            assert body["client_secret"].startswith(body["session_id"] + "_secret_")
            session = stripe_emulator.get_session(body["session_id"])
            assert session["metadata"] == {
                "checkout_deployment": "local",
                "imageId": f"img_{attempt}",
            }
            created[body["session_id"]] = f"img_{attempt}"
        else:
            assert_error(response, 502, "payment_provider_error")
    for session_id, image_id in created.items():
        response = status_of(client, session_id)
        outcomes["status"].append(response.status_code)
        if response.status_code == 200:
            assert response.get_json() == {
                "status": "open",
                "payment_status": "unpaid",
                "outcome": "open",
                "amount_refunded": 0,
                "metadata": {"imageId": image_id},
            }
        else:
            assert_error(response, 502, "payment_provider_error")

    # Every answer was one of the two, both happened, and no failure left a session behind.
    for statuses in outcomes.values():
        assert set(statuses) == {200, 502}
    assert stripe_emulator.calls()["sessions_created"] == len(created)
