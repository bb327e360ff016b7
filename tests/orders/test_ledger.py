"""The order ledger: one contract for memory and Firestore, then what only Firestore can show.

Firestore tests run against Google's real emulator (tests/firestore_emulator.py), with a fresh
project id per test, and several OS processes where a claim must hold across instances.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from checkout.config import ConfigError, load_settings
from checkout.orders.ledger import (
    CLAIMED,
    DELIVERED,
    DELIVERIES,
    EVENT_RETENTION_DAYS,
    EVENTS,
    HELD,
    KEEP,
    ORDERS,
    Ledger,
    LedgerUnavailable,
    ledger_from_settings,
    new_token,
)
from checkout.orders.ledger.memory import MemoryLedger
from checkout.orders.model import Change, ChargeFact, SessionFact, session_fact
from tests.firestore_emulator import Firestore
from tests.support import (
    ROOT,
    CapturedLogs,
    a_session,
    ledger_collection,
    read_document,
    service_account_file,
    stop_process,
)

COMPLETED = "checkout.session.completed"
MakeLedger = Callable[[], Ledger]


@pytest.fixture(params=["memory", pytest.param("firestore", marks=pytest.mark.firestore)])
def make_ledger(request: pytest.FixtureRequest) -> MakeLedger:
    """Build a ledger of each kind; Firestore ones share this test's project on the emulator."""
    if request.param == "memory":
        return lambda: MemoryLedger(100)
    firestore: Firestore = request.getfixturevalue("firestore")
    return lambda: firestore_ledger(firestore)


def firestore_ledger(firestore: Firestore) -> Ledger:
    from checkout.orders.ledger.firestore import FirestoreLedger

    return FirestoreLedger(project=firestore.project, database="(default)", deployment_id="local")


