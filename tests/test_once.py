"""OncePerKey: one successful run per key, shared by concurrent callers, in bounded memory."""

from __future__ import annotations

import asyncio

import pytest

from checkout.once import OncePerKey, StillRunning


def appending(runs: list[str], value: str):
    async def action() -> None:
        runs.append(value)

    return action


async def nothing() -> None:
    return None


def test_an_action_runs_once_per_key():
    once = OncePerKey(10)
    runs: list[str] = []
    assert asyncio.run(once.run("a", appending(runs, "a"))) is True
    assert asyncio.run(once.run("a", appending(runs, "a"))) is False
    assert asyncio.run(once.run("b", appending(runs, "b"))) is True
    assert runs == ["a", "b"]
    assert "a" in once and "c" not in once


def test_a_failure_is_not_remembered():
    once = OncePerKey(10)

    async def fail() -> None:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        asyncio.run(once.run("a", fail))
    assert "a" not in once
    assert asyncio.run(once.run("a", nothing)) is True


def test_concurrent_callers_share_one_run():
    once = OncePerKey(10)
    runs: list[int] = []

    async def slow() -> None:
        runs.append(1)
        await asyncio.sleep(0.1)

    async def crowd() -> list[bool]:
        return await asyncio.gather(*(once.run("a", slow) for _ in range(20)))

    results = asyncio.run(crowd())
    assert len(runs) == 1
    assert sorted(results) == [False] * 19 + [True]


def test_a_waiting_caller_tries_itself_when_the_first_attempt_fails():
    once = OncePerKey(10)
    attempts: list[str] = []

    async def failing_slowly() -> None:
        attempts.append("first")
        await asyncio.sleep(0.1)
        raise RuntimeError("down")

    async def second() -> None:
        attempts.append("second")

    async def race() -> tuple[BaseException | bool, bool]:
        first = asyncio.create_task(once.run("a", failing_slowly))
        await asyncio.sleep(0.01)  # the first attempt is under way
        retried = await once.run("a", second)
        return (await asyncio.gather(first, return_exceptions=True))[0], retried

    first, retried = asyncio.run(race())
    assert isinstance(first, RuntimeError)
    assert retried is True
    assert attempts == ["first", "second"]


def test_a_caller_that_goes_away_leaves_the_attempt_to_the_others():
    once = OncePerKey(10)
    attempts: list[str] = []
    release = asyncio.Event()

    async def slow() -> None:
        attempts.append("first")
        await release.wait()

    async def race() -> bool:
        first = asyncio.create_task(once.run("a", slow))
        await asyncio.sleep(0.01)
        waiter = asyncio.create_task(once.run("a", appending(attempts, "second")))
        await asyncio.sleep(0.01)
        first.cancel()  # a client that hung up
        release.set()
        return await asyncio.wait_for(waiter, 5)

    assert asyncio.run(race()) is False  # the first attempt finished, for the waiter
    assert attempts == ["first"]
    assert "a" in once


def test_every_wait_is_bounded_and_a_hanging_attempt_fails_no_one_else():
    once = OncePerKey(10)

    async def hanging() -> None:
        await asyncio.sleep(60)

    async def scenario() -> tuple[float, float, bool]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StillRunning):
            await once.run("a", hanging, wait=0.2)  # the starter gives up; the attempt goes on
        starter = loop.time() - started
        assert once.running("a")
        started = loop.time()
        with pytest.raises(StillRunning):
            await once.run("a", nothing, wait=30, wait_for_others=0)  # does not wait at all
        joiner = loop.time() - started
        other_key = await once.run("b", nothing, wait=0.2)  # other keys are not held up
        return starter, joiner, other_key

    starter, joiner, other_key = asyncio.run(scenario())
    assert starter < 5 and joiner < 1 and other_key is True
    assert "a" not in once  # asyncio.run cancelled the hanging attempt: not a success


def test_memory_is_bounded_least_recently_seen_first():
    once = OncePerKey(2)
    for key in "abc":
        asyncio.run(once.run(key, nothing))
    assert "a" not in once and "b" in once and "c" in once
    asyncio.run(once.run("b", nothing))  # seen again: now the most recent
    asyncio.run(once.run("d", nothing))
    assert "b" in once and "c" not in once
