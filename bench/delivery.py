"""The DELIVER_ORDER of bench/order_flow.py: each delivery takes BENCH_DELIVERY_SECONDS, and the
worker process notes it where the benchmark can count it.

    DELIVER_ORDER=bench.delivery:hold functions-framework --target fulfil_order

Each call appends `<change id> start|done <unix time>` lines to the file BENCH_DELIVERY_SINK names
(one short write each, so lines from concurrent deliveries never interleave).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

from checkout.orders.model import Change


async def hold(change: Change) -> None:
    """Note the start, hold the delivery BENCH_DELIVERY_SECONDS, note the end."""
    _note(change.change_id, "start")
    await asyncio.sleep(float(os.environ.get("BENCH_DELIVERY_SECONDS", "10")))
    _note(change.change_id, "done")


def _note(change_id: str, what: str) -> None:
    with open(os.environ["BENCH_DELIVERY_SINK"], "a") as sink:
        sink.write(f"{change_id} {what} {time.time()}\n")


def noted(sink: Path) -> list[tuple[str, str, float]]:
    """The sink's lines: (change id, start|done, unix time)."""
    if not sink.exists():
        return []
    rows = []
    for line in sink.read_text().splitlines():
        change_id, what, at = line.split()
        rows.append((change_id, what, float(at)))
    return rows


async def flaky(change: Change) -> None:
    """bench/order_flow.py's faulty run: BENCH_FAIL_SHARE of the attempts fail at random (a seeded
    draw per change and attempt), and a change whose draw falls under BENCH_DOWN_SHARE fails every
    attempt until the file BENCH_RECOVERED names exists (a downstream that is down for it)."""
    attempt = sum(
        1
        for c, what, _ in noted(Path(os.environ["BENCH_DELIVERY_SINK"]))
        if c == change.change_id and what == "start"
    )
    _note(change.change_id, "start")
    await asyncio.sleep(float(os.environ.get("BENCH_DELIVERY_SECONDS", "0")))
    down = random.Random(change.change_id).random() < float(os.environ["BENCH_DOWN_SHARE"])
    if down and not Path(os.environ["BENCH_RECOVERED"]).exists():
        _note(change.change_id, "fail")
        raise RuntimeError("the downstream is down")
    if random.Random(f"{change.change_id}:{attempt}").random() < float(
        os.environ["BENCH_FAIL_SHARE"]
    ):
        _note(change.change_id, "fail")
        raise RuntimeError("the downstream failed this once")
    _note(change.change_id, "done")
