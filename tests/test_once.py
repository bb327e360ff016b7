"""SingleFlight: concurrent callers with one key share one attempt; nothing is remembered."""

from __future__ import annotations

import asyncio

from checkout.once import SingleFlight


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


def test_a_failure_reaches_every_waiting_caller():
    async def main() -> list[BaseException | int]:
        flight: SingleFlight[int] = SingleFlight()
        gate = asyncio.Event()

        async def action() -> int:
            await gate.wait()
            raise RuntimeError("down")

        waiting = [asyncio.ensure_future(flight.run("k", action)) for _ in range(3)]
        await asyncio.sleep(0)
        gate.set()
        return list(await asyncio.gather(*waiting, return_exceptions=True))

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(main()))
