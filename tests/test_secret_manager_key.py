"""The whole function with only STRIPE_SECRET_NAME: key from the Secret Manager fake, over HTTP."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from devtools.secret_manager_emulator import SecretManagerEmulator
from tests.support import STATUS, assert_error, create

OLD_KEY = "sk_test_51OldKeyBeforeRotation000000000000"
NEW_KEY = "sk_test_51NewKeyAfterRotation1111111111111"
SECRET = "projects/demo-project/secrets/stripe-key"


@pytest.fixture
def secret_manager(sm):
    """The Secret Manager fake holding version 1 of the Stripe key."""
    sm.add_version("demo-project", "stripe-key", OLD_KEY)
    return sm


@pytest.fixture
def sm_client(function_app, configure, secret_manager, stripe_emulator):
    """The function configured with only the secret's name (no STRIPE_SECRET_KEY)."""
    configure(
        STRIPE_SECRET_KEY=None,
        STRIPE_SECRET_NAME=SECRET,
        SECRET_MANAGER_ENDPOINT=secret_manager.endpoint,
    )
    stripe_emulator.set_valid_keys([OLD_KEY])
    return function_app.test_client()


def test_both_endpoints_work_with_only_the_secret_name(sm_client, secret_manager, stripe_emulator):
    created = create(sm_client, {"imageId": "img_sm"})
    assert created.status_code == 200
    session_id = created.get_json()["session_id"]
    stripe_emulator.complete_session(session_id)
    body = sm_client.get(STATUS, query_string={"session_id": session_id}).get_json()
    assert body == {
        "status": "complete",
        "payment_status": "paid",
        "outcome": "paid",
        "amount_refunded": 0,
        "metadata": {"imageId": "img_sm"},
    }
    assert secret_manager.access_count == 1  # fetched once, then served from memory


@pytest.mark.parametrize(
    "name", ["projects/demo-project/secrets/stripe-key/versions/1", "stripe-key"]
)
def test_other_name_forms_resolve(function_app, configure, secret_manager, stripe_emulator, name):
    configure(
        STRIPE_SECRET_KEY=None,
        STRIPE_SECRET_NAME=name,
        GOOGLE_CLOUD_PROJECT="demo-project",
        SECRET_MANAGER_ENDPOINT=secret_manager.endpoint,
    )
    assert create(function_app.test_client(), {}).status_code == 200


def test_stripe_key_from_env_wins_and_secret_manager_is_not_called(
    function_app, configure, secret_manager
):
    configure(STRIPE_SECRET_NAME=SECRET, SECRET_MANAGER_ENDPOINT=secret_manager.endpoint)
    assert create(function_app.test_client(), {}).status_code == 200
    assert secret_manager.access_count == 0


def test_a_rotated_key_is_picked_up_on_stripe_401(
    sm_client, secret_manager, stripe_emulator, capsys
):
    assert create(sm_client, {}).status_code == 200
    secret_manager.add_version("demo-project", "stripe-key", NEW_KEY)
    stripe_emulator.set_valid_keys([NEW_KEY])  # the old key is rolled
    assert create(sm_client, {}).status_code == 200
    assert secret_manager.access_count == 2
    assert create(sm_client, {}).status_code == 200
    assert secret_manager.access_count == 2  # the new key is cached
    out = capsys.readouterr().out
    assert "retrying once with the new one" in out
    assert OLD_KEY not in out and NEW_KEY not in out


def test_a_revoked_key_with_no_new_version_is_a_configuration_error(
    sm_client, secret_manager, stripe_emulator
):
    assert create(sm_client, {}).status_code == 200
    stripe_emulator.set_valid_keys([NEW_KEY])
    assert_error(create(sm_client, {}), 500, "payment_configuration_error")
    assert secret_manager.access_count == 2  # one re-read, no retry loop


def test_twenty_concurrent_first_requests_make_one_access_call(
    function_app, configure, stripe_emulator
):
    with SecretManagerEmulator(latency_ms=300) as slow:
        slow.add_version("demo-project", "stripe-key", OLD_KEY)
        configure(
            STRIPE_SECRET_KEY=None, STRIPE_SECRET_NAME=SECRET, SECRET_MANAGER_ENDPOINT=slow.endpoint
        )
        barrier = threading.Barrier(20)

        def first_request(_: int) -> int:
            client = function_app.test_client()
            barrier.wait()
            return create(client, {}).status_code

        with ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(first_request, range(20)))
        assert statuses == [200] * 20
        assert slow.access_count == 1


@pytest.mark.slow
def test_outage_is_503_within_the_retry_budget_then_recovers_without_restart(
    sm_client, secret_manager, logs
):
    secret_manager.set_failure("unavailable")
    response = create(sm_client, {})
    assert_error(response, 503, "payment_provider_unavailable")
    assert int(response.headers["Retry-After"]) > 0
    # Ended by the retry budget that config counts (not a clock: python -m bench.faults times it).
    details = [record.get("detail") or "" for record in logs()]
    assert any("still failing after retrying for up to 2 s" in d for d in details), details
    secret_manager.set_failure(None)
    assert create(sm_client, {}).status_code == 200


def test_permission_denied_is_503_and_retried_next_request(sm_client, secret_manager):
    secret_manager.set_failure("permission_denied")
    assert_error(create(sm_client, {}), 503, "payment_provider_unavailable")
    assert_error(create(sm_client, {}), 503, "payment_provider_unavailable")
    assert secret_manager.access_count == 2  # the failure was not cached
    secret_manager.set_failure(None)
    assert create(sm_client, {}).status_code == 200


def test_missing_secret_is_a_configuration_error(function_app, configure, secret_manager):
    configure(
        STRIPE_SECRET_KEY=None,
        STRIPE_SECRET_NAME="projects/demo-project/secrets/nope",
        SECRET_MANAGER_ENDPOINT=secret_manager.endpoint,
    )
    assert_error(create(function_app.test_client(), {}), 500, "payment_configuration_error")


@pytest.mark.parametrize("value", ["pk_test_abc123", "", "whsec_abc123"])
def test_wrong_kind_of_secret_is_refused(function_app, configure, stripe_emulator, value, capsys):
    with SecretManagerEmulator() as emulator:
        emulator.add_version("demo-project", "stripe-key", value)
        configure(
            STRIPE_SECRET_KEY=None,
            STRIPE_SECRET_NAME=SECRET,
            SECRET_MANAGER_ENDPOINT=emulator.endpoint,
        )
        assert_error(create(function_app.test_client(), {}), 500, "payment_configuration_error")
    assert stripe_emulator.calls()["total"] == 0
    if value:
        assert value not in capsys.readouterr().out


def test_crc_mismatch_is_refused(sm_client, secret_manager, stripe_emulator):
    secret_manager.set_failure("crc_mismatch")
    assert_error(create(sm_client, {}), 503, "payment_provider_unavailable")
    assert stripe_emulator.calls()["total"] == 0