def run(coroutine: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coroutine

    return asyncio.run(main())


def paid_fact(session_id: str = "cs_test_a") -> SessionFact:
    session = a_session(session_id=session_id)
    return session_fact(session, "pi_" + session_id[-4:])


def pending_fact(session_id: str = "cs_test_a") -> SessionFact:
    session = a_session(paid="unpaid", session_id=session_id)
    return session_fact(session, "pi_" + session_id[-4:])


async def paid_then_refunded(ledger: Ledger) -> list[Change]:
    """cs_test_a paid, then fully refunded: its order's two changes, in order."""
    await ledger.apply("cs_test_a", paid_fact(), token="p")
    refund = ChargeFact("pi_st_a", 200, True, "2026-12-07T10:00:00Z")
    applied = await ledger.apply("cs_test_a", refund, token="p")
    assert applied.order is not None
    return [Change.from_data(entry["change"]) for entry in applied.order.changes.values()]


FULL_REFUND = ChargeFact("pi_st_a", 200, True, "2026-12-02T10:00:00Z")


# -- choosing the ledger ------------------------------------------------------------------------


def test_memory_is_the_default_and_leaves_firestore_unimported() -> None:
    code = (
        "import sys\n"
        "from checkout.config import load_settings\n"
        "from checkout.orders.ledger import ledger_from_settings\n"
        "ledger = ledger_from_settings(load_settings({}))\n"
        "print(ledger.name, any(m.startswith('google.cloud.firestore') for m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["memory", "False"]


def test_the_firestore_ledger_takes_project_and_database_from_settings() -> None:
    ledger = ledger_from_settings(
        load_settings(
            {
                "ORDER_LEDGER": "firestore",
                "GOOGLE_CLOUD_PROJECT": "demo-checkout",
                "FIRESTORE_DATABASE": "orders-eu",
            }
        )
    )
    from checkout.orders.ledger.firestore import FirestoreLedger

    assert isinstance(ledger, FirestoreLedger)
    assert (ledger.name, ledger.project, ledger.database) == (
        "firestore",
        "demo-checkout",
        "orders-eu",
    )


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
    from checkout.orders.ledger.firestore import FirestoreLedger

    assert isinstance(ledger, FirestoreLedger)
    assert ledger.project == "adc-project"


# -- the contract, for both ledgers -------------------------------------------------------------


def test_a_fact_is_recorded_once_per_event_and_its_change_claimed_for_publishing(
    make_ledger: MakeLedger,
) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        first = await ledger.apply("cs_test_a", paid_fact(), event_id="evt_1", token="t1")
        assert [c.change_id for c in first.new] == ["cs_test_a:paid"]
        assert [c.change_id for c in first.to_publish] == ["cs_test_a:paid"]
        again = await ledger.apply("cs_test_a", paid_fact(), event_id="evt_1", token="t2")
        assert again.duplicate and again.new == []
        # Claimed by t1 and not yet published: t2 must not publish it too.
        assert again.to_publish == [] and again.in_flight == ["paid"]
        await ledger.mark_published("cs_test_a", ["paid"], "t1")
        other = await ledger.apply("cs_test_a", paid_fact(), event_id="evt_2", token="t3")
        assert other.new == [] and other.to_publish == [] and other.in_flight == []
        assert await ledger.event_handled("evt_1") and await ledger.event_handled("evt_2")
        order = await ledger.order("cs_test_a")
        assert order is not None and order.outcome == "paid" and order.unpublished() == []

    run(scenario())


def test_a_failed_publish_leaves_the_change_for_the_next_caller(make_ledger: MakeLedger) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        await ledger.apply("cs_test_a", paid_fact(), event_id="evt_1", token="t1")
        await ledger.release_publication("cs_test_a", ["paid"], "t1")
        retry = await ledger.apply("cs_test_a", paid_fact(), event_id="evt_1", token="t2")
        assert retry.duplicate
        assert [c.key for c in retry.to_publish] == ["paid"]
        assert [o.session_id for o in await ledger.unpublished_orders()] == ["cs_test_a"]
        await ledger.mark_published("cs_test_a", ["paid"], "t2")
        assert await ledger.unpublished_orders() == []
        assert await ledger.claim_unpublished("cs_test_a", "t3") == []

    run(scenario())


def test_a_change_made_on_an_existing_order_is_released_for_the_next_caller_too(
    make_ledger: MakeLedger,
) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        assert (await ledger.apply("cs_test_a", pending_fact(), token="t0")).new == []
        paid = await ledger.apply("cs_test_a", paid_fact(), token="t1")  # the order's transaction
        assert [c.key for c in paid.to_publish] == ["paid"]
        await ledger.release_publication("cs_test_a", ["paid"], "t1")
        retry = await ledger.apply("cs_test_a", paid_fact(), token="t2")
        assert [c.key for c in retry.to_publish] == ["paid"]

    run(scenario())


def test_a_publication_claim_is_released_only_by_its_holder(make_ledger: MakeLedger) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        await ledger.apply("cs_test_a", paid_fact(), token="t1")
        await ledger.release_publication("cs_test_a", ["paid", "no_such_change"], "t2")
        other = await ledger.apply("cs_test_a", paid_fact(), token="t3")
        assert other.to_publish == [] and other.in_flight == ["paid"]

    run(scenario())


def test_a_new_change_is_claimed_while_an_older_one_is_being_published_elsewhere(
    make_ledger: MakeLedger,
) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        await ledger.apply("cs_test_a", paid_fact(), token="t1")
        refund = await ledger.apply("cs_test_a", FULL_REFUND, token="t2")
        assert [c.key for c in refund.to_publish] == ["refunded"]
        assert refund.in_flight == ["paid"]

    run(scenario())


def test_unpublished_changes_are_claimed_once_for_the_reconciler(make_ledger: MakeLedger) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        (change,) = (await ledger.apply("cs_test_a", paid_fact(), token="t1")).new
        assert await ledger.claim_unpublished("cs_test_a", "t2") == []  # t1's claim is live
        await ledger.release_publication("cs_test_a", ["paid"], "t1")
        assert await ledger.claim_unpublished("cs_test_a", "t2") == [change]
        assert await ledger.claim_unpublished("cs_test_a", "t3") == []
        assert await ledger.claim_unpublished("cs_test_no_order", "t3") == []
        await ledger.mark_published("cs_test_a", ["paid"], "t2")
        await ledger.mark_published("cs_test_a", ["paid"], "t2")  # a retry: harmless
        assert await ledger.claim_unpublished("cs_test_a", "t4") == []

    run(scenario())


def test_unpublished_orders_updated_before_a_moment_leave_out_those_written_since(
    make_ledger: MakeLedger,
) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        await ledger.apply("cs_test_a", paid_fact(), token="t1")
        written = (await ledger.order_document("cs_test_a") or {})["updated_at"]
        listed = await ledger.unpublished_orders(updated_before=written)
        assert [o.session_id for o in listed] == ["cs_test_a"]
        earlier = written - timedelta(microseconds=1)
        assert await ledger.unpublished_orders(updated_before=earlier) == []

    run(scenario())


def test_a_change_whose_delivery_failed_in_process_is_unpublished_again(
    make_ledger: MakeLedger,
) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        (change,) = (await ledger.apply("cs_test_a", paid_fact(), token="t1")).new
        await ledger.mark_published("cs_test_a", ["paid"], "t1")
        await ledger.mark_unpublished(change)
        await ledger.mark_unpublished(change)  # a retry: harmless
        order = await ledger.order("cs_test_a")
        assert order is not None and order.unpublished() == [change]
        assert [o.session_id for o in await ledger.unpublished_orders()] == ["cs_test_a"]
        assert "published_at" not in order.changes["paid"]
        assert await ledger.claim_unpublished("cs_test_a", "t2") == [change]
        # A change of no recorded order, or one the order never made, changes nothing.
        await ledger.mark_unpublished(
            replace(change, session_id="cs_test_b", change_id="cs_test_b:paid")
        )
        await ledger.mark_unpublished(replace(change, change_id="cs_test_a:refunded"))
        assert await ledger.order("cs_test_b") is None
        assert list((await ledger.order_document("cs_test_a") or {})["changes"]) == ["paid"]

    run(scenario())


def test_every_write_of_an_order_keeps_its_created_at_and_stamps_updated_at(
    make_ledger: MakeLedger,
) -> None:
    """The reconciler republishes only what no request has touched for a while (updated_at)."""

    async def scenario() -> None:
        ledger = make_ledger()
        (change,) = (await ledger.apply("cs_test_a", paid_fact(), token="t1")).new
        created = (await ledger.order_document("cs_test_a") or {})["created_at"]
        writes = [
            ledger.apply("cs_test_a", FULL_REFUND, token="t2"),
            ledger.release_publication("cs_test_a", ["paid", "refunded"], "t2"),
            ledger.claim_unpublished("cs_test_a", "t3"),
            ledger.mark_published("cs_test_a", ["paid"], "t3"),
            ledger.mark_unpublished(change),
        ]
        for write in writes:
            await write
            document = await ledger.order_document("cs_test_a")
            assert document is not None and document["created_at"] == created
            assert isinstance(document["updated_at"], datetime)
        assert isinstance(created, datetime)
        await ledger.mark_published("cs_test_a", ["refunded"], "t3")
        document = await ledger.order_document("cs_test_a")
        assert document is not None
        assert document["changes"]["refunded"]["published_at"] == document["updated_at"]

    run(scenario())


def test_an_order_is_found_by_its_payment_intent(make_ledger: MakeLedger) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        await ledger.apply("cs_test_a", paid_fact(), token="t1")
        assert await ledger.session_of_payment("pi_st_a") == "cs_test_a"
        assert await ledger.session_of_payment("pi_other") is None
        refund = ChargeFact("pi_st_a", 200, True, "2026-12-02T10:00:00Z")
        applied = await ledger.apply("cs_test_a", refund, event_id="evt_r", token="t2")
        assert [c.type for c in applied.new] == ["order.refunded"]
        order = await ledger.order("cs_test_a")
        assert order is not None and order.public()["outcome"] == "refunded"

    run(scenario())


def test_the_order_document_holds_no_customer_details_or_secrets(make_ledger: MakeLedger) -> None:
    async def scenario() -> dict[str, Any] | None:
        ledger = make_ledger()
        await ledger.apply("cs_test_a", paid_fact(), event_id="evt_1", token="t1")
        return await ledger.order_document("cs_test_a")

    document = run(scenario())
    text = json.dumps(document, default=str)
    for absent in ("email", "customer", "client_secret", "sk_", "whsec_", "name"):
        assert absent not in text
    assert document["metadata"] == {"imageId": "img_1"}


def test_a_delivery_is_claimed_once_and_recorded_once(make_ledger: MakeLedger) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        (change,) = (await ledger.apply("cs_test_a", paid_fact(), token="p")).new
        first = await ledger.claim_delivery(change, "d1", lease=30)
        assert first.outcome == CLAIMED
        assert (await ledger.claim_delivery(change, "d2", lease=30)).outcome == HELD
        assert await ledger.renew_delivery(change.change_id, "d1", lease=30)
        assert not await ledger.renew_delivery(change.change_id, "d2", lease=30)
        assert await ledger.complete_delivery(change.change_id, "d1")
        # The same record again (its answer was lost): recognised as ours.
        assert await ledger.complete_delivery(change.change_id, "d1")
        assert not await ledger.complete_delivery(change.change_id, "d2")
        # The renewer may outlive the record by a moment: ours is not "lost", another's is.
        assert await ledger.renew_delivery(change.change_id, "d1", lease=30)
        assert not await ledger.renew_delivery(change.change_id, "d2", lease=30)
        assert (await ledger.claim_delivery(change, "d3", lease=30)).outcome == DELIVERED
        record = await ledger.delivery(change.change_id)
        assert record is not None and record["attempts"] == 1 and record["claim"] is None

    run(scenario())


def test_a_failed_delivery_releases_its_claim_and_an_expired_one_is_taken_over(
    make_ledger: MakeLedger,
) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        (change,) = (await ledger.apply("cs_test_a", paid_fact(), token="p")).new
        assert (await ledger.claim_delivery(change, "d1", lease=30)).outcome == CLAIMED
        await ledger.release_delivery(change.change_id, "d1", "RuntimeError: down")
        retry = await ledger.claim_delivery(change, "d2", lease=0.001)
        assert retry.outcome == CLAIMED and retry.other is None
        # d2's lease has run out: it died. One-sided: a longer sleep, on a loaded machine, only
        # leaves the lease further expired, so this cannot fail for want of time.
        await asyncio.sleep(0.01)
        takeover = await ledger.claim_delivery(change, "d3", lease=30)
        assert takeover.outcome == CLAIMED
        assert takeover.other is not None and takeover.other["token"] == "d2"
        record = await ledger.delivery(change.change_id)
        assert record is not None and record["attempts"] == 3
        assert record["last_error"] == "RuntimeError: down"

    run(scenario())


def test_a_delivery_claim_is_renewed_and_released_only_by_its_holder(
    make_ledger: MakeLedger,
) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        (change,) = (await ledger.apply("cs_test_a", paid_fact(), token="p")).new
        assert not await ledger.renew_delivery(change.change_id, "d1", lease=30)  # none yet
        await ledger.release_delivery(change.change_id, "d1", "nothing to release")
        assert (await ledger.claim_delivery(change, "d1", lease=30)).outcome == CLAIMED
        await ledger.release_delivery(change.change_id, "d2", "RuntimeError: not d2's")
        held = await ledger.claim_delivery(change, "d3", lease=30)
        assert held.outcome == HELD and held.other is not None and held.other["token"] == "d1"
        retried = await ledger.claim_delivery(change, "d1", lease=30)  # its answer was lost
        assert retried.outcome == CLAIMED and retried.other is None
        assert await ledger.renew_delivery(change.change_id, "d1", lease=30)
        assert await ledger.renew_delivery(change.change_id, "d1", lease=30)
        await ledger.release_delivery(change.change_id, "d1", "RuntimeError: down")
        await ledger.release_delivery(change.change_id, "d1", "RuntimeError: down")
        assert not await ledger.renew_delivery(change.change_id, "d1", lease=30)

    run(scenario())


def test_a_delivery_record_names_its_change_and_the_instance_holding_it(
    make_ledger: MakeLedger,
) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        (change,) = (await ledger.apply("cs_test_a", paid_fact(), token="p")).new
        steps = [
            ledger.claim_delivery(change, "d1", lease=30),
            ledger.renew_delivery(change.change_id, "d1", lease=30),
            ledger.release_delivery(change.change_id, "d1", "RuntimeError: down"),
            ledger.claim_delivery(change, "d2", lease=30),
            ledger.complete_delivery(change.change_id, "d2"),
        ]
        for step in steps:
            await step
            record = await ledger.delivery(change.change_id)
            assert record is not None
            assert (record["change_id"], record["type"]) == ("cs_test_a:paid", "order.paid")
            assert record["session_id"] == "cs_test_a"
            assert isinstance(record["created_at"], datetime)
            assert isinstance(record["updated_at"], datetime)
            if record["claim"] is not None:
                assert record["claim"]["owner"] == ledger.owner
        assert ledger.owner.startswith("pid")

    run(scenario())


def test_an_event_record_says_what_it_was_and_expires_after_the_retention(
    make_ledger: MakeLedger,
) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        await ledger.apply(
            "cs_test_a", paid_fact(), event_id="evt_1", event_type=COMPLETED, token="t"
        )
        record = await ledger._get(EVENTS, "evt_1")
        assert record is not None
        assert (record["type"], record["session_id"]) == (COMPLETED, "cs_test_a")
        assert record["expire_at"] - record["handled_at"] == timedelta(days=EVENT_RETENTION_DAYS)

    run(scenario())


def test_handled_events_are_remembered_with_an_expiry(make_ledger: MakeLedger) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        assert not await ledger.event_handled("evt_1")
        await ledger.apply(
            "cs_test_a", paid_fact(), event_id="evt_1", event_type=COMPLETED, token="t"
        )
        assert await ledger.event_handled("evt_1")

    run(scenario())


def test_a_transaction_writes_all_its_documents_or_none(make_ledger: MakeLedger) -> None:
    async def scenario() -> None:
        ledger = make_ledger()

        def failing_step(documents: list[Any]) -> tuple[list[Any], None]:
            raise RuntimeError("a bug in the step")

        with pytest.raises(Exception, match="a bug in the step"):
            await ledger._transact([(DELIVERIES, "x"), (DELIVERIES, "y")], failing_step)
        assert await ledger._get(DELIVERIES, "x") is None

        def writes_one(documents: list[Any]) -> tuple[list[Any], str]:
            return [{"n": 1}, KEEP], "ok"

        assert await ledger._transact([(DELIVERIES, "x"), (DELIVERIES, "y")], writes_one) == "ok"
        assert await ledger._get(DELIVERIES, "x") == {"n": 1}
        assert await ledger._get(DELIVERIES, "y") is None

    run(scenario())


class WritesLogged(MemoryLedger):
    """The memory ledger, noting each write it is asked for: (primitive, collection, key)."""

    def __init__(self) -> None:
        super().__init__(100)
        self.writes: list[tuple[str, str, str]] = []

    async def _transact(self, refs: Any, step: Any) -> Any:
        self.writes += [("transact", collection, key) for collection, key in refs]
        return await super()._transact(refs, step)

    async def _create(self, collection: str, key: str, document: Any) -> bool:
        self.writes.append(("create", collection, key))
        return await super()._create(collection, key, document)

    async def _set(self, collection: str, key: str, document: Any) -> None:
        self.writes.append(("set", collection, key))
        await super()._set(collection, key, document)


def test_a_new_order_is_created_and_a_duplicate_fact_takes_no_transaction() -> None:
    """Duplicates are most calls: they must not queue on the order's lock (docs/ledger.md)."""

    async def scenario() -> None:
        ledger = WritesLogged()
        await ledger.apply("cs_test_a", paid_fact(), token="t1")  # the status path: no event
        assert ledger.writes == [("create", ORDERS, "cs_test_a")]
        await ledger.mark_published("cs_test_a", ["paid"], "t1")
        ledger.writes.clear()
        await ledger.apply("cs_test_a", paid_fact(), event_id="evt_1", token="t2")
        assert ledger.writes == [("set", EVENTS, "evt_1")]  # the event, for the log
        ledger.writes.clear()
        await ledger.apply("cs_test_a", paid_fact(), event_id="evt_1", token="t3")
        assert ledger.writes == []
        await ledger.apply("cs_test_a", FULL_REFUND, token="t4")
        assert ledger.writes == [("transact", ORDERS, "cs_test_a")]

    run(scenario())


# -- Firestore only ------------------------------------------------------------------------------


@pytest.mark.firestore
def test_event_records_carry_expire_at_for_the_ttl_policy(firestore: Firestore) -> None:
    run(firestore_ledger(firestore).apply("cs_test_a", paid_fact(), event_id="evt_1", token="t"))
    record = read_document(firestore, ledger_collection("checkout_events"), "evt_1")
    assert record is not None
    expected = datetime.now(UTC) + timedelta(days=EVENT_RETENTION_DAYS)
    assert abs(record["expire_at"] - expected) < timedelta(minutes=5)
    assert read_document(firestore, ledger_collection("checkout_orders"), "cs_test_a") is not None


@pytest.mark.firestore
def test_ids_that_are_not_document_ids_are_hashed_and_still_dedupe(firestore: Firestore) -> None:
    async def scenario() -> None:
        ledger = firestore_ledger(firestore)
        await ledger.apply("cs_test_a", paid_fact(), event_id="evt/../x", token="t")
        assert await ledger.event_handled("evt/../x")
        assert not await ledger.event_handled("evt/../y")

    run(scenario())


CLAIMER = """
import asyncio, json, sys, time
from pathlib import Path
from checkout.orders.ledger import LedgerUnavailable
from checkout.orders.ledger.firestore import FirestoreLedger
from checkout.orders.model import Change

project, go, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
change = Change.from_data(json.loads(sys.argv[4]))

async def main():
    ledger = FirestoreLedger(project=project, database="(default)", deployment_id="local")
    await ledger.event_handled("evt_warm_up")  # connect before the start line, not after it
    print("ready", flush=True)
    while not go.exists():
        await asyncio.sleep(0.005)
    for _ in range(20):  # contention past the deadline: Pub/Sub would redeliver, so retry
        try:
            claim = await ledger.claim_delivery(change, ledger.owner, lease=30)
        except LedgerUnavailable:
            continue
        out.write_text(claim.outcome)
        return
    out.write_text("unavailable")

asyncio.run(main())
"""


@pytest.mark.firestore
@pytest.mark.timeout(600)
def test_processes_racing_to_take_over_one_expired_claim_leave_exactly_one_holder(
    firestore: Firestore, tmp_path: Path
) -> None:
    """The race the transaction's re-check of a live claim exists for (issue 24, item 2)."""
    ledger = firestore_ledger(firestore)

    async def expired_claim() -> Any:
        (change,) = (await ledger.apply("cs_test_a", paid_fact(), token="p")).new
        assert (await ledger.claim_delivery(change, "dead", lease=0.001)).outcome == CLAIMED
        return change

    change = run(expired_claim())
    go = tmp_path / "go"
    env = {"FIRESTORE_EMULATOR_HOST": firestore.host, "PATH": "/usr/bin:/bin"}
    processes = []
    try:
        for n in range(4):
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", CLAIMER, firestore.project, str(go),
                     str(tmp_path / f"out{n}"), json.dumps(change.data())],
                    cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
                )
            )  # fmt: skip
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        go.touch()
        for process in processes:
            assert process.wait(timeout=300) == 0  # generous: a hang, not a timing
    finally:
        for process in processes:
            stop_process(process)
    outcomes = [(tmp_path / f"out{n}").read_text() for n in range(4)]
    assert outcomes.count(CLAIMED) == 1, outcomes
    assert set(outcomes) <= {CLAIMED, HELD, "unavailable"}, outcomes
    record = run(ledger.delivery(change.change_id))
    # The dead one's, and the takeover (a retried claim whose first answer was lost adds one).
    assert record is not None and record["attempts"] >= 2


