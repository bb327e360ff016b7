"""A `deliver_order` for multi-process tests that other processes can see.

    DELIVER_ORDER=tests.delivery_sink:deliver_to_sink functions-framework --target checkout_api

The function is main.py's, unchanged; DELIVER_ORDER (README "Configuration") names this file's
deliver function, as a team names its own. It appends `<pid> <session id> <unix time>` to the
file named by DELIVERY_SINK, then sleeps DELIVERY_HOLD_SECONDS (default 0), long enough for a
test to SIGKILL it mid-delivery.
"""

from __future__ import annotations

import asyncio
import os
import time

from checkout.session import SessionStatus


async def deliver_to_sink(session: SessionStatus) -> None:
    with open(os.environ["DELIVERY_SINK"], "a") as sink:
        sink.write(f"{os.getpid()} {session.session_id} {time.time()}\n")
    await asyncio.sleep(float(os.environ.get("DELIVERY_HOLD_SECONDS", "0")))
