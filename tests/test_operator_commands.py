"""`python -m checkout reconcile | register-webhook | doctor`, run as an operator runs them: as
processes with the deployment's environment, against the Stripe emulator, Google's Firestore and
Pub/Sub emulators, and the Secret Manager fake.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import requests

from checkout.webhook_setup import ENABLED_EVENTS, PINNED_API_VERSION
from tests.firestore_emulator import Firestore
from tests.pubsub_emulator import PubSub
from tests.support import (
    CREATE,
    ROOT,
    SERVICE_VARS,
    TEST_KEY,
    WEBHOOK,
    WHSEC,
    create_session,
    free_port,
    http_json,
    log_records,
    stop_process,
)

URL = "https://shop.example/api/checkout/webhook"


def command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "checkout", *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,  # generous: a hang, not a timing
        check=False,
    )


def summary_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    [line] = [r for r in log_records(result.stdout) if r.get("message") == "checkout_reconcile"]
    return line


def stripe_api(stripe_emulator, method: str, path: str, **form: Any) -> dict[str, Any]:
    response = requests.request(
        method,
        f"{stripe_emulator.url}{path}",
        data=form if method != "GET" else None,
        params=form if method == "GET" else None,
        headers={"Authorization": f"Bearer {TEST_KEY}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()


def our_paid_session(live, stripe_emulator) -> dict[str, Any]:
    status, created = http_json("POST", f"{live.url}{CREATE}", {"imageId": "img_r"})
    assert status == 200, created
    return stripe_emulator.complete_session(created["session_id"], "paid")


@pytest.fixture
def webhook_down(stripe_emulator) -> None:
    """Stripe delivers every event to an address where nothing listens: each one fails."""
    stripe_emulator.set_webhook(f"http://127.0.0.1:{free_port()}{WEBHOOK}", WHSEC)


def test_reconcile_applies_what_the_webhook_missed_once_even_run_twice_at_once(
    live_server, stripe_emulator, base_env, firestore: Firestore, pubsub: PubSub, webhook_down
) -> None:
    env = {**firestore.env(), **pubsub.env(), "STRIPE_WEBHOOK_SECRET": WHSEC}
    live = live_server(**env)
    paid = [our_paid_session(live, stripe_emulator) for _ in range(3)]
    foreign = stripe_emulator.complete_session(create_session(stripe_emulator)["id"], "paid")
    open_one = http_json("POST", f"{live.url}{CREATE}", {})[1]
    full_env = {**base_env, **env}

    first = command(full_env, "reconcile")
    assert first.returncode == 0, first.stdout + first.stderr
    summary = summary_of(first)
    assert summary["ok"] and summary["changes_applied"] == 3 and summary["changes_published"] == 3
    assert summary["sessions_seen"] >= 4  # ours, the foreign one (the open one is not complete)
    messages = pubsub.messages(timeout=30, count=3)
    assert sorted(m.attributes["session_id"] for m in messages) == sorted(s["id"] for s in paid)
    assert foreign["id"] not in {m.attributes["session_id"] for m in messages}
    assert open_one["session_id"] not in {m.attributes["session_id"] for m in messages}

    # Two at once, then Stripe's late delivery of a completed event: nothing new.
    reconcile = [sys.executable, "-m", "checkout", "reconcile", "--days", "1"]
    process_env = {**{k: v for k, v in os.environ.items() if k not in SERVICE_VARS}, **full_env}
    both: list[subprocess.Popen[str]] = []
    try:
        for _ in range(2):
            both.append(
                subprocess.Popen(
                    reconcile,
                    cwd=ROOT,
                    env=process_env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        outputs = [process.communicate(timeout=120) for process in both]  # generous: a hang
    finally:
        for process in both:
            stop_process(process)
    for process, (out, err) in zip(both, outputs, strict=True):
        assert process.returncode == 0, out + err
        (again,) = [r for r in log_records(out) if r.get("message") == "checkout_reconcile"]
        assert (again["changes_applied"], again["changes_published"]) == (0, 0)
    stripe_emulator.set_webhook(f"{live.url}{WEBHOOK}", WHSEC)
    late = stripe_api(stripe_emulator, "GET", "/v1/events", type="checkout.session.completed")
    for event in late["data"]:
        sent = stripe_emulator.deliver_event(
            event["data"]["object"]["id"], event["type"], event_id=event["id"]
        )
        assert sent["status"] == 200, sent
    assert pubsub.messages(timeout=1.0) == []


def test_reconcile_applies_a_refund_whose_event_was_never_delivered(
    live_server, stripe_emulator, base_env, webhook_down
) -> None:
    live = live_server(STRIPE_WEBHOOK_SECRET=WHSEC)
    session = our_paid_session(live, stripe_emulator)
    stripe_api(stripe_emulator, "POST", "/v1/refunds", payment_intent=session["payment_intent"])
    result = command({**base_env, "STRIPE_WEBHOOK_SECRET": WHSEC}, "reconcile")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = summary_of(result)
    assert summary["events_seen"] >= 2  # the completed and the refunded, both undelivered
    changes = [r["change_id"] for r in log_records(result.stdout, "checkout_order_change")]
    assert sorted(changes) == [f"{session['id']}:paid", f"{session['id']}:refunded"]


def test_reconcile_exits_non_zero_when_stripe_fails(base_env) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    result = command({**base_env, "STRIPE_API_BASE": unreachable}, "reconcile")
    assert result.returncode == 1
    summary = summary_of(result)
    assert not summary["ok"] and summary["failures"] >= 1
    assert TEST_KEY not in result.stdout + result.stderr


def test_register_webhook_twice_makes_one_endpoint_and_one_secret_version(
    stripe_emulator, sm, base_env
) -> None:
    sm.add_version("demo-checkout", "stripe-webhook", "whsec_placeholder")  # the secret exists
    env = {
        **base_env,
        "GOOGLE_CLOUD_PROJECT": "demo-checkout",
        "SECRET_MANAGER_ENDPOINT": sm.endpoint,
    }
    first = command(env, "register-webhook", "--url", URL, "--secret", "stripe-webhook")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "created" in first.stdout and "whsec_" not in first.stdout
    second = command(env, "register-webhook", "--url", URL, "--secret", "stripe-webhook")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "updated" in second.stdout
    endpoints = [
        e
        for e in stripe_api(stripe_emulator, "GET", "/v1/webhook_endpoints")["data"]
        if e["url"] == URL
    ]
    assert len(endpoints) == 1
    assert sorted(endpoints[0]["enabled_events"]) == sorted(ENABLED_EVENTS)
    assert endpoints[0]["api_version"] == PINNED_API_VERSION
    versions = sm.versions("demo-checkout", "stripe-webhook")
    assert len(versions) == 2 and versions[1].startswith(b"whsec_")


def test_register_webhook_replaces_an_endpoint_of_another_api_version(
    stripe_emulator, base_env
) -> None:
    old = stripe_api(
        stripe_emulator,
        "POST",
        "/v1/webhook_endpoints",
        url=URL,
        **{"enabled_events[]": "checkout.session.completed"},
        api_version="2025-09-30.clover",
    )
    result = command(base_env, "register-webhook", "--url", URL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replaced" in result.stdout and "STRIPE_WEBHOOK_SECRET" in result.stdout
    endpoints = [
        e
        for e in stripe_api(stripe_emulator, "GET", "/v1/webhook_endpoints")["data"]
        if e["url"] == URL
    ]
    assert [e["api_version"] for e in endpoints] == [PINNED_API_VERSION]
    assert endpoints[0]["id"] != old["id"]


def test_register_webhook_refuses_a_url_that_is_not_the_webhook(base_env) -> None:
    result = command(base_env, "register-webhook", "--url", "https://shop.example/hook")
    assert result.returncode == 2
    assert "/api/checkout/webhook" in result.stderr


def doctor_lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    lines = [l for l in result.stdout.splitlines() if l[:4] in ("ok  ", "FAIL")]  # noqa: E741
    return {line[5:].split(":")[0]: line[:4].strip() for line in lines}


def test_doctor_passes_a_good_setup_and_names_each_problem(
    stripe_emulator, base_env, firestore: Firestore, pubsub: PubSub
) -> None:
    env = {**base_env, **firestore.env(), **pubsub.env(), "STRIPE_WEBHOOK_SECRET": WHSEC}
    assert command(env, "register-webhook", "--url", URL).returncode == 0
    good = command(env, "doctor", "--url", URL)
    assert good.returncode == 0, good.stdout + good.stderr
    assert set(doctor_lines(good).values()) == {"ok"}
    assert set(doctor_lines(good)) >= {"stripe key", "webhook events", "cors", "ledger"}

    (endpoint,) = [
        e
        for e in stripe_api(stripe_emulator, "GET", "/v1/webhook_endpoints")["data"]
        if e["url"] == URL
    ]
    stripe_api(
        stripe_emulator,
        "POST",
        f"/v1/webhook_endpoints/{endpoint['id']}",
        **{"enabled_events[]": "checkout.session.completed"},
    )
    missing = command(env, "doctor", "--url", URL)
    assert missing.returncode == 1
    assert doctor_lines(missing)["webhook events"] == "FAIL"
    assert "charge.refunded" in missing.stdout

    foreign = command(
        {**env, "FRONTEND_URL": "https://shop.example", "ALLOWED_ORIGINS": "https://other.example"},
        "doctor",
        "--url",
        URL,
    )
    assert foreign.returncode == 1 and doctor_lines(foreign)["cors"] == "FAIL"

    stripe_api(stripe_emulator, "DELETE", f"/v1/webhook_endpoints/{endpoint['id']}")
    stripe_api(
        stripe_emulator,
        "POST",
        "/v1/webhook_endpoints",
        url=URL,
        **{"enabled_events[]": list(ENABLED_EVENTS)},
        api_version="2025-09-30.clover",
    )
    old = command(env, "doctor", "--url", URL)
    assert old.returncode == 1 and doctor_lines(old)["webhook api version"] == "FAIL"
    assert PINNED_API_VERSION in old.stdout

    no_topic = command(
        {**env, "ORDER_EVENTS_TOPIC": f"projects/{pubsub.project}/topics/absent-topic"},
        "doctor",
        "--url",
        URL,
    )
    assert no_topic.returncode == 1 and doctor_lines(no_topic)["order topic"] == "FAIL"
    assert json.dumps(WHSEC) not in good.stdout + old.stdout
