"""`checkout_api` for multi-process tests, with a `deliver_order` that other processes can see.

    functions-framework --source tests/delivery_sink.py --target checkout_api   (PYTHONPATH=.)

The function is main.py's, unchanged. Only `deliver_order`, the extension point a team replaces,
is this file's: it appends `<pid> <session id> <unix time>` to the file named by DELIVERY_SINK,
then sleeps DELIVERY_HOLD_SECONDS (default 0), long enough for a test to SIGKILL it mid-delivery.
"""

from __future__ import annotations

import asyncio
import os
import time

import checkout.fulfilment
from checkout.stripe_gateway import SessionStatus
from main import checkout_api

__all__ = ["checkout_api"]


async def deliver_to_sink(session: SessionStatus) -> None:
    with open(os.environ["DELIVERY_SINK"], "a") as sink:
        sink.write(f"{os.getpid()} {session.session_id} {time.time()}\n")
    await asyncio.sleep(float(os.environ.get("DELIVERY_HOLD_SECONDS", "0")))


checkout.fulfilment.deliver_order = deliver_to_sink