@pytest.mark.firestore
def test_a_lost_commit_answer_is_recognised_as_our_own_record(firestore: Firestore) -> None:
    """Firestore commits, then the answer is lost (issue 19, failure 2): the retry sees it ours."""
    from checkout.orders.ledger.firestore import FirestoreLedger

    class LosesTheFirstCommitAnswer(FirestoreLedger):
        lost = False

        async def _transact(self, refs: Any, step: Any) -> Any:
            result = await super()._transact(refs, step)
            if not self.lost and refs[0][0] == DELIVERIES and "completing" in self.__dict__:
                self.lost = True
                raise LedgerUnavailable("Firestore did not finish writing within 3 s")
            return result

    async def scenario() -> None:
        ledger = LosesTheFirstCommitAnswer(
            project=firestore.project, database="(default)", deployment_id="local"
        )
        (change,) = (await ledger.apply("cs_test_a", paid_fact(), token="p")).new
        token = new_token()
        assert (await ledger.claim_delivery(change, token, lease=30)).outcome == CLAIMED
        ledger.__dict__["completing"] = True
        with pytest.raises(LedgerUnavailable):
            await ledger.complete_delivery(change.change_id, token)
        assert ledger.lost
        assert await ledger.complete_delivery(change.change_id, token) is True

    run(scenario())


