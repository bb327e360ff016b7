"""The order ledger: one contract for memory and Firestore, then what only Firestore can show.

Firestore tests run against Google's real emulator (tests/firestore_emulator.py), with a fresh
project id per test, and several OS processes where the claim must hold across instances.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from checkout.config import ConfigError, load_settings
from checkout.ledger import (
    EVENT_RETENTION_DAYS,
    FulfilmentInProgress,
    Ledger,
    LedgerUnavailable,
    ledger_from_settings,
)
from checkout.ledger.memory import MemoryLedger
from tests.firestore_emulator import Firestore
from tests.support import (
    ROOT,
    CapturedLogs,
    a_session,
    read_document,
    service_account_file,
)

COMPLETED = "checkout.session.completed"
ORDER_FIELDS = {
    "status",
    "payment_status",
    "payment_failed",
    "imageId",
    "amount_total",
    "currency",
    "livemode",
    "final",
    "created_at",
    "updated_at",
    "fulfilled_at",
    "event_ids",
}


class Deliveries:
    """A `deliver` callback that counts its calls, and can fail or block on request."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail_with: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with


MakeLedger = Callable[..., Ledger]


@pytest.fixture(params=["memory", pytest.param("firestore", marks=pytest.mark.firestore)])
def make_ledger(request: pytest.FixtureRequest) -> MakeLedger:
    """Build a ledger of each kind; Firestore ones share this test's project on the emulator."""
    if request.param == "memory":
        return lambda claim_wait_seconds=5.0: MemoryLedger(100, claim_wait_seconds)
    firestore: Firestore = request.getfixturevalue("firestore")
    return lambda claim_wait_seconds=5.0: firestore_ledger(firestore, claim_wait_seconds)


def firestore_ledger(firestore: Firestore, claim_wait_seconds: float = 5.0, lease: float = 30):
    from checkout.ledger.firestore import FirestoreLedger

    return FirestoreLedger(
        project=firestore.project,
        database="(default)",
        lease_seconds=lease,
        claim_wait_seconds=claim_wait_seconds,
    )


