"""`python -m checkout reconcile | register-webhook | doctor`, run as an operator runs them: as
processes with the deployment's environment, against the Stripe emulator, Google's Firestore and
Pub/Sub emulators, and the Secret Manager fake.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
import requests

from checkout.config import load_settings
from checkout.ops.command import run
from checkout.ops.reconcile import ReconcileParts, Summary, reconcile
from checkout.ops.register_webhook import ENABLED_EVENTS, PINNED_API_VERSION
from checkout.orders.ledger import firestore_ledger
from checkout.orders.session import MARKER_KEY
from checkout.runtime import Runtime
from checkout.stripe_access.gateway import LIST_PAGE
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
    ledger_collection,
    log_records,
    read_document,
    stop_process,
    wait_for_records,
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


@pytest.mark.slow
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


def worker_push_subscription(pubsub: PubSub, ack_deadline: int = 600) -> None:
    """What the deploy's trigger makes: a push subscription to the worker (an address where
    nothing listens: no message is published), with a dead-letter topic that has a subscription."""
    api = pubsub.api
    api.create_topic(pubsub.project, "checkout-orders-dead-letter")
    api.create_subscription(
        pubsub.project, "checkout-orders-dead-letter-sub", "checkout-orders-dead-letter"
    )
    api.call(
        "PUT",
        f"projects/{pubsub.project}/subscriptions/eventarc-worker",
        {
            "topic": pubsub.topic,
            "ackDeadlineSeconds": ack_deadline,
            "pushConfig": {"pushEndpoint": f"http://127.0.0.1:{free_port()}/"},
            "deadLetterPolicy": {
                "deadLetterTopic": f"projects/{pubsub.project}/topics/checkout-orders-dead-letter",
                "maxDeliveryAttempts": 10,
            },
        },
    )


def test_doctor_passes_a_good_setup_and_names_each_problem(
    stripe_emulator, base_env, firestore: Firestore, pubsub: PubSub
) -> None:
    env = {**base_env, **firestore.env(), **pubsub.env(), "STRIPE_WEBHOOK_SECRET": WHSEC}
    assert command(env, "register-webhook", "--url", URL).returncode == 0
    worker_push_subscription(pubsub)
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


# --- the reconciler: whose sessions, what price, what failed (the audit of issue 22) ------------


def paid_in_emulator(
    stripe_emulator, deployment: str | None = "local", price: str | None = None
) -> dict[str, Any]:
    """A session paid straight at the emulator: marked by `deployment` (None: unmarked), selling
    `price` (a Dashboard price) or the default $2 price_data."""
    form: dict[str, str] = {} if deployment is None else {f"metadata[{MARKER_KEY}]": deployment}
    if price is None:
        created = create_session(stripe_emulator, **form)
    else:
        form.update(
            {
                "ui_mode": "embedded_page",
                "mode": "payment",
                "line_items[0][price]": price,
                "line_items[0][quantity]": "1",
                "return_url": "http://shop.test/done?session_id={CHECKOUT_SESSION_ID}",
            }
        )
        created = stripe_api(stripe_emulator, "POST", "/v1/checkout/sessions", **form)
    return stripe_emulator.complete_session(created["id"], "paid")


@pytest.fixture
def no_webhook(stripe_emulator) -> None:
    """No endpoint at all (a deploy without a webhook): no event is sent, so none is undelivered,
    and only the session list shows a payment. (set_webhook's target outlives the reset.)"""
    stripe_emulator.set_webhook(None)


def unreachable_host() -> str:
    return f"127.0.0.1:{free_port()}"


def in_process_reconcile(env: dict[str, str], **options: Any) -> Summary:
    """`reconcile` called in this process with the deployment's settings (for its parameters);
    Google's clients read *_EMULATOR_HOST from this process's environment (the fixtures')."""
    return run(
        Runtime.from_settings(load_settings(env)),
        lambda runtime: reconcile(ReconcileParts.from_runtime(runtime), **options),
    )


def test_reconcile_in_a_cloud_run_job_refuses_to_run_without_an_explicit_deployment_id(
    base_env,
) -> None:
    # A job has no K_SERVICE: without DEPLOYMENT_ID it would look for sessions marked `local`.
    result = command({**base_env, "CLOUD_RUN_JOB": "checkout-reconcile"}, "reconcile")
    assert result.returncode == 2, result.stdout + result.stderr
    assert not log_records(result.stdout, "checkout_reconcile")
    (line,) = result.stderr.strip().splitlines()
    assert "DEPLOYMENT_ID" in line and "Cloud Run job" in line


def test_reconcile_names_its_deployment_and_counts_the_sessions_that_are_not_its_own(
    stripe_emulator, base_env, webhook_down
) -> None:
    ours = paid_in_emulator(stripe_emulator, "checkout-api")
    paid_in_emulator(stripe_emulator, None)  # another integration's
    paid_in_emulator(stripe_emulator, "other-shop")  # another deployment's
    job = {**base_env, "CLOUD_RUN_JOB": "checkout-reconcile", "DEPLOYMENT_ID": "checkout-api"}
    result = command(job, "reconcile")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = summary_of(result)
    assert summary["deployment_id"] == "checkout-api"
    assert (summary["sessions_seen"], summary["sessions_not_ours"]) == (3, 2)
    assert summary["changes_applied"] == 1
    changes = [r["change_id"] for r in log_records(result.stdout, "checkout_order_change")]
    assert changes == [f"{ours['id']}:paid"]

    # The audit's case, as the operator sees it: another id finds none of them its own.
    local = summary_of(command(base_env, "reconcile"))
    assert local["deployment_id"] == "local"
    assert (local["sessions_seen"], local["sessions_not_ours"], local["changes_applied"]) == (
        3,
        3,
        0,
    )


def test_reconcile_on_a_shared_account_asks_stripe_nothing_for_events_that_cannot_be_ours(
    stripe_emulator, base_env, webhook_down
) -> None:
    ours = paid_in_emulator(stripe_emulator, "local")
    others = [paid_in_emulator(stripe_emulator, d) for d in (None, "other-shop", None)]
    for session in [ours, *others]:  # every refund's event failed to reach an endpoint
        stripe_api(stripe_emulator, "POST", "/v1/refunds", payment_intent=session["payment_intent"])
    before = stripe_emulator.calls()
    result = command(base_env, "reconcile")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = summary_of(result)
    # Listing the window's sessions and its events: one page each, and no lookup per event.
    after = stripe_emulator.calls()
    assert after["list_sessions"] - before.get("list_sessions", 0) == 1
    assert after["total"] - before["total"] == 2
    # The three other sessions' completed events and their refunds' (charge.refunded,
    # refund.created), none of them ours.
    assert summary["events_not_ours"] == 9
    changes = [r["change_id"] for r in log_records(result.stdout, "checkout_order_change")]
    assert sorted(changes) == [f"{ours['id']}:paid", f"{ours['id']}:refunded"]


def test_reconcile_with_a_price_id_applies_a_paid_session_that_no_webhook_reported(
    stripe_emulator, base_env, no_webhook
) -> None:
    stripe_emulator.add_price("price_board", 900, "usd", "Hero Me board")
    stripe_emulator.add_price("price_sticker", 900, "usd", "Sticker")
    board = paid_in_emulator(stripe_emulator, price="price_board")
    sticker = paid_in_emulator(stripe_emulator, price="price_sticker")  # ours, not what we sell
    result = command({**base_env, "STRIPE_PRICE_ID": "price_board"}, "reconcile")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = summary_of(result)
    assert (summary["changes_applied"], summary["sessions_refused"]) == (1, 1)
    changes = [r["change_id"] for r in log_records(result.stdout, "checkout_order_change")]
    assert changes == [f"{board['id']}:paid"]
    (refused,) = log_records(result.stdout, "checkout_not_fulfilled")
    assert (refused["session_id"], refused["reason"]) == (sticker["id"], "price_mismatch")


def test_with_a_price_id_a_refund_of_an_order_the_ledger_never_saw_records_the_order_and_refund(
    live_server, stripe_emulator, webhook_down
) -> None:
    stripe_emulator.add_price("price_board", 900, "usd", "Hero Me board")
    live = live_server(STRIPE_PRICE_ID="price_board", STRIPE_WEBHOOK_SECRET=WHSEC)
    session = our_paid_session(live, stripe_emulator)  # its completed event is lost
    stripe_emulator.set_webhook(f"{live.url}{WEBHOOK}", WHSEC)
    stripe_api(stripe_emulator, "POST", "/v1/refunds", payment_intent=session["payment_intent"])
    changes = wait_for_records(live, "checkout_order_change", count=2)
    assert sorted(r["change_id"] for r in changes) == [
        f"{session['id']}:paid",
        f"{session['id']}:refunded",
    ]
    assert not log_records(live.logs(), "checkout_not_fulfilled")


@pytest.mark.slow
def test_reconcile_prints_its_one_line_and_fails_when_the_ledger_is_unreachable(
    stripe_emulator, base_env, no_webhook
) -> None:
    paid_in_emulator(stripe_emulator)
    env = {
        **base_env,
        "ORDER_LEDGER": "firestore",
        "FIRESTORE_EMULATOR_HOST": unreachable_host(),
        "GOOGLE_CLOUD_PROJECT": "demo-unreachable",
    }
    result = command(env, "reconcile")
    assert result.returncode == 1, result.stdout + result.stderr
    summary = summary_of(result)
    # the session, the unpublished list, the undelivered list
    assert not summary["ok"] and summary["failures"] == 3
    assert any("LedgerUnavailable" in failure for failure in summary["failed"])
    assert "Traceback" not in result.stdout + result.stderr


def pending_change(stripe_emulator, base_env, firestore: Firestore, pubsub: PubSub) -> str:
    """A paid session of ours that reconcile recorded but could not publish (Pub/Sub away)."""
    stripe_emulator.set_webhook(None)  # the session list alone shows it
    session = paid_in_emulator(stripe_emulator)
    env = {**base_env, **firestore.env(), **pubsub.env(PUBSUB_EMULATOR_HOST=unreachable_host())}
    result = command(env, "reconcile")
    assert result.returncode == 1, result.stdout + result.stderr
    summary = summary_of(result)
    # Recorded, but its publish failed: counted as that session's failure, not as applied; and
    # the dead letters could not be read.
    assert (summary["changes_applied"], summary["changes_published"]) == (0, 0)
    assert not summary["ok"] and summary["failures"] == 2
    assert summary["failed"][0].startswith(f"session {session['id']}: PublishFailed")
    assert summary["failed"][1].startswith("reading dead letters: SubscriptionsUnavailable")
    assert "Traceback" not in result.stdout + result.stderr
    document = read_document(firestore, ledger_collection("checkout_orders"), session["id"])
    assert document is not None and document["pending_publication"] is True
    return str(session["id"])


def test_reconcile_prints_its_one_line_and_fails_when_pubsub_is_unreachable(
    stripe_emulator, base_env, firestore: Firestore, pubsub: PubSub
) -> None:
    pending_change(stripe_emulator, base_env, firestore, pubsub)
    assert pubsub.messages(timeout=0.5) == []


def test_reconcile_publishes_a_change_left_unpublished_once_it_is_older_than_the_grace(
    stripe_emulator, base_env, firestore: Firestore, pubsub: PubSub
) -> None:
    session_id = pending_change(stripe_emulator, base_env, firestore, pubsub)
    stripe_emulator.reset()  # the session is out of the lists: only the ledger knows the change
    env = {**base_env, **firestore.env(), **pubsub.env()}

    recent = in_process_reconcile(env)  # a minute's grace: its own request may be publishing it
    assert (recent.ok, recent.changes_published) == (True, 0)
    assert pubsub.messages(timeout=0.5) == []

    aged = in_process_reconcile(env, unpublished_grace=timedelta(0))
    assert (aged.ok, aged.sessions_seen, aged.changes_published) == (True, 0, 1)
    (message,) = pubsub.messages(count=1)
    assert message.attributes["change_id"] == f"{session_id}:paid"
    document = read_document(firestore, ledger_collection("checkout_orders"), session_id)
    assert document is not None and document["pending_publication"] is False


def test_a_change_another_request_is_publishing_is_counted_in_progress_not_failed(
    stripe_emulator, base_env, firestore: Firestore, pubsub: PubSub
) -> None:
    session_id = pending_change(stripe_emulator, base_env, firestore, pubsub)
    env = {**base_env, **firestore.env(), **pubsub.env()}
    # Another request (a webhook, another reconcile) takes the change to publish it, as the
    # recorder does; its claim holds for PUBLISH_CLAIM_SECONDS (30 s), generously longer than
    # this reconcile takes to reach it.
    ledger = firestore_ledger(load_settings(env))
    claimed = asyncio.run(ledger.claim_unpublished(session_id, "another-request"))
    assert [change.change_id for change in claimed] == [f"{session_id}:paid"]

    summary = in_process_reconcile(env)
    assert (summary.ok, summary.failures, summary.changes_in_progress) == (True, 0, 1)
    assert summary.changes_published == 0
    assert pubsub.messages(timeout=0.5) == []  # the other request's to publish, not this one's


def test_reconcile_reads_every_page_and_applies_more_than_a_page_of_missed_payments_once(
    stripe_emulator, base_env, webhook_down
) -> None:
    count = LIST_PAGE + 5  # Stripe's (and the emulator's) largest page is 100
    paid = {paid_in_emulator(stripe_emulator)["id"] for _ in range(count)}
    result = command(base_env, "reconcile")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = summary_of(result)
    assert (summary["sessions_seen"], summary["events_seen"]) == (count, count)
    assert (summary["changes_applied"], summary["changes_published"]) == (count, count)
    changes = [r["change_id"] for r in log_records(result.stdout, "checkout_order_change")]
    assert sorted(changes) == sorted(f"{session_id}:paid" for session_id in paid)


# --- doctor: the deployment's own key, a disabled endpoint, an unreachable ledger -------------


def test_doctor_judges_the_return_url_by_the_key_from_secret_manager(
    stripe_emulator, sm, base_env
) -> None:
    sm.add_version("demo-checkout", "stripe-key", "sk_live_fake")  # live-shaped, not a real key
    env = {k: v for k, v in base_env.items() if k != "STRIPE_SECRET_KEY"}
    env.update(
        STRIPE_SECRET_NAME="stripe-key",
        GOOGLE_CLOUD_PROJECT="demo-checkout",
        SECRET_MANAGER_ENDPOINT=sm.endpoint,
        FRONTEND_URL="http://shop.example",
    )
    result = command(env, "doctor", "--url", URL)
    assert result.returncode == 1
    assert doctor_lines(result)["return url"] == "FAIL"
    assert "must be https in live mode" in result.stdout
    assert "sk_live_51" not in result.stdout + result.stderr


@pytest.mark.slow
def test_doctor_names_a_disabled_endpoint_and_an_unreachable_ledger(
    stripe_emulator, base_env
) -> None:
    env = {**base_env, "STRIPE_WEBHOOK_SECRET": WHSEC}
    assert command(env, "register-webhook", "--url", URL).returncode == 0
    (endpoint,) = stripe_api(stripe_emulator, "GET", "/v1/webhook_endpoints")["data"]
    stripe_api(stripe_emulator, "POST", f"/v1/webhook_endpoints/{endpoint['id']}", disabled="true")
    disabled = command(env, "doctor", "--url", URL)
    assert disabled.returncode == 1
    assert doctor_lines(disabled)["webhook enabled"] == "FAIL"
    assert "register-webhook" in disabled.stdout  # the fix: it re-enables the endpoint

    no_ledger = {
        **env,
        "ORDER_LEDGER": "firestore",
        "FIRESTORE_EMULATOR_HOST": unreachable_host(),
        "GOOGLE_CLOUD_PROJECT": "demo-unreachable",
    }
    assert command(no_ledger, "register-webhook", "--url", URL).returncode == 0
    unreachable = command(no_ledger, "doctor", "--url", URL)
    assert unreachable.returncode == 1
    lines = doctor_lines(unreachable)
    assert lines["ledger"] == "FAIL" and lines["webhook enabled"] == "ok"


# --- register-webhook: a signing secret is never lost --------------------------------------


def register_env(base_env, sm) -> dict[str, str]:
    return {
        **base_env,
        "GOOGLE_CLOUD_PROJECT": "demo-checkout",
        "SECRET_MANAGER_ENDPOINT": sm.endpoint,
    }


def endpoints_for(stripe_emulator, url: str) -> list[dict[str, Any]]:
    listed = stripe_api(stripe_emulator, "GET", "/v1/webhook_endpoints")["data"]
    return [endpoint for endpoint in listed if endpoint["url"] == url]


def test_register_webhook_makes_no_endpoint_when_the_secret_does_not_exist(
    stripe_emulator, sm, base_env
) -> None:
    env = register_env(base_env, sm)
    result = command(env, "register-webhook", "--url", URL, "--secret", "stripe-webhook")
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "projects/demo-checkout/secrets/stripe-webhook does not exist" in line
    assert endpoints_for(stripe_emulator, URL) == []


def test_register_webhook_deletes_the_new_endpoint_when_its_secret_cannot_be_stored(
    stripe_emulator, sm, base_env
) -> None:
    sm.add_version("demo-checkout", "stripe-webhook", "whsec_placeholder")
    sm.set_failure("permission_denied")  # may not read the secret, nor add a version
    env = register_env(base_env, sm)
    failed = command(env, "register-webhook", "--url", URL, "--secret", "stripe-webhook")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    (line,) = failed.stderr.strip().splitlines()
    assert "deleted again" in line and "whsec_" not in line
    assert endpoints_for(stripe_emulator, URL) == []

    sm.set_failure(None)  # access fixed: a re-run starts clean and the secret is kept
    again = command(env, "register-webhook", "--url", URL, "--secret", "stripe-webhook")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "created" in again.stdout
    assert len(endpoints_for(stripe_emulator, URL)) == 1
    versions = sm.versions("demo-checkout", "stripe-webhook")
    assert len(versions) == 2 and versions[1].startswith(b"whsec_")
