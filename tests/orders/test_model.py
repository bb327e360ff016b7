"""The order model (checkout/orders/model.py): which fact makes which change, once, in any order."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from checkout.orders.model import (
    DISPUTE_LOST,
    DISPUTE_WON,
    DISPUTED,
    PAID,
    PARTIALLY_REFUNDED,
    PAYMENT_FAILED,
    REFUND_REVERSED,
    REFUNDED,
    BadChange,
    Change,
    ChargeFact,
    DisputeFact,
    Fact,
    Order,
    RefundFact,
    SessionFact,
    advance,
    facts_of_session,
    session_fact,
)
from checkout.orders.session import SessionStatus
from checkout.orders.stripe_fields import MalformedEvent, fact_of_event

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "checkout" / "orders" / "order_change.schema.json").read_text()
)
SID = "cs_test_a1"
PI = "pi_1"
WHEN = "2026-12-02T10:00:00Z"


def session(status: str = "complete", payment_status: str = "paid", **kw: Any) -> SessionStatus:
    return SessionStatus(
        session_id=SID,
        status=status,
        payment_status=payment_status,
        metadata={"imageId": "img_1"},
        amount_total=200,
        currency="usd",
        payment_intent=PI,
        **kw,
    )


PAID_FACT = SessionFact(session(), PI, WHEN)
PENDING_FACT = SessionFact(session(payment_status="unpaid"), PI, WHEN)
FAILED_FACT = SessionFact(session(payment_status="unpaid", payment_failed=True), PI, WHEN)


def refund(amount: int, full: bool = False) -> ChargeFact:
    return ChargeFact(payment_intent=PI, amount_refunded=amount, refunded=full, occurred_at=WHEN)


def dispute(status: str, dispute_id: str = "dp_1") -> DisputeFact:
    return DisputeFact(
        dispute_id=dispute_id,
        payment_intent=PI,
        amount=200,
        status=status,
        evidence_due_by="2026-12-09T10:00:00Z" if status == "needs_response" else None,
        occurred_at=WHEN,
    )


def refund_status(status: str, refund_id: str = "re_1", amount: int = 200) -> RefundFact:
    return RefundFact(refund_id, PI, amount, status, WHEN)


def fold(facts: list[Fact]) -> tuple[Order, list[Change]]:
    order: Order | None = None
    made: list[Change] = []
    for fact in facts:
        order, new = advance(order, fact)
        made += new
    assert order is not None
    return order, made


def types(changes: list[Change]) -> list[str]:
    return [c.type for c in changes]


def test_a_paid_session_makes_one_paid_change_however_often_it_is_seen():
    order, made = fold([PAID_FACT, PAID_FACT, PENDING_FACT, PAID_FACT])
    assert types(made) == [PAID]
    assert made[0].change_id == f"{SID}:paid"
    assert order.outcome == "paid"
    assert order.payment_intent == PI


def test_a_pending_then_settled_payment_is_paid_and_an_older_status_never_wins():
    order, made = fold([PENDING_FACT, PAID_FACT, PENDING_FACT])
    assert types(made) == [PAID]
    assert order.outcome == "paid"
    pending, nothing = fold([PENDING_FACT])
    assert nothing == []
    assert pending.outcome == "processing"


OPEN_FACT = SessionFact(session("open", "unpaid"), None, WHEN)
EXPIRED_FACT = SessionFact(session("expired", "unpaid"), None, WHEN)
# Each session fact, the outcome it gives a new order, and how far the session has gone.
SESSION_FACTS = {
    "open": (OPEN_FACT, "open", 0),
    "pending": (PENDING_FACT, "processing", 1),
    "failed": (FAILED_FACT, "failed", 2),
    "paid": (PAID_FACT, "paid", 2),
    "expired": (EXPIRED_FACT, "expired", 2),
}


@pytest.mark.parametrize(("first", "later"), list(itertools.product(SESSION_FACTS, repeat=2)))
def test_a_session_fact_moves_the_order_only_forward_and_a_settled_order_stays_settled(
    first, later
):
    first_fact, first_outcome, first_progress = SESSION_FACTS[first]
    later_fact, later_outcome, later_progress = SESSION_FACTS[later]
    order, _ = fold([first_fact, later_fact])
    assert order.outcome == (later_outcome if later_progress > first_progress else first_outcome)


def test_a_failed_delayed_payment_is_one_payment_failed_change_and_final():
    order, made = fold([PENDING_FACT, FAILED_FACT, PENDING_FACT])
    assert types(made) == [PAYMENT_FAILED]
    assert order.outcome == "failed"
    assert order.final


def test_an_expired_session_is_recorded_with_no_change():
    order, made = fold([SessionFact(session("expired", "unpaid"), None, WHEN)])
    assert made == []
    assert order.outcome == "expired"
    assert order.final


def test_a_full_refund_makes_refunded_and_a_paid_order_is_not_final():
    order, made = fold([PAID_FACT, refund(200, full=True), refund(200, full=True)])
    assert types(made) == [PAID, REFUNDED]
    assert made[1].amount_refunded == 200
    assert order.outcome == "refunded"
    assert order.public()["amount_refunded"] == 200
    assert not order.final


def test_partial_refunds_leave_paid_with_the_amount_and_one_change_per_amount():
    order, made = fold([PAID_FACT, refund(50), refund(50), refund(120)])
    assert types(made) == [PAID, PARTIALLY_REFUNDED, PARTIALLY_REFUNDED]
    assert [c.amount_refunded for c in made[1:]] == [50, 120]
    assert order.outcome == "paid"
    assert order.amount_refunded == 120
    # An older refund arriving late changes nothing.
    later, none = advance(order, refund(50))
    assert none == []
    assert later.amount_refunded == 120


def test_a_dispute_is_disputed_until_won_and_stays_disputed_when_lost():
    opened, made = fold([PAID_FACT, dispute("needs_response")])
    assert types(made) == [PAID, DISPUTED]
    assert made[1].evidence_due_by == "2026-12-09T10:00:00Z"
    assert opened.outcome == "disputed"
    won, made = fold([PAID_FACT, dispute("needs_response"), dispute("won")])
    assert types(made) == [PAID, DISPUTED, DISPUTE_WON]
    assert won.outcome == "paid"
    lost, made = fold([PAID_FACT, dispute("needs_response"), dispute("lost")])
    assert types(made) == [PAID, DISPUTED, DISPUTE_LOST]
    assert lost.outcome == "disputed"


def test_a_closed_dispute_stays_closed_when_its_created_event_comes_late():
    order, made = fold([PAID_FACT, dispute("won"), dispute("needs_response")])
    assert types(made) == [PAID, DISPUTED, DISPUTE_WON]
    assert order.outcome == "paid"


@pytest.mark.parametrize(
    "facts",
    [
        [PAID_FACT, dispute("needs_response"), dispute("lost"), refund(60)],
        [
            PAID_FACT,
            refund(200, full=True),
            dispute("needs_response", "dp_2"),
            dispute("won", "dp_2"),
        ],
    ],
)
def test_every_order_of_the_facts_ends_in_the_same_state_with_the_same_changes(facts):
    first, first_made = fold(facts)
    for permutation in itertools.permutations(facts):
        if permutation[0] is not PAID_FACT:
            continue  # a refund or dispute needs its order: the webhook records the session first
        order, made = fold([*permutation, *permutation])  # and every fact twice
        assert order.outcome == first.outcome
        assert order.amount_refunded == first.amount_refunded
        assert {c.change_id for c in made} == {c.change_id for c in first_made}
        assert len(made) == len(first_made)


@pytest.mark.parametrize("later", [refund(200, full=True), dispute("needs_response")])
def test_a_refund_or_dispute_of_a_settling_payment_is_paid_first_and_its_late_success_is_nothing(
    later: Fact,
):
    # A bank debit's success event is late: the refund (or dispute) arrives first. The order was
    # paid, or there would be nothing to refund: paid comes first, and the late event is nothing,
    # so a user's function never revokes access and then grants it.
    order, made = fold([PENDING_FACT, later, PAID_FACT])
    assert types(made)[0] == PAID
    assert types(made)[1:] == [REFUNDED if isinstance(later, ChargeFact) else DISPUTED]
    assert order.outcome in ("refunded", "disputed")
    in_order, in_order_made = fold([PENDING_FACT, PAID_FACT, later])
    assert [c.change_id for c in made] == [c.change_id for c in in_order_made]
    assert order.outcome == in_order.outcome


def test_a_settling_payment_refunded_first_reads_complete_and_paid_as_stripe_would_say():
    order, _ = fold([PENDING_FACT, refund(50)])
    assert (order.public()["status"], order.public()["payment_status"]) == ("complete", "paid")


@pytest.mark.parametrize("settled", [EXPIRED_FACT, FAILED_FACT])
@pytest.mark.parametrize("later", [refund(200, full=True), dispute("needs_response")])
def test_a_refund_or_dispute_never_makes_an_expired_or_failed_order_paid(settled, later):
    order, made = fold([settled, later])
    assert PAID not in types(made)
    assert not order.paid


def test_a_refund_or_dispute_before_the_order_is_refused_by_the_model():
    with pytest.raises(ValueError, match="needs the order's session"):
        advance(None, refund(10))


def test_a_change_carries_the_orders_amount_currency_livemode_and_metadata():
    _, made = fold([PENDING_FACT, PAID_FACT, refund(50)])
    for change in made:
        assert (change.session_id, change.occurred_at) == (SID, WHEN)
        assert (change.amount_total, change.currency, change.livemode) == (200, "usd", False)
        assert change.metadata == {"imageId": "img_1"}


def test_a_change_of_a_session_without_an_amount_says_so_with_nulls():
    unpriced = SessionFact(replace(session(), amount_total=None, currency=None), PI, WHEN)
    _, (paid,) = fold([unpriced])
    assert paid.data()["amount_total"] is None and paid.data()["currency"] is None
    jsonschema.validate(paid.data(), SCHEMA)


def test_an_orders_unpublished_changes_are_those_not_yet_marked_published():
    order, made = fold([PAID_FACT, refund(50)])
    assert order.unpublished() == made
    order.changes["paid"]["published"] = True
    assert order.unpublished() == made[1:]


def test_any_refund_of_at_least_one_cent_is_a_change_and_a_charge_with_none_is_not():
    _, made = fold([PAID_FACT, refund(0)])
    assert types(made) == [PAID]
    _, made = fold([PAID_FACT, refund(1)])
    assert types(made) == [PAID, PARTIALLY_REFUNDED]
    assert made[1].amount_refunded == 1


def test_each_dispute_change_names_its_own_dispute():
    facts: list[Fact] = [PAID_FACT]
    for dispute_id, closed in (("dp_1", "won"), ("dp_2", "lost")):
        facts += [dispute("needs_response", dispute_id), dispute(closed, dispute_id)]
    _, made = fold(facts)
    assert [c.key for c in made] == [
        "paid",
        *("disputed_dp_1", "dispute_won_dp_1"),
        *("disputed_dp_2", "dispute_lost_dp_2"),
    ]
    assert [c.dispute_id for c in made[1:]] == ["dp_1", "dp_1", "dp_2", "dp_2"]
    assert {c.dispute_amount for c in made[1:]} == {200}


def test_every_change_matches_the_published_json_schema_and_reads_back():
    _, made = fold(
        [PAID_FACT, refund(50), refund(200, full=True), dispute("needs_response"), dispute("lost")]
    )
    made += fold([PENDING_FACT, FAILED_FACT])[1]
    assert {c.type for c in made} == {
        PAID,
        PARTIALLY_REFUNDED,
        REFUNDED,
        DISPUTED,
        DISPUTE_LOST,
        PAYMENT_FAILED,
    }
    for change in made:
        jsonschema.validate(change.data(), SCHEMA, format_checker=jsonschema.FormatChecker())
        assert Change.from_data(json.loads(json.dumps(change.data()))) == change
        assert change.attributes() == {
            "type": change.type,
            "change_id": change.change_id,
            "session_id": SID,
        }


def test_the_schema_refuses_customer_data_and_unknown_types():
    _, (paid,) = fold([PAID_FACT])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**paid.data(), "customer_email": "a@example.com"}, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**paid.data(), "type": "order.shipped"}, SCHEMA)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ([], "not a JSON object"),
        ({"type": "order.paid"}, "lacks"),
        ({**fold([PAID_FACT])[1][0].data(), "type": "order.shipped"}, "unknown change type"),
        ({**fold([PAID_FACT])[1][0].data(), "change_id": "cs_test_other:paid"}, "does not belong"),
    ],
)
def test_a_message_that_is_not_a_change_is_refused(data, why):
    with pytest.raises(BadChange, match=why):
        Change.from_data(data)


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"id": "evt_1", "type": kind, "created": 1764669600, "data": {"object": obj}}


def test_stripe_events_become_facts():
    paid = fact_of_event(
        event(
            "checkout.session.completed",
            {
                "id": SID,
                "status": "complete",
                "payment_status": "paid",
                "payment_intent": PI,
                "metadata": {"imageId": "img_1", "email": "not ours"},
            },
        )
    )
    assert isinstance(paid, SessionFact)
    assert paid.payment_intent == PI
    assert paid.session.metadata == {"imageId": "img_1"}
    assert paid.occurred_at == "2025-12-02T10:00:00Z"
    charge = fact_of_event(
        event(
            "charge.refunded",
            {"id": "ch_1", "payment_intent": PI, "amount_refunded": 200, "refunded": True},
        )
    )
    assert charge == ChargeFact(PI, 200, True, "2025-12-02T10:00:00Z")
    disputed = fact_of_event(
        event(
            "charge.dispute.created",
            {
                "id": "dp_9",
                "payment_intent": PI,
                "amount": 200,
                "status": "needs_response",
                "evidence_details": {"due_by": 1765274400},
            },
        )
    )
    assert isinstance(disputed, DisputeFact)
    assert disputed.evidence_due_by == "2025-12-09T10:00:00Z"


@pytest.mark.parametrize(
    ("obj", "fact"),
    [
        (
            {"id": "dp_9", "payment_intent": PI, "amount": 200, "status": "won",
             "evidence_details": {"due_by": None}},
            DisputeFact("dp_9", PI, 200, "won", None, "2025-12-02T10:00:00Z"),
        ),
        (
            {"id": "dp_9", "payment_intent": {"id": PI}, "amount": 150, "status": "lost"},
            DisputeFact("dp_9", PI, 150, "lost", None, "2025-12-02T10:00:00Z"),
        ),
    ],
)  # fmt: skip
def test_a_closed_dispute_event_is_a_fact_of_its_dispute_payment_amount_and_status(obj, fact):
    assert fact_of_event(event("charge.dispute.closed", obj)) == fact


def test_a_session_event_without_metadata_is_a_session_with_none():
    fact = fact_of_event(
        event("checkout.session.completed", {"id": SID, "status": "complete", "metadata": None})
    )
    assert isinstance(fact, SessionFact)
    assert fact.session.metadata == {}


@pytest.mark.parametrize(("amount", "full"), [(1, False), (200, True)])
def test_a_status_read_of_a_refunded_session_states_its_refund_after_the_session(amount, full):
    read = replace(session(), amount_refunded=amount, refunded=full)
    first, then = facts_of_session(read)
    assert isinstance(first, SessionFact) and first.session == read
    assert then == ChargeFact(PI, amount, full, then.occurred_at)
    assert then.occurred_at.endswith("Z")


@pytest.mark.parametrize(
    "read",
    [
        session(),
        replace(session(payment_status="unpaid"), amount_refunded=50),
        replace(session(), payment_intent=None, amount_refunded=50),
    ],
    ids=["not refunded", "unpaid", "no PaymentIntent"],
)
def test_a_status_read_states_no_refund_of_a_session_not_refunded_or_not_paid(read):
    assert [type(fact) for fact in facts_of_session(read)] == [SessionFact]


def test_a_status_reads_fact_is_dated_in_utc():
    assert session_fact(session()).occurred_at.endswith("Z")


def test_a_charge_outside_checkout_is_no_fact_and_a_wrong_object_is_an_error():
    assert fact_of_event(event("charge.refunded", {"id": "ch_1", "payment_intent": None})) is None
    with pytest.raises(MalformedEvent, match="the Charge's id is not a ch_… id"):
        fact_of_event(event("charge.refunded", {"id": "cs_test_x"}))
    with pytest.raises(MalformedEvent, match="the session's id is not a cs_… id"):
        fact_of_event(event("checkout.session.completed", {"id": "ch_1"}))
    with pytest.raises(MalformedEvent, match="the Dispute's id is not a dp_… id"):
        fact_of_event(event("charge.dispute.closed", {"id": "ch_1", "payment_intent": PI}))
    with pytest.raises(MalformedEvent, match="data is not an object"):
        fact_of_event({"id": "evt_1", "type": "charge.refunded", "created": 1764669600})


def test_a_full_refund_that_fails_puts_the_amount_back_and_the_order_is_paid_again():
    order, made = fold([PAID_FACT, refund(200, full=True), refund_status("failed")])
    assert types(made) == [PAID, REFUNDED, REFUND_REVERSED]
    assert made[-1].key == "refund_reversed_re_1" and made[-1].amount_refunded == 0
    assert (order.outcome, order.public()["amount_refunded"]) == ("paid", 0)


@pytest.mark.parametrize("status", ["failed", "canceled"])
def test_a_refund_failed_or_cancelled_stays_so_whatever_comes_later(status):
    facts: list[Fact] = [PAID_FACT, refund_status("succeeded"), refund_status(status)]
    order, made = fold([*facts, refund_status("succeeded"), refund(200, full=True)])
    assert types(made) == [PAID, REFUNDED, REFUND_REVERSED]
    assert order.outcome == "paid"


def test_a_refund_made_again_after_one_failed_is_a_new_refunded_change():
    facts: list[Fact] = [PAID_FACT, refund(200, full=True), refund_status("failed")]
    order, made = fold([*facts, refund_status("succeeded", "re_2"), refund(200, full=True)])
    assert [c.key for c in made] == ["paid", "refunded", "refund_reversed_re_1",
                                     "refunded_after_1_failed"]  # fmt: skip
    assert (order.outcome, order.public()["amount_refunded"]) == ("refunded", 200)


def test_a_partial_refund_that_fails_leaves_the_other_refunds():
    facts: list[Fact] = [
        PAID_FACT,
        refund_status("succeeded", "re_1", 50),
        refund_status("succeeded", "re_2", 30),
    ]
    order, made = fold([*facts, refund(80), refund_status("failed", "re_1", 50)])
    assert types(made) == [PAID, PARTIALLY_REFUNDED, PARTIALLY_REFUNDED, REFUND_REVERSED]
    assert (order.outcome, order.public()["amount_refunded"]) == ("paid", 30)


def test_a_failed_refund_never_seen_to_succeed_changes_nothing():
    order, made = fold([PAID_FACT, refund_status("failed")])
    assert types(made) == [PAID]
    assert order.public()["amount_refunded"] == 0


@pytest.mark.parametrize(
    "status", ["warning_needs_response", "warning_under_review", "warning_closed"]
)
def test_an_inquiry_moves_no_money_so_the_order_stays_paid_with_no_change(status):
    order, made = fold([PAID_FACT, dispute("warning_needs_response"), dispute(status)])
    assert types(made) == [PAID]
    assert order.outcome == "paid"


def test_an_inquiry_that_becomes_a_chargeback_is_disputed_in_either_order():
    cases: list[list[Fact]] = [
        [PAID_FACT, dispute("warning_needs_response"), dispute("needs_response")],
        [PAID_FACT, dispute("needs_response"), dispute("warning_needs_response")],
    ]
    for facts in cases:
        order, made = fold(facts)
        assert types(made) == [PAID, DISPUTED]
        assert order.outcome == "disputed"


def test_a_reversed_refund_matches_the_schema():
    _, made = fold([PAID_FACT, refund(200, full=True), refund_status("failed")])
    for change in made:
        jsonschema.validate(change.data(), SCHEMA)