def run(coroutine: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coroutine

    return asyncio.run(main())


# -- choosing the ledger ------------------------------------------------------------------------


def test_memory_is_the_default_and_leaves_firestore_unimported() -> None:
    code = (
        "import sys\n"
        "from checkout.config import load_settings\n"
        "from checkout.ledger import ledger_from_settings\n"
        "ledger = ledger_from_settings(load_settings({}))\n"
        "print(ledger.name, any(m.startswith('google.cloud.firestore') for m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["memory", "False"]


def test_the_firestore_ledger_takes_project_database_and_lease_from_settings() -> None:
    ledger = ledger_from_settings(
        load_settings(
            {
                "ORDER_LEDGER": "firestore",
                "GOOGLE_CLOUD_PROJECT": "demo-checkout",
                "FIRESTORE_DATABASE": "orders-eu",
            }
        )
    )
    from checkout.ledger.firestore import FirestoreLedger

    assert isinstance(ledger, FirestoreLedger)
    assert (ledger.name, ledger.project, ledger.database) == (
        "firestore",
        "demo-checkout",
        "orders-eu",
    )


def test_a_request_timeout_too_short_for_the_ledgers_worst_case_is_a_configuration_error() -> None:
    from checkout.ledger.firestore import ledger_budget_seconds

    env = {"ORDER_LEDGER": "firestore", "GOOGLE_CLOUD_PROJECT": "demo-checkout"}
    too_short = ledger_budget_seconds() + 4  # the margin is 5 s
    with pytest.raises(ConfigError, match="REQUEST_TIMEOUT_SECONDS"):
        ledger_from_settings(load_settings({**env, "REQUEST_TIMEOUT_SECONDS": f"{too_short}"}))
    ledger_from_settings(load_settings({**env, "REQUEST_TIMEOUT_SECONDS": "60s"}))  # the deploy's


def test_firestore_on_the_emulator_without_a_project_is_a_configuration_error() -> None:
    settings = load_settings({"ORDER_LEDGER": "firestore", "FIRESTORE_EMULATOR_HOST": "x:1"})
    with pytest.raises(ConfigError, match="GOOGLE_CLOUD_PROJECT"):
        ledger_from_settings(settings)


def test_firestore_without_any_project_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Credentials that cannot load: google.auth.default() gives up at once, with no network.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match=r"ORDER_LEDGER=firestore .* GOOGLE_CLOUD_PROJECT"):
        ledger_from_settings(load_settings({"ORDER_LEDGER": "firestore"}))


def test_firestore_takes_the_project_of_the_default_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = service_account_file(tmp_path, "adc-project")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
    ledger = ledger_from_settings(load_settings({"ORDER_LEDGER": "firestore"}))
    from checkout.ledger.firestore import FirestoreLedger

    assert isinstance(ledger, FirestoreLedger)
    assert ledger.project == "adc-project"


# -- the contract, for both ledgers -------------------------------------------------------------


def test_a_paid_session_is_delivered_once_and_recorded(make_ledger: MakeLedger) -> None:
    async def scenario() -> None:
        ledger, deliver = make_ledger(), Deliveries()
        assert await ledger.fulfil_once(a_session(), deliver, event_id="evt_1") is True
        assert await ledger.fulfil_once(a_session(), deliver, event_id="evt_2") is False
        assert await ledger.fulfil_once(a_session(), deliver) is False
        assert deliver.calls == 1
        order = await ledger.order("cs_test_a")
        assert order["fulfilled_at"] is not None
        assert order["event_ids"] == ["evt_1", "evt_2"]
        assert (order["status"], order["payment_status"], order["imageId"]) == (
            "complete",
            "paid",
            "img_1",
        )
        assert (order["amount_total"], order["currency"], order["livemode"]) == (200, "usd", False)
        assert order["created_at"] <= order["fulfilled_at"] <= order["updated_at"]

    run(scenario())


def test_the_order_record_holds_no_customer_details_or_secrets(make_ledger: MakeLedger) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        await ledger.fulfil_once(a_session(), Deliveries(), event_id="evt_1")
        order = await ledger.order("cs_test_a")
        assert order is not None
        # `claim` exists only in Firestore, where it is the lease (owner, token, expiry) or null.
        assert set(order) - {"claim"} == ORDER_FIELDS
        assert order.get("claim") is None

    run(scenario())


def test_a_failed_delivery_is_not_recorded_and_a_retry_delivers(make_ledger: MakeLedger) -> None:
    async def scenario() -> None:
        ledger, deliver = make_ledger(), Deliveries()
        deliver.fail_with = ValueError("no printer")
        with pytest.raises(ValueError, match="no printer"):
            await ledger.fulfil_once(a_session(), deliver, event_id="evt_1")
        order = await ledger.order("cs_test_a")
        assert order is None or order["fulfilled_at"] is None
        assert await ledger.settled_status("cs_test_a") is None

        deliver.fail_with = None
        assert await ledger.fulfil_once(a_session(), deliver, event_id="evt_1") is True
        assert deliver.calls == 2

    run(scenario())


def test_concurrent_attempts_in_one_process_deliver_once(make_ledger: MakeLedger) -> None:
    async def scenario() -> None:
        ledger, deliver = make_ledger(), Deliveries()
        results = await asyncio.gather(
            *(ledger.fulfil_once(a_session(), deliver, event_id=f"evt_{n}") for n in range(10))
        )
        assert sorted(results) == [False] * 9 + [True]
        assert deliver.calls == 1

    run(scenario())


def test_a_duplicate_that_cannot_learn_the_outcome_is_told_to_retry(
    make_ledger: MakeLedger,
) -> None:
    async def scenario() -> None:
        ledger, deliver = make_ledger(claim_wait_seconds=0.3), Deliveries()
        deliver.gate = asyncio.Event()
        holder = asyncio.ensure_future(ledger.fulfil_once(a_session(), deliver))
        while deliver.calls == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(FulfilmentInProgress):
            await ledger.fulfil_once(a_session(), deliver)
        deliver.gate.set()
        assert await holder is True
        assert deliver.calls == 1

    run(scenario())


def test_completed_then_async_payment_succeeded_fulfil_once(make_ledger: MakeLedger) -> None:
    async def scenario() -> None:
        ledger, deliver = make_ledger(), Deliveries()
        # A bank debit: `completed` arrives unpaid (recorded, not fulfilled), then it succeeds.
        await ledger.record(a_session(paid="unpaid"), event_id="evt_completed")
        assert await ledger.settled_status("cs_test_a") is None  # not final yet
        assert await ledger.fulfil_once(a_session(), deliver, event_id="evt_succeeded") is True
        # A retried `completed` (showing paid, as a retrieve would) and the return page: no-ops.
        assert await ledger.fulfil_once(a_session(), deliver, event_id="evt_completed") is False
        assert await ledger.fulfil_once(a_session(), deliver) is False
        assert deliver.calls == 1
        order = await ledger.order("cs_test_a")
        assert order["event_ids"] == ["evt_completed", "evt_succeeded"]
        assert order["payment_status"] == "paid"

    run(scenario())


def test_expired_and_payment_failed_sessions_are_recorded_final(make_ledger: MakeLedger) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        expired = a_session("expired", "unpaid", "cs_test_expired")
        failed = replace(a_session("complete", "unpaid", "cs_test_failed"), payment_failed=True)
        await ledger.record(expired, event_id="evt_expired")
        await ledger.record(failed, event_id="evt_failed", final=True)
        for record, event_id in ((expired, "evt_expired"), (failed, "evt_failed")):
            order = await ledger.order(record.session_id)
            assert order["final"] is True
            assert order["fulfilled_at"] is None
            assert order["event_ids"] == [event_id]
            assert await ledger.settled_status(record.session_id) == record
        # A failed delayed payment stays failed for every instance that reads the ledger.
        settled = await ledger.settled_status("cs_test_failed")
        assert (settled.outcome, settled.public()["outcome"]) == ("failed", "failed")
        assert (await ledger.settled_status("cs_test_expired")).outcome == "expired"

    run(scenario())


def test_a_late_non_final_status_never_replaces_a_final_one(make_ledger: MakeLedger) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        failed = a_session("complete", "unpaid")
        await ledger.record(failed, event_id="evt_failed", final=True)
        await ledger.record(a_session("complete", "unpaid"), event_id="evt_completed")
        order = await ledger.order("cs_test_a")
        assert order["final"] is True
        assert order["event_ids"] == ["evt_failed", "evt_completed"]

    run(scenario())


def test_settled_status_answers_only_final_sessions_with_nothing_left_to_do(
    make_ledger: MakeLedger,
) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        assert await ledger.settled_status("cs_test_a") is None  # unknown
        await ledger.record(a_session("open", "unpaid"))
        assert await ledger.settled_status("cs_test_a") is None  # may still change
        await ledger.fulfil_once(a_session(), Deliveries())
        settled = await ledger.settled_status("cs_test_a")
        assert settled == a_session()
        assert settled.public() == {
            "status": "complete",
            "payment_status": "paid",
            "outcome": "paid",
            "metadata": {"imageId": "img_1"},
        }
        assert (settled.amount_total, settled.currency) == (200, "usd")

    run(scenario())


def test_handled_events_are_remembered(make_ledger: MakeLedger) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        assert await ledger.event_handled("evt_1") is False
        await ledger.mark_event_handled("evt_1", COMPLETED, "cs_test_a")
        assert await ledger.event_handled("evt_1") is True
        assert await ledger.event_handled("evt_2") is False
        # Another ledger over the same store (another instance) sees it too, or, in memory, not.
        other = make_ledger()
        assert await other.event_handled("evt_1") is (not isinstance(ledger, MemoryLedger))

    run(scenario())


# -- Firestore only: documents, processes, outages -----------------------------------------------


@pytest.mark.firestore
def test_event_records_carry_expire_at_for_the_ttl_policy(firestore: Firestore) -> None:
    before = datetime.now(UTC)
    run(firestore_ledger(firestore).mark_event_handled("evt_ttl", COMPLETED, "cs_test_a"))
    record = read_document(firestore, "checkout_events", "evt_ttl")
    assert record is not None
    assert record["type"] == COMPLETED
    assert record["session_id"] == "cs_test_a"
    retention = timedelta(days=EVENT_RETENTION_DAYS)
    assert before + retention <= record["expire_at"] <= datetime.now(UTC) + retention
    assert set(record) == {"type", "session_id", "handled_at", "expire_at"}


@pytest.mark.firestore
def test_the_order_document_is_keyed_by_session_id(firestore: Firestore) -> None:
    run(firestore_ledger(firestore).fulfil_once(a_session(), Deliveries(), event_id="evt_1"))
    document = read_document(firestore, "checkout_orders", "cs_test_a")
    assert document["fulfilled_at"] is not None
    assert document["claim"] is None


@pytest.mark.firestore
def test_ids_that_are_not_document_ids_still_dedupe(firestore: Firestore) -> None:
    async def scenario() -> None:
        ledger = firestore_ledger(firestore)
        for odd in ("evt/../x", "__evt__", "evt with spaces"):
            assert await ledger.event_handled(odd) is False
            await ledger.mark_event_handled(odd, COMPLETED, None)
            assert await ledger.event_handled(odd) is True

    run(scenario())


@pytest.mark.firestore
def test_a_failed_delivery_releases_the_claim_for_another_instance_at_once(
    firestore: Firestore,
) -> None:
    async def scenario() -> None:
        first, deliver = firestore_ledger(firestore, lease=300), Deliveries()
        deliver.fail_with = RuntimeError("warehouse down")
        with pytest.raises(RuntimeError):
            await first.fulfil_once(a_session(), deliver)
        # No waiting for the 300 s lease: another instance, unwilling to wait at all, delivers.
        second = firestore_ledger(firestore, claim_wait_seconds=0)
        deliver.fail_with = None
        assert await second.fulfil_once(a_session(), deliver) is True
        assert deliver.calls == 2

    run(scenario())


class Worker:
    """tests/ledger_worker.py in its own OS process, started and waiting for its go file."""

    def __init__(self, firestore: Firestore, tmp: Path, name: str, **options: object) -> None:
        self.go = tmp / f"go-{name}"
        args = [
            sys.executable,
            "-m",
            "tests.ledger_worker",
            "--project",
            firestore.project,
            "--session",
            "cs_test_a",
            "--sink",
            str(tmp / "deliveries"),
            "--go",
            str(self.go),
            "--event",
            f"evt_{name}",
        ]
        for option, value in options.items():
            args += [f"--{option}", str(value)]
        env = {**os.environ, "FIRESTORE_EMULATOR_HOST": firestore.host}
        self.process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def ready(self) -> str:
        """Wait for the worker to be connected; its claim owner id."""
        line = self.process.stdout.readline()
        assert line.startswith("ready "), line + self.process.stderr.read()
        return line.split()[1]

    def start(self) -> None:
        self.go.touch()

    def outcome(self) -> dict[str, Any]:
        out, err = self.process.communicate(timeout=60)
        assert self.process.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=10)


