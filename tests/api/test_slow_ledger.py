"""A slow (not down) Firestore: every answer held 2.5 s by a TCP proxy in front of the emulator.

The status call spends at most its 1 s budget on the ledger in total, then answers from Stripe,
and keeps that answer like any other, so a slow ledger costs at most one Stripe read per session
per cache period. (How long a poll takes is measured by bench/slow_ledger.py, not asserted here.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.delay_proxy import DelayProxy
from tests.firestore_emulator import Firestore
from tests.support import CREATE, STATUS, http_json, log_records

DELAY_S = 2.5


@pytest.fixture
def slow_firestore(firestore: Firestore) -> Iterator[dict[str, str]]:
    """The service's variables for this test's Firestore project, reached through the proxy."""
    with DelayProxy(firestore.host, DELAY_S) as proxy:
        yield firestore.env(FIRESTORE_EMULATOR_HOST=proxy.host)


def test_with_a_slow_ledger_polls_of_a_paid_order_cost_one_stripe_read_and_answer_paid(
    live_server, stripe_emulator, slow_firestore
) -> None:
    server = live_server(**slow_firestore)  # no webhook: only the status path learns of it
    _, created = http_json("POST", f"{server.url}{CREATE}", {"imageId": "img_3"})
    session = stripe_emulator.complete_session(created["session_id"], "paid")
    before = stripe_emulator.calls()["retrieve_session"]
    for _ in range(4):
        status, body = http_json("GET", f"{server.url}{STATUS}?session_id={session['id']}")
        assert status == 200, body
        assert (body["outcome"], body["amount_refunded"]) == ("paid", 0)
    assert stripe_emulator.calls()["retrieve_session"] - before == 1
    degraded = log_records(server.logs(), "checkout_ledger_degraded")
    assert degraded and "status call's 1 s" in degraded[0]["detail"]


def test_with_a_slow_ledger_a_chargeback_is_still_disputed_and_an_inquiry_still_paid(
    live_server, stripe_emulator, slow_firestore
) -> None:
    server = live_server(**slow_firestore)  # no webhook: the ledger never hears of either
    sessions = []
    for inquiry in (False, True):
        _, created = http_json("POST", f"{server.url}{CREATE}", {"imageId": "img_4"})
        session = stripe_emulator.complete_session(created["session_id"], "paid")
        stripe_emulator.open_dispute(session["payment_intent"], inquiry=inquiry)
        sessions.append(session["id"])
    outcomes = []
    for session_id in sessions:
        status, body = http_json("GET", f"{server.url}{STATUS}?session_id={session_id}")
        assert status == 200, body
        outcomes.append(body["outcome"])
    assert outcomes == ["disputed", "paid"]
