"""One OS process in a multi-process ledger test: fulfil one session through the Firestore ledger.

    python -m tests.ledger_worker --project P --session cs_test_... --sink FILE --go FILE [...]

It builds its ledger and opens its connection, prints `ready <claim owner>`, waits for the file
named by --go to exist, then calls fulfil_once once. Its delivery appends `<pid> <unix time>` to
--sink and then sleeps --hold seconds (a test may SIGKILL it then). Last, it prints one JSON line
with the outcome.
Needs FIRESTORE_EMULATOR_HOST.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

from checkout.ledger import FulfilmentInProgress, LedgerUnavailable
from checkout.ledger.firestore import FirestoreLedger
from checkout.session import SessionStatus


async def run(args: argparse.Namespace) -> dict:
    ledger = FirestoreLedger(
        project=args.project,
        database="(default)",
        lease_seconds=args.lease,
        claim_wait_seconds=args.wait,
    )
    await ledger.event_handled("evt_warm_up")  # connect before the start line, not after it
    print(f"ready {ledger.owner}", flush=True)
    go = Path(args.go)
    while not go.exists():
        await asyncio.sleep(0.005)

    session = SessionStatus(
        session_id=args.session,
        status="complete",
        payment_status="paid",
        metadata={"imageId": "img_1"},
        amount_total=200,
        currency="usd",
        livemode=False,
    )

    async def deliver() -> None:
        with open(args.sink, "a") as sink:
            sink.write(f"{os.getpid()} {time.time()}\n")
        await asyncio.sleep(args.hold)

    try:
        delivered = await ledger.fulfil_once(session, deliver, event_id=args.event)
    except FulfilmentInProgress:
        return {"pid": os.getpid(), "outcome": "in_progress"}
    except LedgerUnavailable as error:
        return {"pid": os.getpid(), "outcome": "unavailable", "detail": str(error)}
    return {
        "pid": os.getpid(),
        "outcome": "delivered" if delivered else "already",
        "owner": ledger.owner,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--project", required=True)
    parser.add_argument("--session", required=True)
    parser.add_argument("--sink", required=True)
    parser.add_argument("--go", required=True)
    parser.add_argument("--event")
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--wait", type=float, default=10.0)
    print(json.dumps(asyncio.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