def deliveries(tmp: Path) -> list[tuple[int, float]]:
    path = tmp / "deliveries"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(pid), float(at)) for pid, at in (line.split() for line in lines)]


@pytest.mark.firestore
@pytest.mark.slow
def test_concurrent_claims_from_several_processes_deliver_once(
    firestore: Firestore, tmp_path: Path
) -> None:
    workers = [Worker(firestore, tmp_path, f"w{n}", hold=0.2) for n in range(5)]
    for worker in workers:
        worker.ready()
    for worker in workers:  # as close together as five files can be made
        worker.start()
    outcomes = sorted(worker.outcome()["outcome"] for worker in workers)

    assert outcomes == ["already"] * 4 + ["delivered"]
    assert len(deliveries(tmp_path)) == 1
    document = read_document(firestore, "checkout_orders", "cs_test_a")
    assert document["fulfilled_at"] is not None
    assert sorted(document["event_ids"]) == [f"evt_w{n}" for n in range(5)]


@pytest.mark.firestore
@pytest.mark.slow
def test_a_claim_left_by_a_killed_process_is_taken_over_after_its_lease(
    firestore: Firestore, tmp_path: Path
) -> None:
    lease = 6.0
    holder = Worker(firestore, tmp_path, "holder", hold=120, lease=lease)
    impatient = Worker(firestore, tmp_path, "impatient", wait=0)
    patient = Worker(firestore, tmp_path, "patient", wait=lease + 10)
    holder_owner = holder.ready()
    impatient.ready()
    patient.ready()

    holder.start()
    while not deliveries(tmp_path):
        time.sleep(0.01)
    holder.kill()  # SIGKILL mid-delivery: no release, no record
    claim = read_document(firestore, "checkout_orders", "cs_test_a")["claim"]
    assert claim["owner"] == holder_owner

    impatient.start()  # the lease still runs: a duplicate is told to retry, and delivers nothing
    assert impatient.outcome()["outcome"] == "in_progress"
    patient.start()  # waits, and takes over once the lease ran out
    assert patient.outcome()["outcome"] == "delivered"

    (holder_pid, _), (patient_pid, patient_at) = deliveries(tmp_path)
    assert holder_pid == holder.process.pid
    assert patient_pid == patient.process.pid
    assert patient_at >= claim["expires_at"].timestamp()
    document = read_document(firestore, "checkout_orders", "cs_test_a")
    assert document["fulfilled_at"] is not None
    assert document["claim"] is None


