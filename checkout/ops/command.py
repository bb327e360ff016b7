"""An operator command's own event loop: its work on the runtime's parts, then their closing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from checkout.runtime import Runtime

T = TypeVar("T")


def run(runtime: Runtime, work: Callable[[Runtime], Awaitable[T]]) -> T:
    """`work(runtime)` in a loop of its own (a command's, a job's); then close what it opened."""

    async def run() -> T:
        try:
            return await work(runtime)
        finally:
            runtime.gateway.close()  # on the loop its pool was opened on
            await asyncio.sleep(0)  # the close it schedules runs before the loop ends

    try:
        return asyncio.run(run())
    finally:
        runtime.publisher.close()