@pytest.mark.firestore
def test_an_unreachable_firestore_is_ledger_unavailable_within_the_deadline_then_recovers(
    firestore: Firestore,
) -> None:
    from checkout.orders.ledger.firestore import CANCEL_GRACE_S, OPERATION_DEADLINE_S

    emulator = firestore.emulator

    async def scenario() -> None:
        ledger = firestore_ledger(firestore)
        await ledger.apply("cs_test_a", paid_fact(), event_id="evt_before", token="t")
        await asyncio.to_thread(emulator.stop)
        loop = asyncio.get_running_loop()
        for operation in (
            ledger.apply("cs_test_b", paid_fact("cs_test_b"), event_id="evt_1", token="t"),
            ledger.event_handled("evt_before"),
            ledger.order("cs_test_a", quick=True),
        ):
            started = loop.time()
            with pytest.raises(LedgerUnavailable):
                await operation
            # Generous: this proves the deadline holds (not 60 s of library retries), not speed.
            assert loop.time() - started < 4 * (OPERATION_DEADLINE_S + CANCEL_GRACE_S)
        await asyncio.to_thread(emulator.start)  # an emulator restarts empty
        for _ in range(40):  # gRPC reconnects with backoff: the first calls may still fail
            try:
                applied = await ledger.apply("cs_test_b", paid_fact("cs_test_b"), token="t")
                break
            except LedgerUnavailable:
                await asyncio.sleep(0.5)
        assert [c.type for c in applied.new] == ["order.paid"]

    try:
        run(scenario())
    finally:
        emulator.start()


