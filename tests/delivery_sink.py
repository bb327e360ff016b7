"""DELIVER_ORDER functions for multi-process tests, whose calls other processes can see.

    DELIVER_ORDER=tests.delivery_sink:deliver_to_sink functions-framework --target fulfil_order

main.py is unchanged; DELIVER_ORDER names one of these, as a team names its own. Each appends
`<pid> <change id> start|done <unix time>` lines to the file named by DELIVERY_SINK, so a test
can tell how many deliveries ran and whether two ever overlapped.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from checkout.orders.model import Change


def _note(change: Change, what: str) -> None:
    with open(os.environ["DELIVERY_SINK"], "a") as sink:
        sink.write(f"{os.getpid()} {change.change_id} {what} {time.time()}\n")


async def deliver_to_sink(change: Change) -> None:
    """Note the delivery, then hold it DELIVERY_HOLD_SECONDS (default 0)."""
    _note(change, "start")
    await asyncio.sleep(float(os.environ.get("DELIVERY_HOLD_SECONDS", "0")))
    _note(change, "done")


def blocking_delivery(change: Change) -> None:
    """A plain (blocking) function, as many teams write: it runs on a worker thread.

    It holds until the file DELIVERY_RELEASE names exists (the test's signal), and for
    DELIVERY_HOLD_SECONDS at most (without DELIVERY_RELEASE, for exactly that long).
    """
    _note(change, "start")
    release = os.environ.get("DELIVERY_RELEASE")
    deadline = time.monotonic() + float(os.environ.get("DELIVERY_HOLD_SECONDS", "0"))
    while time.monotonic() < deadline and not (release and Path(release).exists()):
        time.sleep(0.01)
    _note(change, "done")


async def fails_the_first_time(change: Change) -> None:
    """Fails once per change (the print shop is down), then succeeds."""
    marker = Path(os.environ["DELIVERY_SINK"]).with_suffix(f".failed-{change.key}")
    _note(change, "start")
    if not marker.exists():
        marker.touch()
        raise RuntimeError("the print shop is down")
    _note(change, "done")


def deliveries(sink: Path) -> list[tuple[int, str, str, float]]:
    """The sink's lines: (pid, change id, start|done, time)."""
    if not sink.exists():
        return []
    rows = []
    for line in sink.read_text().splitlines():
        pid, change_id, what, at = line.split()
        rows.append((int(pid), change_id, what, float(at)))
    return rows


async def fails_while_marked(change: Change) -> None:
    """Fails while the file DELIVERY_FAILING names exists (the downstream is down)."""
    _note(change, "start")
    if Path(os.environ["DELIVERY_FAILING"]).exists():
        _note(change, "fail")
        raise RuntimeError("the print shop is down")
    _note(change, "done")


async def blocks_the_loop(change: Change) -> None:
    """An `async def` that makes one synchronous call (an SDK without async) of
    DELIVERY_HOLD_SECONDS: it blocks the worker's event loop that long."""
    _note(change, "start")
    time.sleep(float(os.environ.get("DELIVERY_HOLD_SECONDS", "0")))
    _note(change, "done")


def access_of(sink: Path, session_id: str) -> str | None:
    """What `access_template` last left for a session: granted, revoked, or None (never ran)."""
    path = sink.with_suffix(f".access-{session_id}")
    return path.read_text() if path.exists() else None


async def access_template(change: Change, state: Any = None) -> None:
    """docs/webhooks.md's template, against a file per session: access follows the order's state.

    Given no state (the worker before it passed one), the template as it was: unlock on paid,
    revoke on refunded. An `order.paid` run waits for the file DELIVERY_RELEASE names, if set,
    and fails its first time (the slow downstream of issue 28's third reproduction).
    """
    _note(change, "start")
    release = os.environ.get("DELIVERY_RELEASE")
    if release and change.type == "order.paid":
        while not Path(release).exists():
            await asyncio.sleep(0.01)
        marker = Path(os.environ["DELIVERY_SINK"]).with_suffix(f".failed-{change.key}")
        if not marker.exists():
            marker.touch()
            _note(change, "fail")
            raise RuntimeError("the print shop is down")
    access = Path(os.environ["DELIVERY_SINK"]).with_suffix(f".access-{change.session_id}")
    if state is not None:
        access.write_text("granted" if state.outcome == "paid" else "revoked")
    elif change.type == "order.paid":
        access.write_text("granted")
    elif change.type in ("order.refunded", "order.dispute_lost"):
        access.write_text("revoked")
    _note(change, "done")
