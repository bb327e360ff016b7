"""Secret resolution, driven through the real google-cloud-secret-manager client over HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from checkout.config import load_settings
from checkout.keys import (
    SecretConfigError,
    SecretSource,
    SecretUnavailable,
    check_named_secrets,
    check_stripe_key_shape,
    check_webhook_secret_shape,
    stripe_api_key_source,
    webhook_secret_source,
)
from devtools.secret_manager_emulator import SecretManagerEmulator
from tests.support import service_account_file, stop_process

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "demo-project"
SECRET = f"projects/{PROJECT}/secrets/stripe-key"
KEY_V1 = "sk_test_51KeyVersionOne0123456789abcdefABCDEF"
KEY_V2 = "sk_test_51KeyVersionTwo0123456789abcdefABCDEF"
CROWD = 20


@pytest.fixture
def slow_sm() -> Iterator[SecretManagerEmulator]:
    """An emulator whose every access takes 300 ms, so that concurrent callers overlap."""
    with SecretManagerEmulator(latency_ms=300) as emulator:
        yield emulator


@pytest.fixture
def key_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    # The app's logging setup stops `checkout` records at its own handler; listen there directly.
    logger = logging.getLogger("checkout.keys")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.DEBUG)
    yield caplog
    logger.removeHandler(caplog.handler)


def key_source(
    emulator: SecretManagerEmulator, async_wait_seconds: float | None = None, **env: str
) -> SecretSource:
    settings = load_settings({"SECRET_MANAGER_ENDPOINT": emulator.endpoint, **env})
    if async_wait_seconds is None:
        return stripe_api_key_source(settings)  # the production bound
    return stripe_api_key_source(settings, async_wait_seconds)


def in_crowd(call: Callable[[], str]) -> list[str | BaseException]:
    """Run `call` in CROWD threads released together; return each result or exception."""
    barrier = threading.Barrier(CROWD)
    results: list[str | BaseException] = [""] * CROWD

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = call()
        except BaseException as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CROWD)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


# -- where the secret comes from ------------------------------------------------------------


def test_full_name_reads_that_version(sm: SecretManagerEmulator) -> None:
    sm.add_version(PROJECT, "stripe-key", KEY_V1)
    sm.add_version(PROJECT, "stripe-key", KEY_V2)

    assert key_source(sm, STRIPE_SECRET_NAME=f"{SECRET}/versions/1").get() == KEY_V1


def test_name_without_version_reads_latest(sm: SecretManagerEmulator) -> None:
    sm.add_version(PROJECT, "stripe-key", KEY_V1)
    sm.add_version(PROJECT, "stripe-key", KEY_V2)

    assert key_source(sm, STRIPE_SECRET_NAME=SECRET).get() == KEY_V2


def test_latest_skips_a_disabled_version(sm: SecretManagerEmulator) -> None:
    sm.add_version(PROJECT, "stripe-key", KEY_V1)
    sm.add_version(PROJECT, "stripe-key", KEY_V2)
    sm.disable_version(PROJECT, "stripe-key", 2)

    assert key_source(sm, STRIPE_SECRET_NAME=SECRET).get() == KEY_V1
    with pytest.raises(SecretConfigError, match="DISABLED"):
        key_source(sm, STRIPE_SECRET_NAME=f"{SECRET}/versions/2").get()


def test_bare_name_takes_the_project_from_settings(sm: SecretManagerEmulator) -> None:
    sm.add_version(PROJECT, "stripe-key", KEY_V1)

    source = key_source(sm, STRIPE_SECRET_NAME="stripe-key", GOOGLE_CLOUD_PROJECT=PROJECT)

    assert source.get() == KEY_V1


def test_bare_name_takes_the_project_from_default_credentials(
    sm: SecretManagerEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = service_account_file(tmp_path, "adc-project")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.delenv("GCLOUD_PROJECT", raising=False)
    sm.add_version("adc-project", "stripe-key", KEY_V1)

    assert key_source(sm, STRIPE_SECRET_NAME="stripe-key").get() == KEY_V1


def test_bare_name_without_any_project_names_google_cloud_project(
    sm: SecretManagerEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Credentials that cannot load: google.auth.default() gives up at once, with no network.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)

    with pytest.raises(SecretConfigError, match="GOOGLE_CLOUD_PROJECT"):
        key_source(sm, STRIPE_SECRET_NAME="stripe-key").get()
    assert sm.access_count == 0


@pytest.mark.parametrize(
    "name",
    [
        "projects/demo/secrets/",
        "projects/demo/secrets/s/versions/",
        "projects/demo/secrets/s/versions/1/extra",
        "projects//secrets/s",
        "stripe key with spaces",
        "projects/demo/locations/europe-west1/secrets/s",
    ],
)
def test_malformed_name_is_a_config_error(sm: SecretManagerEmulator, name: str) -> None:
    with pytest.raises(SecretConfigError, match="STRIPE_SECRET_NAME") as caught:
        key_source(sm, STRIPE_SECRET_NAME=name).get()
    assert name not in str(caught.value)
    assert sm.access_count == 0


def test_key_pasted_into_the_name_variable_is_refused_unrepeated(
    sm: SecretManagerEmulator, key_logs: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(SecretConfigError, match=r"STRIPE_SECRET_NAME holds a secret API key") as e:
        key_source(sm, STRIPE_SECRET_NAME=KEY_V1).get()

    assert KEY_V1 not in str(e.value)
    assert KEY_V1 not in key_logs.text
    assert sm.access_count == 0


def test_nothing_configured_is_a_config_error(sm: SecretManagerEmulator) -> None:
    source = key_source(sm)

    assert not source.configured
    with pytest.raises(SecretConfigError) as caught:
        source.get()
    assert str(caught.value) == (
        "no Stripe key configured: set STRIPE_SECRET_KEY or STRIPE_SECRET_NAME"
    )


def test_env_value_wins_over_the_name_without_calling_secret_manager(
    sm: SecretManagerEmulator,
) -> None:
    sm.add_version(PROJECT, "stripe-key", KEY_V2)

    source = key_source(sm, STRIPE_SECRET_KEY=KEY_V1, STRIPE_SECRET_NAME=SECRET)

    assert source.get() == KEY_V1
    assert source.refresh(KEY_V1) == KEY_V1
    assert sm.access_count == 0


def test_publishable_key_in_env_value_is_refused(sm: SecretManagerEmulator) -> None:
    value = "pk_test_51PublishableKey0123456789"

    with pytest.raises(SecretConfigError, match=r"publishable key \(pk_…\)") as caught:
        key_source(sm, STRIPE_SECRET_KEY=value).get()
    assert str(caught.value).startswith("STRIPE_SECRET_KEY is not a usable Stripe key")
    assert value not in str(caught.value)


# -- what the secret holds ------------------------------------------------------------------


def test_value_is_stripped_of_surrounding_whitespace(sm: SecretManagerEmulator) -> None:
    sm.add_version(PROJECT, "stripe-key", f"  {KEY_V1}\n")

    assert key_source(sm, STRIPE_SECRET_NAME=SECRET).get() == KEY_V1


@pytest.mark.parametrize(
    ("stored", "named"),
    [
        ("pk_live_51PublishableKey0123456789", "a publishable key (pk_…)"),
        ("", "empty"),
        ("   \n", "empty"),
        ("whsec_0123456789abcdef", "a webhook signing secret (whsec_…)"),
        ('"sk_test_51QuotedKey0123456789"', "quoted"),
        ("correct-horse-battery-staple", "not recognisable as a Stripe key"),
        ("sk_test_51Key With Spaces", "starts like a secret API key (sk_…) but is malformed"),
    ],
)
def test_a_value_that_is_not_a_secret_key_is_refused_by_prefix_only(
    sm: SecretManagerEmulator, key_logs: pytest.LogCaptureFixture, stored: str, named: str
) -> None:
    sm.add_version(PROJECT, "stripe-key", stored)

    with pytest.raises(SecretConfigError) as caught:
        key_source(sm, STRIPE_SECRET_NAME=SECRET).get()

    message = str(caught.value)
    assert named in message
    assert f"{SECRET}/versions/1 (STRIPE_SECRET_NAME) is not a usable Stripe key" in message
    if stored.strip():
        assert stored.strip() not in message
        assert stored.strip() not in key_logs.text
        assert stored.strip()[:12] not in message


def test_restricted_and_live_keys_are_accepted() -> None:
    assert check_stripe_key_shape("rk_live_51Restr") == "rk_live_51Restr"
    assert check_stripe_key_shape("\tsk_live_51Live\n") == "sk_live_51Live"


def test_webhook_secret_shape_refuses_an_api_key() -> None:
    assert check_webhook_secret_shape(" whsec_abc+/=123 ") == "whsec_abc+/=123"
    with pytest.raises(SecretConfigError, match=r"a secret API key \(sk_…\)") as caught:
        check_webhook_secret_shape(KEY_V1)
    assert KEY_V1 not in str(caught.value)


def test_webhook_secret_is_read_from_its_own_secret(sm: SecretManagerEmulator) -> None:
    sm.add_version(PROJECT, "webhook", "whsec_0123456789abcdef")
    settings = load_settings(
        {
            "SECRET_MANAGER_ENDPOINT": sm.endpoint,
            "STRIPE_WEBHOOK_SECRET_NAME": f"projects/{PROJECT}/secrets/webhook",
        }
    )

    assert webhook_secret_source(settings).get() == "whsec_0123456789abcdef"
    assert not stripe_api_key_source(settings).configured
    with pytest.raises(SecretConfigError, match="STRIPE_WEBHOOK_SECRET or STRIPE_WEBHOOK_SECRET_"):
        webhook_secret_source(load_settings({})).get()


# -- failures -------------------------------------------------------------------------------


def test_crc_mismatch_is_unavailable_and_not_cached(
    sm: SecretManagerEmulator, key_logs: pytest.LogCaptureFixture
) -> None:
    sm.add_version(PROJECT, "stripe-key", KEY_V1)
    source = key_source(sm, STRIPE_SECRET_NAME=SECRET)
    sm.set_failure("crc_mismatch")

    with pytest.raises(SecretUnavailable, match="CRC32C"):
        source.get()
    assert any(r.levelno == logging.ERROR and "CRC32C" in r.message for r in key_logs.records)
    assert KEY_V1 not in key_logs.text

    sm.set_failure(None)
    assert source.get() == KEY_V1
    assert sm.access_count == 2


def test_permission_denied_is_unavailable_and_says_which_role(sm: SecretManagerEmulator) -> None:
    sm.add_version(PROJECT, "stripe-key", KEY_V1)
    sm.set_failure("permission_denied")

    with pytest.raises(SecretUnavailable) as caught:
        key_source(sm, STRIPE_SECRET_NAME=SECRET).get()

    assert str(caught.value) == (
        f"Secret Manager denied access to {SECRET}/versions/latest: grant "
        "roles/secretmanager.secretAccessor on the secret to the runtime service account"
    )
    assert sm.access_count == 1  # A denial is not retried.


def test_unknown_secret_is_a_config_error(sm: SecretManagerEmulator) -> None:
    with pytest.raises(SecretConfigError, match=f"Secret Manager has no {SECRET}/versions/latest"):
        key_source(sm, STRIPE_SECRET_NAME=SECRET).get()


def test_unknown_version_is_a_config_error(sm: SecretManagerEmulator) -> None:
    sm.add_version(PROJECT, "stripe-key", KEY_V1)

    with pytest.raises(SecretConfigError, match="versions/7"):
        key_source(sm, STRIPE_SECRET_NAME=f"{SECRET}/versions/7").get()


# "Fast" below is the retry budget (2 s) and the attempt timeout (1.5 s), which config.py counts
# as SECRET_MANAGER_BUDGET_SECONDS: each test shows which of the two ended the read (by its
# message), never a clock. A read that ignored both would hang: pytest's timeout (120 s, set in
# pyproject.toml) is the generous bound on that. `python -m bench.faults` measures the time.


@pytest.mark.slow
def test_outage_is_retried_within_the_budget_then_recovers_without_a_new_source(
    sm: SecretManagerEmulator,
) -> None:
    sm.add_version(PROJECT, "stripe-key", KEY_V1)
    source = key_source(sm, STRIPE_SECRET_NAME=SECRET)
    sm.set_failure("unavailable")

    with pytest.raises(SecretUnavailable, match=r"after retrying for up to 2 s .*503"):
        source.get()

    assert sm.access_count > 1  # 503 is retried, until the budget runs out
    sm.set_failure(None)
    assert source.get() == KEY_V1


@pytest.mark.slow
def test_unreachable_secret_manager_is_retried_within_the_budget(
    sm: SecretManagerEmulator,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    source = stripe_api_key_source(
        load_settings(
            {
                "SECRET_MANAGER_ENDPOINT": f"http://127.0.0.1:{closed_port}",
                "STRIPE_SECRET_NAME": SECRET,
            }
        )
    )

    with pytest.raises(
        SecretUnavailable, match=f"unavailable for {SECRET}/versions/latest: .* up to 2 s"
    ):
        source.get()


@pytest.mark.slow
def test_hung_secret_manager_is_abandoned_after_the_attempt_timeout(
    sm: SecretManagerEmulator,
) -> None:
    sm.add_version(PROJECT, "stripe-key", KEY_V1)
    hold = sm.hold()  # never answers until released: only our timeout can end the read
    try:
        with pytest.raises(SecretUnavailable, match=r"did not answer .* within 1\.5 s"):
            key_source(sm, STRIPE_SECRET_NAME=SECRET).get()
        assert hold.arrived.is_set()
    finally:
        hold.release()


def test_warm_swallows_a_failure_and_the_next_get_retries(sm: SecretManagerEmulator) -> None:
    source = key_source(sm, STRIPE_SECRET_NAME=SECRET)

    source.warm()  # Nothing stored yet: NotFound, logged and swallowed.
    sm.add_version(PROJECT, "stripe-key", KEY_V1)

    assert source.get() == KEY_V1
    assert sm.access_count == 2


# -- caching, single flight and rotation ----------------------------------------------------


def test_the_secret_is_read_once_and_then_served_from_memory(sm: SecretManagerEmulator) -> None:
    sm.add_version(PROJECT, "stripe-key", KEY_V1)
    source = key_source(sm, STRIPE_SECRET_NAME=SECRET)

    assert [source.get() for _ in range(50)] == [KEY_V1] * 50
    assert sm.access_count == 1


def test_concurrent_first_gets_make_one_access(slow_sm: SecretManagerEmulator) -> None:
    slow_sm.add_version(PROJECT, "stripe-key", KEY_V1)
    source = key_source(slow_sm, STRIPE_SECRET_NAME=SECRET)

    assert in_crowd(source.get) == [KEY_V1] * CROWD
    assert slow_sm.access_count == 1


def test_concurrent_first_gets_share_one_failure(slow_sm: SecretManagerEmulator) -> None:
    slow_sm.add_version(PROJECT, "stripe-key", KEY_V1)
    slow_sm.set_failure("permission_denied")
    source = key_source(slow_sm, STRIPE_SECRET_NAME=SECRET)

    results = in_crowd(source.get)

    assert all(isinstance(r, SecretUnavailable) for r in results), results
    assert len({str(r) for r in results}) == 1
    assert slow_sm.access_count == 1


def test_refresh_returns_the_new_version_and_logs_without_values(
    sm: SecretManagerEmulator, key_logs: pytest.LogCaptureFixture
) -> None:
    sm.add_version(PROJECT, "stripe-key", KEY_V1)
    source = key_source(sm, STRIPE_SECRET_NAME=SECRET)
    assert source.get() == KEY_V1
    sm.add_version(PROJECT, "stripe-key", KEY_V2)

    assert source.refresh(KEY_V1) == KEY_V2
    assert source.get() == KEY_V2
    assert sm.access_count == 2
    assert "re-reading the Stripe key" in key_logs.text
    assert f"changed: now using {SECRET}/versions/2" in key_logs.text
    assert KEY_V1 not in key_logs.text
    assert KEY_V2 not in key_logs.text


def test_refresh_of_an_unchanged_secret_returns_the_same_value(
    sm: SecretManagerEmulator, key_logs: pytest.LogCaptureFixture
) -> None:
    sm.add_version(PROJECT, "stripe-key", KEY_V1)
    source = key_source(sm, STRIPE_SECRET_NAME=SECRET)
    source.get()

    assert source.refresh(KEY_V1) == KEY_V1
    assert "unchanged" in key_logs.text
    assert sm.access_count == 2


def test_refresh_with_an_outdated_stale_value_does_not_reread(sm: SecretManagerEmulator) -> None:
    sm.add_version(PROJECT, "stripe-key", KEY_V1)
    source = key_source(sm, STRIPE_SECRET_NAME=SECRET)
    source.get()
    sm.add_version(PROJECT, "stripe-key", KEY_V2)
    source.refresh(KEY_V1)

    assert source.refresh(KEY_V1) == KEY_V2
    assert sm.access_count == 2


@pytest.mark.slow
def test_concurrent_refreshes_of_one_stale_value_make_one_access(
    slow_sm: SecretManagerEmulator,
) -> None:
    slow_sm.add_version(PROJECT, "stripe-key", KEY_V1)
    source = key_source(slow_sm, STRIPE_SECRET_NAME=SECRET)
    source.get()
    slow_sm.add_version(PROJECT, "stripe-key", KEY_V2)

    assert in_crowd(lambda: source.refresh(KEY_V1)) == [KEY_V2] * CROWD
    assert slow_sm.access_count == 2


def test_a_failed_refresh_keeps_serving_the_cached_value(sm: SecretManagerEmulator) -> None:
    sm.add_version(PROJECT, "stripe-key", KEY_V1)
    source = key_source(sm, STRIPE_SECRET_NAME=SECRET)
    source.get()
    sm.set_failure("permission_denied")

    with pytest.raises(SecretUnavailable):
        source.refresh(KEY_V1)
    assert source.get() == KEY_V1


# -- the same from coroutines: the read in a worker thread, one per crowd -------------------


def in_coroutine_crowd(call: Callable[[], Awaitable[str]]) -> list[str | BaseException]:
    """Run `call` in CROWD coroutines on one event loop; return each result or exception."""

    async def crowd() -> list[str | BaseException]:
        return await asyncio.gather(*(call() for _ in range(CROWD)), return_exceptions=True)

    return asyncio.run(crowd())


def test_concurrent_first_async_gets_make_one_access(slow_sm: SecretManagerEmulator) -> None:
    slow_sm.add_version(PROJECT, "stripe-key", KEY_V1)
    source = key_source(slow_sm, STRIPE_SECRET_NAME=SECRET)

    assert in_coroutine_crowd(source.get_async) == [KEY_V1] * CROWD
    assert slow_sm.access_count == 1


@pytest.mark.slow
def test_concurrent_async_gets_share_one_failure_and_do_not_remember_it(
    slow_sm: SecretManagerEmulator,
) -> None:
    slow_sm.add_version(PROJECT, "stripe-key", KEY_V1)
    slow_sm.set_failure("permission_denied")
    source = key_source(slow_sm, STRIPE_SECRET_NAME=SECRET)

    results = in_coroutine_crowd(source.get_async)

    assert all(isinstance(r, SecretUnavailable) for r in results), results
    assert len({str(r) for r in results}) == 1
    assert len({id(r) for r in results}) == CROWD  # each waiter raises its own exception
    assert slow_sm.access_count == 1
    slow_sm.set_failure(None)
    assert in_coroutine_crowd(source.get_async) == [KEY_V1] * CROWD
    assert slow_sm.access_count == 2


def test_an_async_read_leaves_the_event_loop_free(sm: SecretManagerEmulator) -> None:
    sm.add_version(PROJECT, "stripe-key", KEY_V1)
    source = key_source(sm, STRIPE_SECRET_NAME=SECRET)
    hold = sm.hold()

    async def run_while_secret_manager_holds_the_read() -> tuple[bool, bool, str]:
        read = asyncio.create_task(source.get_async())
        # If the read blocked the loop, this coroutine could only resume once the read had
        # ended (by its timeout, since the hold is released only below): `still_reading` False.
        arrived = await asyncio.to_thread(hold.arrived.wait, 30)
        still_reading = not read.done()
        hold.release()
        return arrived, still_reading, await read

    try:
        arrived, still_reading, value = asyncio.run(run_while_secret_manager_holds_the_read())
    finally:
        hold.release()
    assert arrived and still_reading
    assert value == KEY_V1


@pytest.mark.slow
def test_concurrent_async_refreshes_of_one_stale_value_make_one_access(
    slow_sm: SecretManagerEmulator,
) -> None:
    slow_sm.add_version(PROJECT, "stripe-key", KEY_V1)
    source = key_source(slow_sm, STRIPE_SECRET_NAME=SECRET)
    source.get()
    slow_sm.add_version(PROJECT, "stripe-key", KEY_V2)

    assert in_coroutine_crowd(lambda: source.refresh_async(KEY_V1)) == [KEY_V2] * CROWD
    assert slow_sm.access_count == 2
    assert asyncio.run(source.get_async()) == KEY_V2


@pytest.mark.slow
def test_an_async_waiter_gives_up_after_its_bound() -> None:
    with SecretManagerEmulator(latency_ms=800) as slow:
        slow.add_version(PROJECT, "stripe-key", KEY_V1)
        source = key_source(slow, async_wait_seconds=0.2, STRIPE_SECRET_NAME=SECRET)

        with pytest.raises(SecretUnavailable, match=r"not read within 0\.2 s"):
            asyncio.run(source.get_async())
        # The read itself was not abandoned: it finished and filled the cache.
        assert source.get() == KEY_V1
        assert slow.access_count == 1


def test_an_env_value_is_served_to_coroutines_without_a_thread(sm: SecretManagerEmulator) -> None:
    source = key_source(sm, STRIPE_SECRET_KEY=KEY_V1, STRIPE_SECRET_NAME=SECRET)

    assert in_coroutine_crowd(source.get_async) == [KEY_V1] * CROWD
    assert asyncio.run(source.refresh_async(KEY_V1)) == KEY_V1
    assert sm.access_count == 0


# -- cold start and the emulator's own interfaces ------------------------------------------


def test_importing_keys_loads_no_google_library() -> None:
    # A namespace-package .pth preloads bare `google` and `google.cloud`: compare before/after.
    probe = (
        "import sys; before = set(sys.modules); import checkout.keys; "
        "new = sorted(m for m in set(sys.modules) - before "
        "if m.startswith(('google', 'grpc', 'requests'))); "
        "assert not new, new; assert 'google.cloud.secretmanager' not in sys.modules"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_check_at_start_leaves_no_connection_open() -> None:
    # It runs in the server's first process before gunicorn forks: a pooled keep-alive socket
    # would be shared by every worker. A fake of its own, so no other test's client counts.
    with SecretManagerEmulator() as fake:
        fake.add_version(PROJECT, "stripe-key", KEY_V1)
        fake.add_version(PROJECT, "stripe-webhook", "whsec_TestOnlySigning01")
        settings = load_settings(
            {
                "SECRET_MANAGER_ENDPOINT": fake.endpoint,
                "STRIPE_SECRET_NAME": SECRET,
                "STRIPE_WEBHOOK_SECRET_NAME": f"projects/{PROJECT}/secrets/stripe-webhook",
            }
        )
        check_named_secrets(settings)
        # Held while it is counted, so that garbage collection cannot close it for us.
        source = stripe_api_key_source(settings)
        source.check_at_start()
        assert fake.access_count == 3
        deadline = time.monotonic() + 5  # a bound for the fake's handler to see the close
        while fake.open_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.open_connections == 0
        assert source.get() == KEY_V1  # and it still reads, with a client of its own


def test_the_check_at_start_reads_nothing_given_in_the_environment(
    sm: SecretManagerEmulator,
) -> None:
    sm.add_version(PROJECT, "stripe-key", "pk_test_abc123")  # would be refused if it were read
    settings = load_settings(
        {
            "SECRET_MANAGER_ENDPOINT": sm.endpoint,
            "STRIPE_SECRET_KEY": KEY_V1,
            "STRIPE_SECRET_NAME": SECRET,
        }
    )
    check_named_secrets(settings)
    assert sm.access_count == 0


def test_a_value_checked_at_start_is_read_again_by_the_same_process(
    sm: SecretManagerEmulator,
) -> None:
    # Only a process forked after the check uses its value; a test (or any later source in the
    # process that checked) reads its own, so no test sees another's value.
    sm.add_version(PROJECT, "stripe-key", KEY_V1)
    check_named_secrets(
        load_settings({"SECRET_MANAGER_ENDPOINT": sm.endpoint, "STRIPE_SECRET_NAME": SECRET})
    )
    sm.add_version(PROJECT, "stripe-key", KEY_V2)
    assert key_source(sm, STRIPE_SECRET_NAME=SECRET).get() == KEY_V2
    assert sm.access_count == 2


def test_a_secret_added_over_the_emulator_http_api_is_read(sm: SecretManagerEmulator) -> None:
    def post(path: str, body: dict) -> dict:
        request = urllib.request.Request(
            sm.endpoint + path, data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    added = post(
        "/_emulator/secrets", {"project": PROJECT, "secret": "stripe-key", "value": KEY_V1}
    )
    assert added["name"] == f"{SECRET}/versions/1"
    post("/_emulator/failure", {"mode": "unavailable"})
    post("/_emulator/failure", {"mode": None})

    assert key_source(sm, STRIPE_SECRET_NAME=SECRET).get() == KEY_V1
    with urllib.request.urlopen(sm.endpoint + "/_emulator/calls", timeout=5) as response:
        assert json.load(response) == {"access_count": 1}


def test_emulator_command_line_serves_the_secrets_it_is_given() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "devtools.secret_manager_emulator",
        "--port",
        str(port),
        "--secret",
        f"{SECRET}={KEY_V1}",
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line == f"Secret Manager emulator listening on http://127.0.0.1:{port}"
        source = stripe_api_key_source(
            load_settings(
                {
                    "SECRET_MANAGER_ENDPOINT": f"http://127.0.0.1:{port}",
                    "STRIPE_SECRET_NAME": SECRET,
                }
            )
        )
        assert source.get() == KEY_V1
    finally:
        stop_process(process)