# -- reporting an outage -------------------------------------------------------------------------


def test_an_outage_is_logged_once_per_burst_and_its_end_once(logs: CapturedLogs) -> None:
    from checkout.orders.ledger.outages import OutageLog

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


def test_the_audit_finds_every_undelivered_change_over_every_page(make_ledger: MakeLedger) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        changes = []
        for n in range(7):
            changes += (
                await ledger.apply(f"cs_test_u{n}", paid_fact(f"cs_test_u{n}"), token="p")
            ).new
        before = datetime.now(UTC)
        await ledger.expect_delivery(changes[:5], "00-" + "1" * 32 + "-" + "2" * 16 + "-01")
        await ledger.expect_delivery(changes[:1])  # published again: the first record stays
        for change in changes[:2]:  # two delivered
            assert (await ledger.claim_delivery(change, "d", lease=30)).outcome == CLAIMED
            assert await ledger.complete_delivery(change.change_id, "d")
        # The last two were claimed by a worker before their record (a publish racing it): owed.
        for change in changes[5:]:
            assert (await ledger.claim_delivery(change, "w", lease=30)).outcome == CLAIMED
        later = datetime.now(UTC) + timedelta(seconds=1)
        found = await ledger.undelivered(later, page=2)
        assert sorted(d["change_id"] for d in found) == sorted(c.change_id for c in changes[2:])
        assert all(Change.from_data(d["change"]) in changes for d in found)
        assert await ledger.undelivered(before - timedelta(seconds=1), page=2) == []
        first = await ledger.delivery(changes[2].change_id)
        assert first is not None and first["traceparent"].startswith("00-111")

    run(scenario())


