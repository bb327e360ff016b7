"""What the Firestore ledger costs: cold-start import time, and round trips against the emulator.

    python -m bench.ledger            # needs gcloud + Java (the Firestore emulator)

1. Import: `import checkout.api.app` alone, then with `checkout.orders.ledger.firestore` (which
   brings google.cloud.firestore and its gRPC stack), each in a fresh interpreter, median of several
   runs.
   The difference is what ORDER_LEDGER=firestore adds to an instance's cold start.
2. Latency against Google's Firestore emulator on loopback, one request at a time: recording a
   paid session's first fact (the order's create, the event's mark), a duplicate of it (reads
   only), marking its change published, a delivery's claim and its record, and the status
   endpoint's read. Real Firestore adds the
   network round trip to its region to each call; the emulator shows the client's own cost.

Prints a Markdown table (docs/ledger.md quotes it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TypeVar

from bench.servers import ROOT
from devtools.firestore_emulator import FirestoreEmulator

T = TypeVar("T")


def import_seconds(statement: str, runs: int) -> float:
    """Median wall time of a fresh interpreter running `statement` (process start included)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], cwd=ROOT, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def latencies(host: str, rounds: int) -> dict[str, list[float]]:
    os.environ["FIRESTORE_EMULATOR_HOST"] = host
    from checkout.orders.ledger.firestore import FirestoreLedger
    from checkout.orders.model import SessionFact, session_fact
    from checkout.orders.session import SessionStatus

    ledger = FirestoreLedger(
        project=f"bench-{os.getpid()}", database="(default)", deployment_id="local"
    )

    def paid(n: int) -> SessionFact:
        session = SessionStatus(
            session_id=f"cs_test_bench{n}",
            status="complete",
            payment_status="paid",
            metadata={"imageId": "img"},
            amount_total=200,
            currency="usd",
        )
        return session_fact(session, f"pi_bench{n}")

    results: dict[str, list[float]] = {
        "first fact (order create + event mark)": [],
        "duplicate event (reads only)": [],
        "change marked published": [],
        "delivery claim": [],
        "delivery record": [],
        "status read (settled order)": [],
    }

    async def timed(name: str, operation: Awaitable[T]) -> T:
        started = time.perf_counter()
        result = await operation
        results[name].append(time.perf_counter() - started)
        return result

    for n in range(20):  # warm-up: connection, and the emulator's JIT
        await ledger.apply(f"cs_test_bench{-1 - n}", paid(-1 - n), token="warm")
    for n in range(rounds):
        sid, event = f"cs_test_bench{n}", f"evt_bench{n}"
        first = await timed(
            "first fact (order create + event mark)",
            ledger.apply(sid, paid(n), event_id=event, token="t"),
        )
        await timed(
            "duplicate event (reads only)", ledger.apply(sid, paid(n), event_id=event, token="u")
        )
        await timed("change marked published", ledger.mark_published(sid, ["paid"], "t"))
        (change,) = first.new
        await timed("delivery claim", ledger.claim_delivery(change, "d", lease=60))
        await timed("delivery record", ledger.complete_delivery(change.change_id, "d"))
        await timed("status read (settled order)", ledger.order(sid, quick=True))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--import-runs", type=int, default=9)
    args = parser.parse_args()
    reason = FirestoreEmulator.missing()
    if reason:
        raise SystemExit(reason)

    base = import_seconds("import checkout.api.app", args.import_runs)
    with_firestore = import_seconds(
        "import checkout.api.app, checkout.orders.ledger.firestore", args.import_runs
    )
    with FirestoreEmulator() as emulator:
        measured = asyncio.run(latencies(emulator.host, args.rounds))

    print(
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}, "
        f"load average {os.getloadavg()[0]:.1f}.\n"
    )
    print("| what | median | p95 |")
    print("|---|---:|---:|")
    print(f"| `import checkout.api.app` (fresh interpreter) | {base * 1000:.0f} ms | |")
    print(
        f"| ... plus `checkout.orders.ledger.firestore` | {with_firestore * 1000:.0f} ms "
        f"(+{(with_firestore - base) * 1000:.0f} ms) | |"
    )
    for name, values in measured.items():
        values.sort()
        p95 = values[int(len(values) * 0.95) - 1]
        median = statistics.median(values)
        print(f"| {name}, emulator | {median * 1000:.1f} ms | {p95 * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
