"""Record, publish, answer: the API's order changes on Google's real Pub/Sub (and Firestore)
emulators, with live functions-framework processes.

Each change is one message (data as orders/order_change.schema.json, attributes, ordering key =
session id), published before the answer that reports it, once however many duplicates and polls
arrive on however many instances; and when Pub/Sub is away, the webhook answers 503 and nothing
is lost.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema

from devtools.eventarc_push import EventarcPush
from tests.delivery_sink import deliveries
from tests.firestore_emulator import Firestore
from tests.pubsub_emulator import SUBSCRIPTION, TOPIC, PubSub
from tests.support import (
    CREATE,
    ROOT,
    STATUS,
    WEBHOOK,
    WHSEC,
    LiveServer,
    document_ids,
    event_for,
    http_json,
    ledger_collection,
    log_records,
    read_document,
    sign,
)

SCHEMA = json.loads((ROOT / "checkout" / "orders" / "order_change.schema.json").read_text())


def post_webhook(url: str, payload: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(
        f"{url}{WEBHOOK}",
        data=payload,
        headers={"Stripe-Signature": sign(payload), "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return (
                response.status,
                json.loads(response.read()),
                {k.lower(): v for k, v in response.headers.items()},
            )
    except urllib.error.HTTPError as error:
        return (
            error.code,
            json.loads(error.read()),
            {k.lower(): v for k, v in error.headers.items()},
        )


def paid_session(server: LiveServer, stripe_emulator) -> dict[str, Any]:
    status, created = http_json("POST", f"{server.url}{CREATE}", {"imageId": "img_7"})
    assert status == 200, created
    return stripe_emulator.complete_session(created["session_id"], "paid")


def status_of(server: LiveServer, session_id: str) -> dict[str, Any]:
    status, answer = http_json("GET", f"{server.url}{STATUS}?session_id={session_id}")
    assert status == 200, answer
    return answer


def test_the_status_path_alone_publishes_the_change_before_it_answers(
    live_server, stripe_emulator, pubsub: PubSub
) -> None:
    server = live_server(**pubsub.env())
    session = paid_session(server, stripe_emulator)
    answer = status_of(server, session["id"])
    assert answer["outcome"] == "paid"
    # Already on the topic when the answer came: a pull that waits for nothing finds it.
    (message,) = pubsub.messages(timeout=30, count=1)
    assert message.attributes == {
        "type": "order.paid",
        "change_id": f"{session['id']}:paid",
        "session_id": session["id"],
    }
    assert message.ordering_key == session["id"]
    jsonschema.validate(message.data, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert message.data["metadata"] == {"imageId": "img_7"}
    assert (message.data["amount_total"], message.data["currency"]) == (200, "usd")
    for _ in range(3):
        assert status_of(server, session["id"])["outcome"] == "paid"
    assert pubsub.messages(timeout=1.0) == []  # polls publish nothing more
    # Nothing of that status request ran after its answer: its request line is its last record.
    records = log_records(server.logs())
    (first_status,) = [
        r for r in records if r.get("message", "").startswith("GET /api/checkout/session-status")
    ][:1]
    mine = [r for r in records if r.get("request_id") == first_status["request_id"]]
    assert mine[-1] is first_status
    assert [r["message"] for r in mine[:-1]] == [
        "checkout_order_change",
        "checkout_change_published",
    ]
    assert "whsec_" not in json.dumps(message.data) and "sk_" not in json.dumps(message.data)


def test_three_instances_and_twelve_duplicates_publish_one_message_and_never_wait_for_delivery(
    live_server, stripe_emulator, pubsub: PubSub, firestore: Firestore, tmp_path: Path
) -> None:
    env = {**firestore.env(), **pubsub.env(), "STRIPE_WEBHOOK_SECRET": WHSEC}
    servers = [live_server(**env) for _ in range(3)]
    # The worker, behind Eventarc, with a delivery that blocks until the test releases it (at
    # most 60 s: generous, it only bounds a broken test).
    pubsub.api.create_subscription(pubsub.project, "eventarc-fulfil", TOPIC, ordering=True)
    release = tmp_path / "release"
    worker_env = {
        **firestore.env(),
        "DELIVER_ORDER": "tests.delivery_sink:blocking_delivery",
        "DELIVERY_RELEASE": str(release),
        "DELIVERY_HOLD_SECONDS": "60",
        "DELIVERY_SINK": str(tmp_path / "sink"),
    }
    subscription = f"projects/{pubsub.project}/subscriptions/eventarc-fulfil"
    with (
        LiveServer(worker_env, tmp_path / "worker.log", target="fulfil_order") as worker,
        EventarcPush(pubsub.host, subscription, worker.url) as push,
    ):
        session = paid_session(servers[0], stripe_emulator)
        payload = event_for(session, "checkout.session.completed", "evt_dup")
        results: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        lock = threading.Lock()
        barrier = threading.Barrier(12 + 6)

        def deliver(n: int) -> None:
            barrier.wait()
            result = post_webhook(servers[n % 3].url, payload)
            with lock:
                results.append(result)

        def poll(n: int) -> None:
            barrier.wait()
            status_of(servers[n % 3], session["id"])

        threads = [threading.Thread(target=deliver, args=(n,)) for n in range(12)]
        threads += [threading.Thread(target=poll, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        answered = {status for status, _, _ in results}
        assert len(results) == 12 and 200 in answered, results
        for status, body, headers in results:
            if status != 200:  # a duplicate that found the change mid-publication: retryable
                assert (status, body["code"]) == (503, "event_in_progress"), body
                assert headers.get("retry-after")
        # Every answer came while the delivery was held: none waited for it.
        assert "done" not in [what for _, _, what, _ in deliveries(tmp_path / "sink")]
        release.touch()
        # Stripe retries the 503s: all 200 now, and still one change.
        for server in servers:
            assert post_webhook(server.url, payload)[0] == 200
        (message,) = pubsub.messages(timeout=30, count=1)
        assert message.attributes["change_id"] == f"{session['id']}:paid"
        assert (
            read_document(firestore, ledger_collection("checkout_orders"), session["id"])
            is not None
        )
        assert document_ids(firestore, ledger_collection("checkout_orders")) == [
            session["id"]
        ]  # one order
        for _ in range(600):  # until the worker finished (bounded, generous: a hang, not a time)
            if len(deliveries(tmp_path / "sink")) >= 2:
                break
            threading.Event().wait(0.05)
        push.stop()
        runs = deliveries(tmp_path / "sink")
        assert [what for _, _, what, _ in runs] == ["start", "done"]


def test_with_pubsub_away_the_webhook_answers_503_and_stripes_retry_publishes_once(
    live_server, stripe_emulator, pubsub: PubSub
) -> None:
    server = live_server(**pubsub.env(), STRIPE_WEBHOOK_SECRET=WHSEC)
    session = paid_session(server, stripe_emulator)
    payload = event_for(session, "checkout.session.completed", "evt_down")
    emulator = pubsub.emulator
    emulator.stop()
    try:
        status, body, headers = post_webhook(server.url, payload)
        assert (status, body["code"]) == (503, "order_events_unavailable"), body
        assert headers.get("retry-after")
        assert "Traceback" not in json.dumps(body)
    finally:
        emulator.start()  # restarts empty: the topic and subscription are made again
    pubsub.api.create_topic(pubsub.project, TOPIC)
    pubsub.api.create_subscription(pubsub.project, SUBSCRIPTION, TOPIC, ordering=True)
    # Stripe's retry: the change was recorded, unpublished; now it is published, once.
    for _ in range(20):  # the client reconnects with backoff: retry as Stripe would
        status, body, _ = post_webhook(server.url, payload)
        if status == 200:
            break
    assert status == 200, body
    assert post_webhook(server.url, payload)[0] == 200
    (message,) = pubsub.messages(timeout=30, count=1)
    assert message.attributes["change_id"] == f"{session['id']}:paid"
    failed = log_records(server.logs(), "POST /api/checkout/webhook 503")
    assert failed and failed[0]["code"] == "order_events_unavailable"


def test_without_a_topic_locally_changes_are_delivered_in_process_after_the_answer(
    live_server, stripe_emulator, tmp_path: Path
) -> None:
    server = live_server(
        STRIPE_WEBHOOK_SECRET=WHSEC,
        DELIVER_ORDER="tests.delivery_sink:deliver_to_sink",
        DELIVERY_SINK=str(tmp_path / "sink"),
    )
    session = paid_session(server, stripe_emulator)
    payload = event_for(session, "checkout.session.completed")
    assert post_webhook(server.url, payload)[0] == 200
    assert post_webhook(server.url, payload)[0] == 200
    assert status_of(server, session["id"])["outcome"] == "paid"
    for _ in range(600):  # until the delivery after the answer is done (bounded, generous)
        if len(deliveries(tmp_path / "sink")) == 2:
            break
        threading.Event().wait(0.05)
    assert [what for _, _, what, _ in deliveries(tmp_path / "sink")] == ["start", "done"]
    [published] = log_records(server.logs(), "checkout_change_published")
    assert published["via"] == "in-process"


def test_without_a_topic_a_failed_local_delivery_is_handed_over_again_by_the_next_call(
    live_server, stripe_emulator, tmp_path: Path
) -> None:
    server = live_server(
        STRIPE_WEBHOOK_SECRET=WHSEC,
        DELIVER_ORDER="tests.delivery_sink:fails_the_first_time",
        DELIVERY_SINK=str(tmp_path / "sink"),
    )
    session = paid_session(server, stripe_emulator)
    payload = event_for(session, "checkout.session.completed")
    assert post_webhook(server.url, payload)[0] == 200
    for _ in range(600):  # until the failed attempt is undone (bounded, generous)
        if log_records(server.logs(), "checkout_delivery_failed"):
            break
        threading.Event().wait(0.05)
    assert post_webhook(server.url, payload)[0] == 200  # Stripe's retry
    for _ in range(600):  # until the handed-over delivery is done (bounded, generous)
        if len(deliveries(tmp_path / "sink")) == 3:
            break
        threading.Event().wait(0.05)
    assert [what for _, _, what, _ in deliveries(tmp_path / "sink")] == ["start", "start", "done"]


def test_a_status_answer_whose_change_was_not_published_is_not_kept_the_next_poll_publishes(
    live_server, stripe_emulator, pubsub: PubSub
) -> None:
    server = live_server(**pubsub.env(), STRIPE_WEBHOOK_SECRET=WHSEC)
    session = paid_session(server, stripe_emulator)
    payload = event_for(session, "checkout.session.completed", "evt_unpublished")
    emulator = pubsub.emulator
    emulator.stop()
    try:
        assert post_webhook(server.url, payload)[0] == 503  # recorded, not published
        # The return page polls: the order is settled, so the ledger answers it, and its
        # unpublished change is tried again, and fails again.
        assert status_of(server, session["id"])["outcome"] == "paid"
    finally:
        emulator.start()
    pubsub.api.create_topic(pubsub.project, TOPIC)
    pubsub.api.create_subscription(pubsub.project, SUBSCRIPTION, TOPIC, ordering=True)
    # No webhook retry comes: the next polls must publish it, so that answer was not kept.
    for _ in range(20):  # the client reconnects with backoff (bounded: a hang, not a time)
        assert status_of(server, session["id"])["outcome"] == "paid"
        if log_records(server.logs(), "checkout_change_published"):
            break
    (message,) = pubsub.messages(timeout=2.0, count=1)
    assert message.attributes["change_id"] == f"{session['id']}:paid"
    assert pubsub.messages(timeout=0.5) == []