def test_a_change_waiting_behind_another_run_of_its_order_is_queued_and_handed_on(
    make_ledger: MakeLedger,
) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        paid_change, refunded_change = await paid_then_refunded(ledger)
        assert (await ledger.claim_delivery(paid_change, "d1", lease=30)).outcome == CLAIMED
        queued = await ledger.claim_delivery(refunded_change, "d2", lease=30)
        assert queued.outcome == HELD and queued.other is not None
        assert queued.other["change_id"] == paid_change.change_id
        assert await ledger.take_waiting("cs_test_a") == []  # d1 still holds the order
        await ledger.release_delivery(paid_change.change_id, "d1", "RuntimeError: down")
        assert await ledger.take_waiting("cs_test_a") == [refunded_change]
        assert await ledger.take_waiting("cs_test_a") == []  # handed on once
        assert (await ledger.claim_delivery(refunded_change, "d3", lease=30)).outcome == CLAIMED

    run(scenario())


def test_a_run_whose_order_was_taken_over_by_another_change_can_no_longer_renew(
    make_ledger: MakeLedger,
) -> None:
    async def scenario() -> None:
        ledger = make_ledger()
        paid_change, refunded_change = await paid_then_refunded(ledger)
        assert (await ledger.claim_delivery(paid_change, "d1", lease=0.001)).outcome == CLAIMED
        # d1's lease has run out unseen (one-sided: a longer sleep only leaves it further gone).
        await asyncio.sleep(0.01)
        assert (await ledger.claim_delivery(refunded_change, "d2", lease=30)).outcome == CLAIMED
        assert not await ledger.renew_delivery(paid_change.change_id, "d1", lease=30)
        assert await ledger.renew_delivery(refunded_change.change_id, "d2", lease=30)

    run(scenario())
