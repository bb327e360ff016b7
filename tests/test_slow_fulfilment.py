"""A slow or hanging `deliver_order` never wedges the instance: status polls answer at once,
other requests are served, and every wait for a fulfilment has a bound."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from checkout import fulfilment
from checkout.app import CheckoutApi
from checkout.fulfilment import Fulfilment, FulfilmentFailed
from checkout.ledger.memory import MemoryLedger
from checkout.status_cache import StatusCache
from tests.support import (
    SELLS,
    STATUS,
    WHSEC,
    Deliveries,
    completed_session,
    create,
    event_for,
    function_app_for,
    in_crowd,
    post_event,
)
from tests.support import (
    a_session as session,
)

HANG_S = 20.0  # far longer than any answer below may take
PROMPT_S = 8.0  # generous on a busy 2-core machine, and still far below the hang
POLLS = 10


@pytest.fixture
def hanging(deliveries: Deliveries) -> Iterator[tuple[list[str], threading.Event]]:
    """A blocking deliver function that hangs until released (at the latest when the test ends)."""
    release = threading.Event()

    def hang(_session) -> None:
        release.wait(HANG_S)

    deliveries.then = hang
    yield deliveries.calls, release
    release.set()


def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_status_polls_answer_while_the_webhooks_fulfilment_hangs(
    function_app, client, configure, stripe_emulator, hanging, logs
):
    # The review's finding: with a hanging deliver_order, 10 concurrent polls all blocked.
    calls, release = hanging
    configure(STRIPE_WEBHOOK_SECRET=WHSEC)
    paid = completed_session(client, stripe_emulator)
    webhook_answer: list[int] = []
    webhook = threading.Thread(
        target=lambda: webhook_answer.append(
            post_event(
                function_app.test_client(), event_for(paid, "checkout.session.completed")
            ).status_code
        )
    )
    webhook.start()
    wait_until(lambda: calls == [paid["id"]])  # the webhook's attempt is now hanging

    def poll():
        return function_app.test_client().get(STATUS, query_string={"session_id": paid["id"]})

    answers, seconds = timed(lambda: in_crowd([poll] * POLLS))

    assert seconds < PROMPT_S, f"{POLLS} polls took {seconds:.1f} s"
    assert [(a.status_code, a.get_json()["outcome"]) for a in answers] == [(200, "paid")] * POLLS

    # The instance serves everything else too: a new checkout and another session's status.
    def another_checkout():
        created = create(client, {}).get_json()
        return client.get(STATUS, query_string={"session_id": created["session_id"]})

    other, seconds = timed(another_checkout)
    assert (other.status_code, other.get_json()["outcome"]) == (200, "open")
    assert seconds < PROMPT_S
    assert calls == [paid["id"]]  # no poll started a second delivery

    release.set()
    webhook.join(timeout=30)
    assert webhook_answer == [200]
    assert len(logs("checkout_fulfilled")) == 1


def test_without_a_webhook_the_first_poll_waits_briefly_and_the_rest_not_at_all(
    function_app, client, stripe_emulator, hanging, logs
):
    calls, release = hanging
    paid = completed_session(client, stripe_emulator)

    def poll():
        return function_app.test_client().get(STATUS, query_string={"session_id": paid["id"]})

    first, seconds = timed(poll)
    assert (first.status_code, first.get_json()["outcome"]) == (200, "paid")
    assert seconds < fulfilment.STATUS_WAIT_S + PROMPT_S
    answers, seconds = timed(lambda: in_crowd([poll] * POLLS))
    assert seconds < PROMPT_S
    assert {a.status_code for a in answers} == {200}
    assert calls == [paid["id"]]

    # Released, the attempt that the first poll started finishes on its own and is recorded.
    release.set()
    wait_until(lambda: len(logs("checkout_fulfilled")) == 1)
    retrieves = stripe_emulator.calls()["retrieve_session"]
    assert poll().get_json()["outcome"] == "paid"
    assert stripe_emulator.calls()["retrieve_session"] == retrieves  # cached once fulfilled


def test_a_webhook_duplicate_does_not_wait_forever_for_a_hanging_first_delivery(
    function_app, client, configure, stripe_emulator, hanging, deliveries
):
    calls, release = hanging
    configure(STRIPE_WEBHOOK_SECRET=WHSEC)
    api = CheckoutApi(deliver=deliveries, duplicate_event_wait=0.5)
    function_app.serve(function_app_for(api))
    payload = event_for(completed_session(client, stripe_emulator), "checkout.session.completed")
    first = threading.Thread(target=lambda: post_event(function_app.test_client(), payload))
    first.start()
    wait_until(lambda: len(calls) == 1)

    duplicate, seconds = timed(lambda: post_event(client, payload))

    assert duplicate.status_code == 503 and seconds < PROMPT_S
    assert duplicate.get_json()["code"] == "event_in_progress"
    assert duplicate.headers["Retry-After"] == "10"
    release.set()
    first.join(timeout=30)
    api.close()


def test_an_attempt_past_its_bound_has_failed_and_is_retried(logs):
    hang = asyncio.Event()

    attempts: list[str] = []

    async def hangs_the_first_time(session) -> None:
        attempts.append(session.session_id)
        if len(attempts) == 1:
            await hang.wait()

    routine = Fulfilment(
        StatusCache(10), MemoryLedger(10), SELLS, hangs_the_first_time, deliver_timeout=0.2
    )

    async def scenario() -> float:
        started = asyncio.get_running_loop().time()
        with pytest.raises(FulfilmentFailed) as failed:
            await routine.fulfil(session(), event_id="evt_slow")
        assert isinstance(failed.value.__cause__, TimeoutError)
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(scenario()) < PROMPT_S
    [record] = logs("checkout_fulfilment_failed")
    assert record["detail"] == "deliver_order did not finish within 0.2 s"

    assert asyncio.run(routine.fulfil(session())) is True
