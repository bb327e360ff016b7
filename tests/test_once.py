"""SingleFlight: concurrent callers with one key share one attempt; nothing is remembered."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from checkout.once import SingleFlight
from tests.support import in_crowd


def test_concurrent_callers_share_one_attempt_and_its_result():
    async def main() -> tuple[list[int], int]:
        flight: SingleFlight[int] = SingleFlight()
        gate = asyncio.Event()
        calls = 0

        async def action() -> int:
            nonlocal calls
            calls += 1
            await gate.wait()
            return 7

        waiting = [asyncio.ensure_future(flight.run("k", action)) for _ in range(5)]
        await asyncio.sleep(0)
        gate.set()
        return list(await asyncio.gather(*waiting)), calls

    results, calls = asyncio.run(main())
    assert results == [7] * 5
    assert calls == 1


def test_nothing_is_remembered_after_the_attempt():
    async def main() -> int:
        flight: SingleFlight[int] = SingleFlight()
        calls = 0

        async def action() -> int:
            nonlocal calls
            calls += 1
            return calls

        await flight.run("k", action)
        await flight.run("k", action)
        return calls

    assert asyncio.run(main()) == 2


def three_waiters_of_a_failure(
    flight: SingleFlight[int], error: Exception
) -> list[BaseException | int]:
    """What three coroutines waiting on one attempt, which raises `error`, each get."""

    async def main() -> list[BaseException | int]:
        gate = asyncio.Event()

        async def action() -> int:
            await gate.wait()
            raise error

        waiting = [asyncio.ensure_future(flight.run("k", action)) for _ in range(3)]
        await asyncio.sleep(0)
        gate.set()
        return list(await asyncio.gather(*waiting, return_exceptions=True))

    return asyncio.run(main())


def test_a_failure_reaches_every_waiting_caller():
    down = RuntimeError("down")
    assert three_waiters_of_a_failure(SingleFlight(), down) == [down] * 3


def test_a_flight_of_an_abandoned_event_loop_is_not_joined_from_another():
    # A loop that stopped with the attempt pending (its tasks never finish): a caller on another
    # loop starts its own attempt instead of awaiting one that cannot end.
    flight: SingleFlight[int] = SingleFlight()
    never = asyncio.Event()

    async def stuck() -> int:
        await never.wait()
        return 0

    async def start_and_leave() -> asyncio.Future[int]:
        waiter = asyncio.ensure_future(flight.run("k", stuck))
        await asyncio.sleep(0)
        return waiter

    abandoned = asyncio.new_event_loop()
    left = abandoned.run_until_complete(start_and_leave())
    assert "k" in flight and not left.done()

    async def answer() -> int:
        return 7

    async def elsewhere() -> int:
        return await flight.run("k", answer)

    try:
        assert asyncio.run(elsewhere()) == 7
    finally:
        never.set()  # let the abandoned loop end its attempt, so that nothing is left pending
        abandoned.run_until_complete(left)
        abandoned.close()


def test_each_waiter_may_get_its_own_copy_of_the_failure():
    class Down(Exception):
        pass

    flight: SingleFlight[int] = SingleFlight(waiter_error=lambda e: Down(*e.args))
    results = three_waiters_of_a_failure(flight, Down("down"))
    assert all(isinstance(r, Down) and r.args == ("down",) for r in results)
    assert len({id(r) for r in results}) == 3


class Crowd:
    """Threads calling one SingleFlight at once; the attempt lasts until every one has called."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.entered = 0
        self.attempts = 0
        self._lock = threading.Lock()
        self._all_in = threading.Event()

    def call(self, flight: SingleFlight[int], action: Callable[[], int]) -> int:
        with self._lock:
            self.entered += 1
            if self.entered == self.count:
                self._all_in.set()
        return flight.run_blocking("k", action)

    def attempt(self) -> None:
        """Inside the attempt: wait for every caller, then a moment to reach the flight."""
        self.attempts += 1
        self._all_in.wait(30)
        time.sleep(0.1)  # from `entered` to the flight's lock is a few bytecodes


def test_threads_with_one_key_share_one_attempt_and_nothing_is_remembered():
    flight: SingleFlight[int] = SingleFlight()
    crowd = Crowd(5)

    def action() -> int:
        crowd.attempt()
        return 7

    assert in_crowd([lambda: crowd.call(flight, action)] * 5) == [7] * 5
    assert crowd.attempts == 1
    assert "k" not in flight
    assert flight.run_blocking("k", lambda: 8) == 8


def test_a_failure_reaches_the_other_threads_as_the_waiter_error_says():
    flight: SingleFlight[int] = SingleFlight(waiter_error=lambda e: LookupError(*e.args))
    crowd = Crowd(3)

    def action() -> int:
        crowd.attempt()
        raise KeyError("gone")

    results = in_crowd([lambda: crowd.call(flight, action)] * 3)
    # The thread that ran the attempt sees its own error; the others, each its own copy.
    assert sorted(type(r).__name__ for r in results) == ["KeyError", "LookupError", "LookupError"]
    assert len({id(r) for r in results}) == 3
    assert crowd.attempts == 1


def test_a_joined_attempt_is_under_way_before_it_is_awaited():
    async def main() -> tuple[bool, int, int]:
        flight: SingleFlight[int] = SingleFlight()

        async def action() -> int:
            return 7

        outcome = flight.join("k", action)
        under_way = "k" in flight
        return under_way, await outcome, len(flight)

    assert asyncio.run(main()) == (True, 7, 0)