@pytest.mark.firestore
@pytest.mark.slow
def test_an_unreachable_firestore_is_ledger_unavailable_within_the_deadline_then_recovers(
    firestore: Firestore,
) -> None:
    from checkout.ledger.firestore import ledger_budget_seconds

    # One operation's worst case; the whole webhook's is ledger_budget_seconds().
    deadline = ledger_budget_seconds(0) / 6
    emulator = firestore.emulator

    async def scenario() -> None:
        ledger = firestore_ledger(firestore)
        await ledger.mark_event_handled("evt_before", COMPLETED, None)
        deliver = Deliveries()

        async def deliver_then_lose_firestore() -> None:
            await deliver()
            await asyncio.to_thread(emulator.stop)

        # Delivered, then the record cannot be written: the caller must not answer 200.
        with pytest.raises(LedgerUnavailable):
            await ledger.fulfil_once(a_session(), deliver_then_lose_firestore, event_id="evt_1")

        for operation in (
            ledger.fulfil_once(a_session(session_id="cs_test_b2"), deliver),
            ledger.event_handled("evt_before"),
            ledger.mark_event_handled("evt_2", COMPLETED, None),
            ledger.record(a_session("expired", "unpaid", "cs_test_c3")),
            ledger.settled_status("cs_test_a"),
        ):
            started = time.monotonic()
            with pytest.raises(LedgerUnavailable):
                await operation
            assert time.monotonic() - started < deadline + 1.0
        assert deliver.calls == 1  # nothing was delivered while Firestore was away

        await asyncio.to_thread(emulator.start)  # an emulator restarts empty
        recovered = False
        for _ in range(40):  # gRPC reconnects with backoff: the first calls may still fail
            try:
                recovered = await ledger.fulfil_once(a_session(), deliver, event_id="evt_1")
                break
            except LedgerUnavailable:
                await asyncio.sleep(0.5)
        # This process remembered the delivery whose record failed: recorded now, not redelivered.
        assert recovered is True
        assert deliver.calls == 1
        assert (await ledger.order("cs_test_a"))["fulfilled_at"] is not None

    try:
        run(scenario())
    finally:
        emulator.start()


# -- reporting an outage -------------------------------------------------------------------------


def test_an_outage_is_logged_once_per_burst_and_its_end_once(logs: CapturedLogs) -> None:
    from checkout.ledger import OutageLog

    now = [0.0]
    outages = OutageLog(quiet_seconds=60, clock=lambda: now[0])
    down = LedgerUnavailable("Firestore did not answer")
    assert not outages.ongoing
    for now[0] in (0.0, 1.0, 30.0, 89.0):  # each within 60 s of the last: one burst
        outages.failed(down, "answered from Stripe")
    assert outages.ongoing
    [degraded] = logs("checkout_ledger_degraded")
    assert (degraded["detail"], degraded["fallback"]) == (str(down), "answered from Stripe")

    outages.succeeded()
    outages.succeeded()
    assert not outages.ongoing
    [recovered] = logs("checkout_ledger_recovered")
    assert recovered["failed_requests"] == 4

    now[0] = 95.0
    outages.failed(down, "answered from Stripe")  # a new burst after a success
    now[0] = 500.0
    outages.failed(down, "answered from Stripe")  # and after a quiet spell
    assert len(logs("checkout_ledger_degraded")) == 3
