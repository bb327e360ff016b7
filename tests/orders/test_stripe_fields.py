"""Signed events whose fields are not what Stripe documents, or of the other mode: acknowledged,
refused or ignored with a log record, never a 500 (which Stripe would retry for three days)."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import HANDLED, completed_session, create, event_for, post_event, status_of


def event(kind: str, obj: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "id": f"evt_{time.monotonic_ns()}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": obj},
        **top,
    }


def charge(intent: str) -> dict[str, Any]:
    return {
        "id": "ch_1",
        "object": "charge",
        "amount": 200,
        "amount_refunded": 200,
        "refunded": True,
        "payment_intent": intent,
    }


def refund_object(intent: str, status: str = "succeeded") -> dict[str, Any]:
    return {"id": "re_1", "object": "refund", "amount": 200, "status": status,
            "charge": "ch_1", "payment_intent": intent}  # fmt: skip


def dispute(intent: str, status: str = "needs_response") -> dict[str, Any]:
    return {
        "id": "dp_1",
        "object": "dispute",
        "amount": 200,
        "charge": "ch_1",
        "payment_intent": intent,
        "status": status,
        "evidence_details": {"due_by": int(time.time()) + 86400},
    }


def post(client, body: dict[str, Any]):
    return post_event(client, json.dumps(body).encode())


@pytest.fixture
def paid(webhook_client, stripe_emulator) -> dict[str, Any]:
    """A paid session of ours, recorded through its webhook."""
    session = completed_session(webhook_client, stripe_emulator)
    response = post_event(webhook_client, event_for(session, "checkout.session.completed"))
    assert response.status_code == 200
    return session


def test_a_created_far_past_any_date_is_acknowledged_and_refused_with_a_log(
    webhook_client, paid, logs
) -> None:
    body = event("checkout.session.completed", paid, created=1e20)
    assert post(webhook_client, body).status_code == 200
    [record] = [r for r in logs("stripe_event") if r["event_id"] == body["id"]]
    assert (record["outcome"], record["reason"], record["severity"]) == (
        "refused",
        "malformed_event",
        "WARNING",
    )


def test_an_amount_refunded_that_is_not_a_number_is_acknowledged_and_changes_nothing(
    webhook_client, paid, logs
) -> None:
    body = event("charge.refunded", {**charge(paid["payment_intent"]), "amount_refunded": {"a": 1}})
    assert post(webhook_client, body).status_code == 200
    [record] = [r for r in logs("stripe_event") if r["event_id"] == body["id"]]
    assert record["outcome"] == "refused"
    assert status_of(webhook_client, paid["id"])["outcome"] == "paid"


def test_an_event_of_the_other_mode_is_acknowledged_ignored_and_logged(
    webhook_client, stripe_emulator, logs, delivered
) -> None:
    session_id = create(webhook_client, {"imageId": "img_1"}).get_json()["session_id"]
    session = stripe_emulator.get_session(session_id)
    assert session is not None
    forged = {**session, "status": "complete", "payment_status": "paid", "livemode": True}
    body = event("checkout.session.completed", forged, livemode=True)
    assert post(webhook_client, body).status_code == 200
    [record] = [r for r in logs("stripe_event") if r["event_id"] == body["id"]]
    assert (record["outcome"], record["reason"]) == ("ignored", "livemode_mismatch")
    assert record["severity"] == "WARNING"
    assert status_of(webhook_client, session_id)["outcome"] == "open"  # as Stripe says
    assert delivered == []


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            paths += _paths(inner, (*prefix, key))
    return paths


def _replace(value: dict[str, Any], path: tuple[Any, ...], new: Any) -> dict[str, Any]:
    changed = copy.deepcopy(value)
    target = changed
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return changed


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_field_of_any_handled_event_replaced_by_any_json_never_answers_500(
    webhook_client, paid, data
) -> None:
    intent = paid["payment_intent"]
    objects = {
        "checkout.session.completed": paid,
        "checkout.session.async_payment_succeeded": paid,
        "checkout.session.async_payment_failed": paid,
        "checkout.session.expired": paid,
        "charge.refunded": charge(intent),
        "charge.dispute.created": dispute(intent),
        "charge.dispute.updated": dispute(intent, "warning_needs_response"),
        "charge.dispute.closed": dispute(intent, "won"),
    } | {kind: refund_object(intent, "failed") for kind in HANDLED if "refund." in kind}
    kind = data.draw(st.sampled_from(HANDLED))
    body = event(kind, objects[kind])
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        path = data.draw(st.sampled_from(_paths(body)))
        if path in (("id",), ("type",)):
            continue  # not an event at all: 400 invalid_signature, tested elsewhere
        body = _replace(body, path, data.draw(JSON))
    response = post(webhook_client, body)
    assert response.status_code in (200, 400), response.get_data(as_text=True)[:300]
    assert response.status_code == 200 or response.get_json()["code"] == "invalid_signature"
