"""Delivered, not just published (issue 28): every paid order reaches DELIVER_ORDER, once, in a
state it can trust, on Google's Firestore and Pub/Sub emulators with `fulfil_order` processes
behind the local Eventarc push (`devtools/eventarc_push.py`).

Times are compressed with settings (5 delivery attempts, a lease of a second, a grace of 0),
never with sleeps: each step waits for what it needs (a line in the delivery sink, a message).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkout.config import load_settings
from checkout.ops.command import run
from checkout.ops.doctor import Check, DoctorParts, doctor
from checkout.ops.reconcile import ReconcileParts, Summary, reconcile
from checkout.orders.delivery import DeliveryFailed, DeliveryInProgress, Worker
from checkout.orders.ledger.memory import MemoryLedger
from checkout.orders.model import Change, ChargeFact, DisputeFact, Fact, OrderState, session_fact
from checkout.orders.recorder import Recorder
from checkout.runtime import Runtime
from devtools.eventarc_push import EventarcPush, cloud_event_request
from devtools.pubsub_emulator import subscription_path, topic_path
from tests.delivery_sink import access_of, deliveries
from tests.firestore_emulator import Firestore
from tests.pubsub_emulator import PubSub
from tests.support import (
    CREATE,
    ROOT,
    SERVICE_VARS,
    STATUS,
    LiveServer,
    a_session,
    free_port,
    http_json,
    log_records,
)

WORKER_SUB = "checkout-orders-worker"
DEAD_TOPIC = "checkout-orders-dead-letter"
DEAD_SUB = "checkout-orders-dead-letter-sub"
ATTEMPTS = 5  # Pub/Sub's minimum


def until(condition: Any, what: str, seconds: float = 60.0) -> None:
    """Wait for `condition()`; the bound is generous, it only ends a broken test."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


def worker_subscription(pubsub: PubSub, ack_deadline: int = 10) -> None:
    """What the deploy makes: an unordered subscription for the worker, with a dead-letter
    policy whose topic has a subscription of its own."""
    api = pubsub.api
    api.create_topic(pubsub.project, DEAD_TOPIC)
    api.create_subscription(pubsub.project, DEAD_SUB, DEAD_TOPIC, ordering=False)
    api.create_subscription(
        pubsub.project,
        WORKER_SUB,
        pubsub.topic_id,
        ordering=False,
        dead_letter_topic=DEAD_TOPIC,
        max_delivery_attempts=ATTEMPTS,
        ack_deadline=ack_deadline,
    )


def service_env(base_env: dict[str, str], firestore: Firestore, pubsub: PubSub) -> dict[str, str]:
    return {**base_env, **firestore.env(), **pubsub.env()}


def in_service(env: dict[str, str], work: Any) -> Any:
    """Run `work(runtime)` in this process with the deployment's settings (as a job would)."""
    return run(Runtime.from_settings(load_settings(env)), work)


def record(env: dict[str, str], session_id: str, *facts: Fact) -> None:
    """Record facts about one order, as the webhook does: each change is published."""

    async def work(runtime: Runtime) -> None:
        for fact in facts:
            await runtime.recorder.record(session_id, fact)

    in_service(env, work)


def paid(session_id: str) -> Fact:
    return session_fact(a_session(session_id=session_id), "pi_" + session_id[-8:])


def refunded(session_id: str) -> Fact:
    return ChargeFact("pi_" + session_id[-8:], 200, True, "2026-12-07T10:00:00Z")


def delivery_record(env: dict[str, str], change_id: str) -> dict[str, Any] | None:
    return in_service(env, lambda runtime: runtime.ledger.delivery(change_id))


