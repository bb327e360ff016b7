"""On Cloud Run a bad configuration stops the process before it listens, so the revision never
becomes ready and traffic stays on the previous one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.support import (
    ROOT,
    SERVICE_VARS,
    TEST_KEY,
    WHSEC,
    LiveServer,
    free_port,
    stop_process,
)

# What a good configuration of the API on Cloud Run has (docs/deploy.md).
CLOUD_RUN = {
    "K_SERVICE": "checkout-api",
    "K_REVISION": "checkout-api-00002-xyz",
    "FRONTEND_URL": "https://shop.example.com",
    "STRIPE_SECRET_KEY": TEST_KEY,
    "STRIPE_WEBHOOK_SECRET": WHSEC,
    "ORDER_EVENTS_TOPIC": "projects/demo-checkout/topics/order-events",
}


def serve(
    env: Mapping[str, str | None], seconds: float = 20, target: str = "checkout_api"
) -> tuple[int | None, str, str]:
    """Start functions-framework as Cloud Run does; (exit code or None if serving, out, err).

    A variable given as None is left unset.
    """
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    full_env.update({k: v for k, v in env.items() if v is not None})
    full_env.update(PORT=str(port), PYTHONUNBUFFERED="1", FUNCTION_TARGET=target)
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "functions-framework"),
            "--target",
            target,
            "--source",
            str(ROOT / "main.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + seconds
    code = None
    served = False
    try:
        while time.monotonic() < deadline and not served:
            code = process.poll()
            if code is not None:
                break
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1)
                served = True
            except urllib.error.HTTPError:
                served = True  # any HTTP answer will do
            except OSError:
                time.sleep(0.1)
    finally:
        out, err = stop_process(process, 15)
    # A generous bound: a process that neither serves nor exits in it is a failure, not a start.
    assert code is not None or served, f"neither served nor exited in {seconds} s: {out}"
    return code, out, err


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PRICE_CURRENCY": "us-dollars"}, "PRICE_CURRENCY"),
        ({"PRICE_AMOUNT": "49"}, "PRICE_AMOUNT"),
        ({"STRIPE_API_BASE": "http://stripe.example.com"}, "STRIPE_API_BASE"),
        ({"STRIPE_TIMEOUT_SECONDS": "30", "REQUEST_TIMEOUT_SECONDS": "60s"}, "REQUEST_TIMEOUT"),
    ],
)
def test_a_misconfigured_revision_exits_before_listening_with_one_clear_line(env, variable):
    code, out, err = serve({**CLOUD_RUN, **env})
    assert code not in (None, 0), "the process started serving"
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    errors = [line for line in lines if line["severity"] in ("ERROR", "CRITICAL")]
    assert len(errors) == 1, lines
    assert errors[0]["message"].startswith("configuration error, not starting: ")
    assert variable in errors[0]["message"]
    assert TEST_KEY not in out + err


def log_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def critical_lines(out: str) -> list[dict]:
    return [line for line in log_lines(out) if line["severity"] in ("ERROR", "CRITICAL")]


def test_a_good_configuration_starts_and_serves():
    code, out, _ = serve(CLOUD_RUN)
    assert code is None, out
    assert critical_lines(out) == []


def test_without_a_webhook_secret_the_api_refuses_to_start():
    # Without a webhook a customer who pays and closes the tab is never recorded.
    code, out, err = serve({**CLOUD_RUN, "STRIPE_WEBHOOK_SECRET": None})
    assert code not in (None, 0), "the process started serving"
    [line] = critical_lines(out)
    assert line["severity"] == "CRITICAL"
    assert line["message"].startswith("configuration error, not starting: no webhook signing")
    assert "STRIPE_WEBHOOK_SECRET" in line["message"]
    assert "WEBHOOK_REQUIRED=false" in line["message"]  # the way out, said where it is needed
    assert TEST_KEY not in out + err


def test_webhook_required_false_starts_without_a_webhook_secret():
    code, out, _ = serve({**CLOUD_RUN, "STRIPE_WEBHOOK_SECRET": None, "WEBHOOK_REQUIRED": "false"})
    assert code is None, out
    assert critical_lines(out) == []


def test_without_an_order_events_topic_the_api_refuses_to_start():
    # In-process delivery after a response is exactly what Cloud Run's CPU throttling stalls.
    code, out, err = serve({**CLOUD_RUN, "ORDER_EVENTS_TOPIC": None})
    assert code not in (None, 0), "the process started serving"
    [line] = critical_lines(out)
    assert line["severity"] == "CRITICAL"
    assert line["message"].startswith("configuration error, not starting: ORDER_EVENTS_TOPIC")
    assert TEST_KEY not in out + err


def test_the_worker_needs_neither_a_webhook_secret_nor_a_topic():
    # fulfil_order receives the topic's messages: the API's requirements are not its own.
    worker = {**CLOUD_RUN, "K_SERVICE": "fulfil-order", "STRIPE_WEBHOOK_SECRET": None}
    code, out, _ = serve({**worker, "ORDER_EVENTS_TOPIC": None}, target="fulfil_order")
    assert code is None, out
    assert critical_lines(out) == []


def test_the_worker_refuses_to_start_when_deliver_order_cannot_be_imported():
    worker = {**CLOUD_RUN, "K_SERVICE": "fulfil-order", "DELIVER_ORDER": "shop.nowhere:deliver"}
    code, out, _ = serve(worker, target="fulfil_order")
    assert code not in (None, 0), "the process started serving"
    [line] = critical_lines(out)
    assert "DELIVER_ORDER" in line["message"]


PUBLISHABLE = "pk_live_" + TEST_KEY.removeprefix("sk_test_")


@pytest.mark.parametrize(
    ("env", "variable", "value"),
    [
        ({"STRIPE_SECRET_KEY": PUBLISHABLE}, "STRIPE_SECRET_KEY", PUBLISHABLE),
        ({"STRIPE_SECRET_KEY": TEST_KEY + "-x"}, "STRIPE_SECRET_KEY", TEST_KEY),
        ({"STRIPE_WEBHOOK_SECRET": WHSEC + "!"}, "STRIPE_WEBHOOK_SECRET", WHSEC),
        ({"STRIPE_WEBHOOK_SECRET": TEST_KEY}, "STRIPE_WEBHOOK_SECRET", TEST_KEY),
    ],
)
def test_a_key_or_signing_secret_of_the_wrong_shape_stops_the_revision(env, variable, value):
    # Every payment would otherwise answer 500 payment_configuration_error from a ready revision.
    code, out, err = serve({**CLOUD_RUN, **env})
    assert code not in (None, 0), "the process started serving"
    [line] = critical_lines(out)
    assert line["severity"] == "CRITICAL"
    assert line["message"].startswith("configuration error, not starting: ")
    assert variable in line["message"]
    assert value not in out + err
    assert value[:12] not in out + err  # not even the start of it


def test_locally_a_key_of_the_wrong_shape_is_the_same_loud_error_at_start():
    local = {k: v for k, v in CLOUD_RUN.items() if not k.startswith("K_")}
    code, out, err = serve({**local, "STRIPE_SECRET_KEY": PUBLISHABLE})
    assert code is None, out  # locally it serves, and says so before any request
    [line] = critical_lines(out)
    assert line["severity"] == "ERROR"
    assert line["message"].startswith("configuration error: STRIPE_SECRET_KEY")
    assert "publishable" in line["message"]
    assert PUBLISHABLE[:12] not in out + err


# secret-manager deploy mode: the key and signing secret are named, and read from Secret Manager.
NAMED = {
    **CLOUD_RUN,
    "STRIPE_SECRET_KEY": None,
    "STRIPE_WEBHOOK_SECRET": None,
    "STRIPE_SECRET_NAME": "projects/demo-project/secrets/stripe-key",
    "STRIPE_WEBHOOK_SECRET_NAME": "projects/demo-project/secrets/stripe-webhook",
}


def named(sm, key: str = TEST_KEY, signing_secret: str = WHSEC) -> dict[str, str | None]:
    """NAMED, with the Secret Manager fake holding `key` and `signing_secret`."""
    sm.add_version("demo-project", "stripe-key", key)
    sm.add_version("demo-project", "stripe-webhook", signing_secret)
    return {**NAMED, "SECRET_MANAGER_ENDPOINT": sm.endpoint}


@pytest.mark.parametrize(
    ("stored", "variable", "kind"),
    [
        ({"key": PUBLISHABLE}, "STRIPE_SECRET_NAME", "publishable"),
        ({"key": TEST_KEY + "-x"}, "STRIPE_SECRET_NAME", "malformed"),
        ({"signing_secret": WHSEC + "!"}, "STRIPE_WEBHOOK_SECRET_NAME", "malformed"),
        ({"signing_secret": TEST_KEY}, "STRIPE_WEBHOOK_SECRET_NAME", "secret API key"),
    ],
)
def test_a_named_secret_of_the_wrong_shape_stops_the_revision(sm, stored, variable, kind):
    # The secret-manager deploy mode: the value is read from Secret Manager once before the server
    # listens, so a pk_live_… stored there stops the revision as one in the environment does.
    code, out, err = serve(named(sm, **stored))
    assert code not in (None, 0), "the process started serving"
    [line] = critical_lines(out)
    assert line["severity"] == "CRITICAL"
    assert line["message"].startswith("configuration error, not starting: ")
    assert variable in line["message"]
    assert kind in line["message"]
    [value] = stored.values()
    assert value[:12] not in out + err  # not the value, not even the start of it


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("projects/demo-project/secrets/no-such-secret", "Secret Manager has no"),
        (PUBLISHABLE, "holds a publishable key"),  # the key pasted where its name goes
    ],
    ids=["no-such-secret", "a-key-as-the-name"],
)
def test_a_named_secret_that_cannot_be_read_as_named_stops_the_revision(sm, name, said):
    # Each request would answer 500 payment_configuration_error: an operator must act, not wait.
    code, out, err = serve({**named(sm), "STRIPE_SECRET_NAME": name})
    assert code not in (None, 0), "the process started serving"
    [line] = critical_lines(out)
    assert line["message"].startswith("configuration error, not starting: ")
    assert "STRIPE_SECRET_NAME" in line["message"]
    assert said in line["message"]
    assert PUBLISHABLE[:12] not in out + err


def test_named_secrets_of_the_right_shape_are_read_once_and_the_revision_starts(sm):
    code, out, _ = serve(named(sm))
    assert code is None, out
    assert critical_lines(out) == []
    assert sm.access_count == 2  # the key and the signing secret, each read once at start
    assert TEST_KEY[:12] not in out and WHSEC not in out


@pytest.mark.parametrize("failure", ["unavailable", "permission_denied"])
def test_secret_manager_failing_at_start_does_not_stop_the_revision(sm, failure):
    # Payments answer 503 payment_provider_unavailable until it recovers; a deploy is not refused.
    env = named(sm, key=PUBLISHABLE)  # unknowable while Secret Manager fails
    sm.set_failure(failure)
    code, out, err = serve(env)
    assert code is None, out
    assert critical_lines(out) == []
    warnings = [line for line in log_lines(out) if line["severity"] == "WARNING"]
    assert any("STRIPE_SECRET_NAME" in line["message"] for line in warnings), warnings
    assert PUBLISHABLE[:12] not in out + err


def test_secret_manager_unreachable_at_start_does_not_stop_the_revision(sm):
    env = {**named(sm), "SECRET_MANAGER_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    code, out, _ = serve(env)
    assert code is None, out
    assert critical_lines(out) == []
    warnings = [line for line in log_lines(out) if line["severity"] == "WARNING"]
    assert {"STRIPE_SECRET_NAME", "STRIPE_WEBHOOK_SECRET_NAME"} <= {
        variable for line in warnings for variable in NAMED if variable in line["message"]
    }, warnings


@pytest.mark.slow
def test_secret_manager_not_answering_at_start_delays_the_start_by_one_bounded_attempt(sm):
    # A hung read is abandoned after the attempt's timeout (2 s), each secret once: then it serves.
    env = named(sm)
    sm.hold()
    code, out, _ = serve(env)
    assert code is None, out
    assert critical_lines(out) == []
    warnings = [line for line in log_lines(out) if line["severity"] == "WARNING"]
    assert sum("did not answer" in line["message"] for line in warnings) == 2, warnings
    assert sm.access_count == 2  # one attempt each, no retries at start


def test_the_worker_uses_the_values_read_at_start_without_reading_them_again(sm, tmp_path):
    # The read moves from the first request to the start: cold start pays it once, not twice.
    env = named(sm)
    env.update(
        STRIPE_API_BASE=f"https://127.0.0.1:{free_port()}",  # nothing there: answered at once
        STRIPE_MAX_RETRIES="0",
        ORDER_LEDGER="memory",
    )
    with LiveServer({k: v for k, v in env.items() if v is not None}, tmp_path / "api.log") as live:
        assert sm.access_count == 2
        request = urllib.request.Request(
            live.url + "/api/checkout/embedded-session",
            data=b'{"imageId": "img_1"}',
            headers={"Content-Type": "application/json", "Origin": CLOUD_RUN["FRONTEND_URL"]},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=20)
        # The key was used: the request got as far as Stripe, which did not answer.
        assert answer.value.code == 504
        assert sm.access_count == 2
        loaded = [
            line for line in log_lines(live.logs()) if "loaded the Stripe key" in line["message"]
        ]
        assert len(loaded) == 1, live.logs()
