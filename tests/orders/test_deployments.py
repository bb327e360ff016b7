"""Two deployments on one Stripe account and one Google Cloud project: each acts on its own orders.

Both live servers share Google's Firestore emulator project and the one Stripe emulator; every
event the account emits reaches both, as it reaches every endpoint of a Stripe account. Each
deployment must deliver exactly its own changes, and answer 404 for the other's sessions.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import requests

from checkout.orders.model import Order, advance, session_fact
from checkout.orders.stripe_fields import session_status
from devtools.stripe_emulator import StripeEmulator
from tests.firestore_emulator import Firestore
from tests.support import (
    CREATE,
    STATUS,
    TEST_KEY,
    WEBHOOK,
    WHSEC,
    LiveServer,
    http_json,
    log_records,
    wait_for_records,
)


class Account:
    """Sends every event the emulator emits to every server, as Stripe does to every endpoint."""

    def __init__(self, stripe_emulator: StripeEmulator, servers: list[LiveServer]) -> None:
        self.emulator = stripe_emulator
        self.servers = servers
        self.sent: set[str] = set()
        stripe_emulator.set_webhook(f"{servers[0].url}{WEBHOOK}", WHSEC)

    def fan_out(self, count: int) -> None:
        """Once the first server has had `count` new events, send each to the others too."""
        for _ in range(200):  # the emulator delivers on its own thread (bounded: a hang)
            new = [d for d in self.emulator.deliveries() if d["event_id"] not in self.sent]
            if len({d["event_id"] for d in new}) >= count:
                break
            time.sleep(0.05)
        for delivery in new:
            event_id = delivery["event_id"]
            if event_id in self.sent:
                continue
            self.sent.add(event_id)
            for server in self.servers[1:]:
                sent = self.emulator.deliver_event(
                    "", delivery["type"], url=f"{server.url}{WEBHOOK}", event_id=event_id
                )
                assert sent["status"] == 200, sent


def refund(stripe_emulator: StripeEmulator, payment_intent: str) -> None:
    response = requests.post(
        f"{stripe_emulator.url}/v1/refunds",
        data={"payment_intent": payment_intent},
        headers={"Authorization": f"Bearer {TEST_KEY}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def paid_on(server: LiveServer, stripe_emulator: StripeEmulator) -> dict[str, Any]:
    status, created = http_json("POST", f"{server.url}{CREATE}", {"imageId": "img_7"})
    assert status == 200, created
    return stripe_emulator.complete_session(created["session_id"], "paid")


def delivered(server: LiveServer) -> set[str]:
    return {r["change_id"] for r in log_records(server.logs(), "checkout_order_delivered")}


def until_delivered(server: LiveServer, count: int) -> set[str]:
    wait_for_records(server, "checkout_order_delivered", count)
    time.sleep(0.3)  # a wrong extra delivery, if any, has had its chance to show
    return delivered(server)


def test_two_deployments_on_one_project_each_deliver_exactly_their_own_changes(
    live_server, stripe_emulator, firestore: Firestore
) -> None:
    env = {**firestore.env(), "STRIPE_WEBHOOK_SECRET": WHSEC}
    a = live_server(**env, DEPLOYMENT_ID="shop-a")
    b = live_server(**env, DEPLOYMENT_ID="shop-b")
    account = Account(stripe_emulator, [a, b])
    sa, sb = paid_on(a, stripe_emulator), paid_on(b, stripe_emulator)
    account.fan_out(2)
    refund(stripe_emulator, sa["payment_intent"])
    refund(stripe_emulator, sb["payment_intent"])
    account.fan_out(2)  # charge.refunded, each
    assert until_delivered(a, 2) == {f"{sa['id']}:paid", f"{sa['id']}:refunded"}
    assert until_delivered(b, 2) == {f"{sb['id']}:paid", f"{sb['id']}:refunded"}
    for server, foreign in ((a, sb), (b, sa)):
        status, body = http_json("GET", f"{server.url}{STATUS}?session_id={foreign['id']}")
        assert (status, body.get("code")) == (404, "session_not_found"), body
    _, own = http_json("GET", f"{a.url}{STATUS}?session_id={sa['id']}")
    assert own["outcome"] == "refunded"


def legacy_order(firestore: Firestore, session: dict[str, Any]) -> None:
    """Write a paid order, its delivered change, where a deployment wrote them before scoping."""
    from google.cloud import firestore as gcf

    status = session_status(session)
    order, _ = advance(None, session_fact(status, session["payment_intent"]))
    for entry in order.changes.values():
        entry["published"] = True
    change_id = f"{session['id']}:paid"

    async def write() -> None:
        client = gcf.AsyncClient(project=firestore.project)
        await (
            client.collection("checkout_orders")
            .document(session["id"])
            .set(Order.to_document(order))
        )
        await (
            client.collection("checkout_deliveries")
            .document(change_id)
            .set(
                {"change_id": change_id, "attempts": 1, "delivered_at": time.time(), "claim": None}
            )
        )

    asyncio.run(write())


def test_an_order_recorded_before_the_upgrade_is_adopted_and_never_delivered_twice(
    live_server, stripe_emulator, firestore: Firestore
) -> None:
    server = live_server(**firestore.env(), STRIPE_WEBHOOK_SECRET=WHSEC)
    _, created = http_json("POST", f"{server.url}{CREATE}", {"imageId": "img_7"})
    session = stripe_emulator.complete_session(created["session_id"], "paid")  # no webhook
    legacy_order(firestore, session)
    _, body = http_json("GET", f"{server.url}{STATUS}?session_id={session['id']}")
    assert body["outcome"] == "paid"
    stripe_emulator.set_webhook(f"{server.url}{WEBHOOK}", WHSEC)
    refund(stripe_emulator, session["payment_intent"])
    assert until_delivered(server, 1) == {f"{session['id']}:refunded"}  # paid was, before
    changes = [r["change_id"] for r in log_records(server.logs(), "checkout_order_change")]
    assert changes == [f"{session['id']}:refunded"]