def operator_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m checkout ...` as an operator (or the hourly job) runs it."""
    full = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    return subprocess.run(
        [sys.executable, "-m", "checkout", *args],
        cwd=ROOT,
        env={**full, **env},
        capture_output=True,
        text=True,
        timeout=120,  # generous: a hang, not a timing
        check=False,
    )


def doctor_checks(env: dict[str, str]) -> dict[str, Check]:
    def checks(runtime: Runtime) -> Any:
        return doctor(DoctorParts.from_runtime(runtime), "https://shop.example/")

    return {c.name: c for c in in_service(env, checks)}


def run_reconcile(env: dict[str, str], **options: Any) -> Summary:
    async def work(runtime: Runtime) -> Summary:
        return await reconcile(ReconcileParts.from_runtime(runtime), days=1, **options)

    return in_service(env, work)


def push(pubsub: PubSub, url: str) -> int:
    """Push what the worker's subscription holds until it is empty: how many POSTs."""
    pusher = EventarcPush(pubsub.host, subscription_path(pubsub.project, WORKER_SUB), url)
    pushed = 0
    while batch := pusher.run_once():
        pushed += len(batch)
    return pushed


def dead_letters(pubsub: PubSub) -> list[dict[str, Any]]:
    """The dead-letter subscription's messages, pulled and put back (nacked)."""
    found = pubsub.api.pull(pubsub.project, DEAD_SUB)
    if found:
        pubsub.api.nack(pubsub.project, DEAD_SUB, [m["ackId"] for m in found])
    return found


@contextlib.contextmanager
def workers(
    firestore: Firestore, pubsub: PubSub, tmp_path: Path, count: int = 1, **env: str
) -> Iterator[list[LiveServer]]:
    """`count` fulfil_order processes, set up as the deploy sets them (the ledger and the topic)."""
    full = {**firestore.env(), **pubsub.env(), "DELIVERY_SINK": str(tmp_path / "sink"), **env}
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                LiveServer(full, tmp_path / f"worker-{n}.log", target="fulfil_order")
            )
            for n in range(count)
        ]


def runs(tmp_path: Path, what: str = "done") -> list[str]:
    return [change for _, change, step, _ in deliveries(tmp_path / "sink") if step == what]


@dataclass
class HeldDelivery:
    """A paid change's delivery running on a worker, held until `release` exists (then it fails)."""

    env: dict[str, str]
    worker: LiveServer
    first: dict[str, Any]  # the message pulled and pushed by hand
    release: Path
    running: threading.Thread
    answers: list[int]  # the worker's status for it, once it answers


@contextlib.contextmanager
def held_paid_delivery(
    base_env: dict[str, str],
    firestore: Firestore,
    pubsub: PubSub,
    tmp_path: Path,
    session: str,
    **worker_env: str,
) -> Iterator[HeldDelivery]:
    worker_subscription(pubsub)
    env = service_env(base_env, firestore, pubsub)
    release = tmp_path / "release"
    api, project = pubsub.api, pubsub.project
    subscription = subscription_path(project, WORKER_SUB)
    with workers(
        firestore,
        pubsub,
        tmp_path,
        1,
        DELIVER_ORDER="tests.delivery_sink:access_template",
        DELIVERY_RELEASE=str(release),
        **worker_env,
    ) as (worker,):
        record(env, session, paid(session))
        (first,) = api.pull(project, WORKER_SUB)
        headers, body = cloud_event_request(first["message"], pubsub.topic, subscription)
        answers: list[int] = []
        running = threading.Thread(target=lambda: answers.append(post(worker.url, headers, body)))
        running.start()
        until(lambda: runs(tmp_path, "start"), "the paid delivery started")
        yield HeldDelivery(env, worker, first, release, running, answers)


# --- the four reproductions -------------------------------------------------------------------


@pytest.mark.firestore
def test_a_dead_lettered_change_is_found_by_reconcile_and_delivered_once(
    base_env, firestore: Firestore, pubsub: PubSub, tmp_path: Path
) -> None:
    worker_subscription(pubsub)
    failing = tmp_path / "downstream-down"
    failing.touch()
    env = service_env(base_env, firestore, pubsub)
    session = "cs_test_deadletter1"
    with workers(
        firestore,
        pubsub,
        tmp_path,
        DELIVER_ORDER="tests.delivery_sink:fails_while_marked",
        DELIVERY_FAILING=str(failing),
    ) as (worker,):
        record(env, session, paid(session))
        assert push(pubsub, worker.url) == ATTEMPTS  # every attempt failed: dead-lettered
        assert runs(tmp_path, "fail") == [f"{session}:paid"] * ATTEMPTS
        record_ = delivery_record(env, f"{session}:paid")
        assert record_ is not None and record_["delivered_at"] is None
        checks = doctor_checks(env)
        assert not checks["dead letters"].ok and "1 waiting" in checks["dead letters"].detail
        assert "python -m checkout reconcile" in checks["dead letters"].detail
        failing.unlink()  # the downstream recovers

        summary = run_reconcile(env, undelivered_grace=timedelta(0))
        assert summary.changes_undelivered == 1 and summary.changes_redelivered == 1
        assert summary.dead_letters["count"] == 1
        assert summary.undelivered == [f"{session}:paid"]
        push(pubsub, worker.url)
        assert runs(tmp_path) == [f"{session}:paid"]
        assert dead_letters(pubsub) == []  # the dead letter was acknowledged once redelivered

        again = run_reconcile(env, undelivered_grace=timedelta(0))
        assert (again.changes_undelivered, again.changes_redelivered) == (0, 0)
        assert again.dead_letters["count"] == 0 and again.ok
        assert push(pubsub, worker.url) == 0
        assert runs(tmp_path) == [f"{session}:paid"]
        assert doctor_checks(env)["dead letters"].ok


@pytest.mark.firestore
def test_doctor_names_a_short_ack_deadline_a_dead_letter_topic_nobody_reads_and_undelivered_changes(
    base_env, firestore: Firestore, pubsub: PubSub
) -> None:
    api, project = pubsub.api, pubsub.project
    api.create_topic(project, DEAD_TOPIC)  # and no subscription: it keeps nothing
    api.call(
        "PUT",
        subscription_path(project, "eventarc-worker"),
        {
            "topic": pubsub.topic,
            "ackDeadlineSeconds": 10,
            "pushConfig": {"pushEndpoint": f"http://127.0.0.1:{free_port()}/"},
            "deadLetterPolicy": {
                "deadLetterTopic": topic_path(project, DEAD_TOPIC),
                "maxDeliveryAttempts": 10,
            },
        },
    )
    env = {**service_env(base_env, firestore, pubsub), "UNDELIVERED_GRACE_SECONDS": "0"}
    session = "cs_test_doctor1"
    record(env, session, paid(session))
    checks = doctor_checks(env)
    assert checks["worker subscription"].ok
    policy, deadline = checks["dead-letter policy"], checks["ack deadline"]
    assert not policy.ok and "gcloud pubsub subscriptions create" in policy.detail
    assert not deadline.ok and "--ack-deadline=600" in deadline.detail
    undelivered = checks["undelivered changes"]
    assert not undelivered.ok and f"{session}:paid" in undelivered.detail
    assert "python -m checkout reconcile" in undelivered.detail


@pytest.mark.firestore
def test_a_topic_without_a_subscription_fails_doctor_and_its_change_is_delivered_once_one_exists(
    base_env, firestore: Firestore, pubsub: PubSub, tmp_path: Path
) -> None:
    lonely = "lonely-orders"
    pubsub.api.create_topic(pubsub.project, lonely)
    env = {**service_env(base_env, firestore, pubsub), "ORDER_EVENTS_TOPIC": lonely}
    env["ORDER_EVENTS_TOPIC"] = topic_path(pubsub.project, lonely)
    session = "cs_test_lonely1"
    record(env, session, paid(session))  # published to a topic nobody reads: lost

    checks = doctor_checks(env)
    assert not checks["worker subscription"].ok
    assert "eventarc triggers create" in checks["worker subscription"].detail
    summary = run_reconcile(env, undelivered_grace=timedelta(0))
    assert summary.changes_undelivered == 1 and summary.undelivered == [f"{session}:paid"]
    assert summary.ok  # undelivered, not yet for long: redelivered, no alert
    # The hourly job, once it has been undelivered past the alert bound: one ERROR record naming
    # the change, and a non-zero exit.
    job = operator_command(
        {**env, "UNDELIVERED_GRACE_SECONDS": "0", "UNDELIVERED_ALERT_SECONDS": "0"}, "reconcile"
    )
    assert job.returncode == 1, job.stdout + job.stderr
    (alert,) = log_records(job.stdout, "checkout_change_undelivered")
    assert alert["severity"] == "ERROR" and alert["change_id"] == f"{session}:paid"
    (line,) = log_records(job.stdout, "checkout_reconcile")
    assert (line["changes_overdue"], line["ok"]) == (1, False)

    pubsub.api.create_subscription(pubsub.project, WORKER_SUB, lonely, ordering=False)
    with workers(
        firestore, pubsub, tmp_path, DELIVER_ORDER="tests.delivery_sink:deliver_to_sink"
    ) as (worker,):
        summary = run_reconcile(env, undelivered_grace=timedelta(0))
        assert summary.changes_redelivered == 1
        pusher = EventarcPush(
            pubsub.host, subscription_path(pubsub.project, WORKER_SUB), worker.url
        )
        while pusher.run_once():
            pass
        assert runs(tmp_path) == [f"{session}:paid"]
        assert run_reconcile(env, undelivered_grace=timedelta(0)).changes_undelivered == 0


@pytest.mark.firestore
def test_redeliveries_of_a_change_in_flight_never_dead_letter_it_and_a_failure_is_retried(
    base_env, firestore: Firestore, pubsub: PubSub, tmp_path: Path
) -> None:
    session = "cs_test_inflight1"
    api, project = pubsub.api, pubsub.project
    with held_paid_delivery(
        base_env, firestore, pubsub, tmp_path, session, LEDGER_LEASE_SECONDS="1"
    ) as held:
        env, worker, first, release = held.env, held.worker, held.first, held.release
        # Its ack deadline passes while it runs: Pub/Sub redelivers, again and again.
        api.nack(project, WORKER_SUB, [first["ackId"]])
        pushed = push(pubsub, worker.url)
        assert pushed >= 1
        assert dead_letters(pubsub) == []  # no attempt of the change in flight was used up
        release.touch()  # the first run then fails
        held.running.join(60)
        assert held.answers and held.answers[0] >= 500
        until(lambda: push(pubsub, worker.url) == 0 and bool(runs(tmp_path)), "a retry ran")
        assert runs(tmp_path) == [f"{session}:paid"]
        assert runs(tmp_path, "fail") == [f"{session}:paid"]
        assert dead_letters(pubsub) == []
        delivered = delivery_record(env, f"{session}:paid")
        assert delivered is not None and delivered["delivered_at"] is not None


@pytest.mark.firestore
def test_a_refund_during_a_slow_failing_paid_delivery_leaves_access_revoked(
    base_env, firestore: Firestore, pubsub: PubSub, tmp_path: Path
) -> None:
    session = "cs_test_stale1"
    api, project = pubsub.api, pubsub.project
    with held_paid_delivery(base_env, firestore, pubsub, tmp_path, session) as held:
        env, worker, first, release = held.env, held.worker, held.first, held.release
        record(env, session, refunded(session))  # a full refund while the paid run is slow
        push(pubsub, worker.url)  # the refunded change
        release.touch()  # the paid run fails once
        held.running.join(60)
        api.nack(project, WORKER_SUB, [first["ackId"]])  # Pub/Sub retries it
        until(lambda: push(pubsub, worker.url) == 0 and len(set(runs(tmp_path))) == 2, "both ran")
        assert sorted(set(runs(tmp_path))) == [f"{session}:paid", f"{session}:refunded"]
        assert access_of(tmp_path / "sink", session) == "revoked"


@pytest.mark.firestore
def test_an_async_delivery_blocking_three_leases_on_two_workers_runs_once(
    firestore: Firestore, pubsub: PubSub, tmp_path: Path, base_env
) -> None:
    worker_subscription(pubsub)
    env = service_env(base_env, firestore, pubsub)
    session = "cs_test_blocking1"
    subscription = subscription_path(pubsub.project, WORKER_SUB)
    with workers(
        firestore,
        pubsub,
        tmp_path,
        2,
        DELIVER_ORDER="tests.delivery_sink:blocks_the_loop",
        DELIVERY_HOLD_SECONDS="3",
        LEDGER_LEASE_SECONDS="1",
    ) as servers:
        record(env, session, paid(session))
        (message,) = pubsub.api.pull(pubsub.project, WORKER_SUB)
        headers, body = cloud_event_request(message["message"], pubsub.topic, subscription)
        answers: dict[int, int] = {}
        first = threading.Thread(
            target=lambda: answers.update({0: post(servers[0].url, headers, body)})
        )
        first.start()
        until(lambda: runs(tmp_path, "start"), "the first run started")
        claimed = delivery_record(env, f"{session}:paid")
        assert claimed is not None and claimed["claim"] is not None
        expiry = claimed["claim"]["expires_at"]
        until(lambda: datetime.now(UTC) > expiry + timedelta(seconds=0.5), "the first lease ended")
        answers[1] = post(servers[1].url, headers, body)  # the redelivery, to the other worker
        first.join(60)
        assert answers[0] == 200 and answers[1] == 200
        assert len(runs(tmp_path, "start")) == 1
        logs = servers[0].logs() + servers[1].logs()
        assert log_records(logs, "checkout_delivered_twice") == []
        assert log_records(logs, "checkout_delivery_taken_over") == []


def post(url: str, headers: dict[str, str], body: bytes) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


# --- the property: whatever order the changes arrive in, access ends as the outcome says --------

FACTS = ("paid", "refunded", "disputed", "dispute_won")


def fact_named(name: str, session_id: str) -> Fact:
    intent = "pi_" + session_id[-8:]
    if name == "paid":
        return paid(session_id)
    if name == "refunded":
        return refunded(session_id)
    status = "needs_response" if name == "disputed" else "won"
    return DisputeFact("dp_1", intent, 200, status, None, "2026-12-07T10:00:00Z")


class Topic:
    """The order topic as the worker sees it: messages waiting, each delivered at least once.
    A Publisher (orders/publisher.py's protocol) for the Recorder and the worker's hand-on."""

    name = "pool"
    deadline = 0.0

    def __init__(self) -> None:
        self.waiting: list[Change] = []

    async def publish(
        self, change: Change, start_by: float | None = None, traceparent: str | None = None
    ) -> None:
        self.waiting.append(change)

    async def check(self) -> None:
        return None

    def close(self) -> None:
        return None


WEBHOOKS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


def docs_template(access: dict[str, bool]) -> Any:
    """The `deliver_order` of docs/webhooks.md, run as written, with `grant`, `revoke` and
    `alert` that set `access` (what the customer has)."""
    blocks = re.findall(r"```python\n(.*?)```", WEBHOOKS_PAGE.read_text(), re.DOTALL)
    (source,) = [b for b in blocks if "async def deliver_order(change: Change, state" in b]

    async def grant(session_id: str, image_id: str | None) -> None:
        access[session_id] = True

    async def revoke(session_id: str) -> None:
        access[session_id] = False

    async def alert(session_id: str, due: str | None) -> None:
        return None

    namespace: dict[str, Any] = {"grant": grant, "revoke": revoke, "alert": alert}
    exec(compile(source, str(WEBHOOKS_PAGE), "exec"), namespace)  # our own docs, run as written
    return namespace["deliver_order"]


class Template:
    """docs/webhooks.md's template, whose runs the test holds open and ends, each with success
    or failure."""

    def __init__(self) -> None:
        self.access: dict[str, bool] = {}
        self.template = docs_template(self.access)
        self.gates: list[tuple[asyncio.Event, list[bool]]] = []
        self.succeeded: list[str] = []
        self.hold = True

    async def __call__(self, change: Change, state: OrderState) -> None:
        if self.hold:
            gate, fail = asyncio.Event(), [False]
            self.gates.append((gate, fail))
            await gate.wait()
            if fail[0]:
                raise RuntimeError("the downstream failed")
        await self.template(change, state)
        self.succeeded.append(change.change_id)


steps = st.lists(
    st.one_of(
        st.tuples(st.just("fact"), st.sampled_from(FACTS)),
        st.tuples(st.just("start"), st.integers(0, 7)),
        st.tuples(st.just("duplicate"), st.integers(0, 7)),
        st.tuples(st.just("finish"), st.integers(0, 7), st.booleans()),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps)
def test_whatever_order_changes_arrive_in_the_last_run_leaves_access_as_the_final_outcome(
    steps: list[tuple[Any, ...]],
) -> None:
    async def scenario() -> None:
        session = "cs_test_property1"
        ledger = MemoryLedger(1000)
        topic = Topic()
        template = Template()
        worker = Worker(ledger, template, lease_seconds=60)
        worker.redeliver = topic.publish
        recorder = Recorder(ledger, topic)
        running: list[tuple[asyncio.Task[bool], Change, tuple[asyncio.Event, list[bool]]]] = []

        async def settle(task: asyncio.Task[bool], change: Change) -> None:
            try:
                await task
            except DeliveryFailed:
                topic.waiting.append(change)  # non-2xx: Pub/Sub delivers it again
            except DeliveryInProgress:
                pass  # acknowledged: queued behind the run that holds the order

        async def start(change: Change) -> None:
            gates = len(template.gates)
            task = asyncio.ensure_future(worker.deliver(change))
            for _ in range(200):  # until it runs the template, or answered without running
                if task.done() or len(template.gates) > gates:
                    break
                await asyncio.sleep(0)
            if len(template.gates) > gates:
                running.append((task, change, template.gates[-1]))
            else:
                await settle(task, change)

        recorded = False
        for step in steps:
            if step[0] == "fact":
                if not recorded:
                    # A refund or dispute of an order not recorded yet: the webhook records the
                    # session first (checkout/orders/intake.py), then the fact.
                    await recorder.record(session, fact_named("paid", session))
                    recorded = True
                await recorder.record(session, fact_named(step[1], session))
            elif step[0] == "start" and topic.waiting:
                await start(topic.waiting.pop(step[1] % len(topic.waiting)))
            elif step[0] == "duplicate" and topic.waiting:
                topic.waiting.append(topic.waiting[step[1] % len(topic.waiting)])
            elif step[0] == "finish" and running:
                task, change, (gate, fail) = running.pop(step[1] % len(running))
                fail[0] = step[2]
                gate.set()
                await settle(task, change)
        # Then everything ends well: the runs in flight succeed, and every message is delivered
        # until none is left (the hourly audit included).
        template.hold = False
        for task, change, (gate, _) in running:
            gate.set()
            await settle(task, change)
        while True:
            while topic.waiting:
                await start(topic.waiting.pop(0))
            later = datetime.now(UTC) + timedelta(days=1)
            audit = [Change.from_data(r["change"]) for r in await ledger.undelivered(later)]
            if not audit:
                break
            topic.waiting += audit
        order = await ledger.order(session)
        worker.close()
        if order is None:
            assert template.access == {}
            return
        assert template.access[session] == (order.outcome == "paid"), (order.outcome, steps)
        made = sorted(f"{session}:{key}" for key in order.changes)
        assert sorted(template.succeeded) == made  # each change succeeded exactly once

    asyncio.run(scenario())


# --- one order, one trace ---------------------------------------------------------------------

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.firestore
@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01"),
        ("X-Cloud-Trace-Context", f"{TRACE_ID}/12345;o=1"),
    ],
)
def test_the_request_that_made_a_change_and_its_delivery_share_one_trace(
    live_server,
    stripe_emulator,
    firestore: Firestore,
    pubsub: PubSub,
    tmp_path: Path,
    header,
    value,
) -> None:
    worker_subscription(pubsub)
    api = live_server(**firestore.env(), **pubsub.env())
    status, created = http_json("POST", f"{api.url}{CREATE}", {"imageId": "img_t"})
    assert status == 200, created
    session = stripe_emulator.complete_session(created["session_id"], "paid")["id"]
    request = urllib.request.Request(f"{api.url}{STATUS}?session_id={session}")
    request.add_header(header, value)
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert json.loads(answer.read())["outcome"] == "paid"  # recorded and published
    trace = f"projects/{firestore.project}/traces/{TRACE_ID}"
    api_records = [r for r in log_records(api.logs()) if r.get("change_id") == f"{session}:paid"]
    assert api_records and {r.get("logging.googleapis.com/trace") for r in api_records} == {trace}
    with workers(firestore, pubsub, tmp_path) as (worker,):
        assert push(pubsub, worker.url) == 1
        mine = [r for r in log_records(worker.logs()) if r.get("change_id") == f"{session}:paid"]
    assert {r["message"] for r in mine} >= {"checkout_order_delivered", "fulfil_order delivered"}
    assert {r.get("logging.googleapis.com/trace") for r in mine} == {trace}
