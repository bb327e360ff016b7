"""What the Firestore ledger costs: cold-start import time, and round trips against the emulator.

    python -m bench.ledger            # needs gcloud + Java (the Firestore emulator)

1. Import: `import checkout.app` alone, then with `checkout.ledger.firestore` (which brings
   google.cloud.firestore and its gRPC stack), each in a fresh interpreter, median of several runs.
   The difference is what ORDER_LEDGER=firestore adds to an instance's cold start.
2. Latency against Google's Firestore emulator on loopback, one request at a time: a first
   fulfilment (create with claim, then the completing transaction), a duplicate of a fulfilled
   session, an event lookup and mark, and the status endpoint's read. Real Firestore adds the
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

from bench.servers import ROOT
from devtools.firestore_emulator import FirestoreEmulator


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
    from checkout.ledger.firestore import FirestoreLedger
    from checkout.session import SessionStatus

    ledger = FirestoreLedger(project=f"bench-{os.getpid()}", database="(default)", lease_seconds=60)

    async def deliver() -> None:
        return None

    def session(n: int) -> SessionStatus:
        return SessionStatus(
            session_id=f"cs_test_bench{n}",
            status="complete",
            payment_status="paid",
            metadata={"imageId": "img"},
            amount_total=200,
            currency="usd",
        )

    results: dict[str, list[float]] = {
        "first fulfilment (claim + complete)": [],
        "duplicate of a fulfilled session": [],
        "event lookup": [],
        "event mark": [],
        "status read (settled order)": [],
    }

    async def timed(name: str, operation: Awaitable[object]) -> None:
        started = time.perf_counter()
        await operation
        results[name].append(time.perf_counter() - started)

    for n in range(20):  # warm-up: connection, and the emulator's JIT
        await ledger.fulfil_once(session(-1 - n), deliver)
    for n in range(rounds):
        paid, event = session(n), f"evt_bench{n}"
        await timed("first fulfilment (claim + complete)", ledger.fulfil_once(paid, deliver))
        await timed("duplicate of a fulfilled session", ledger.fulfil_once(paid, deliver))
        await timed("event lookup", ledger.event_handled(event))
        await timed("event mark", ledger.mark_event_handled(event, "x", None))
        await timed("status read (settled order)", ledger.settled_status(paid.session_id))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--import-runs", type=int, default=9)
    args = parser.parse_args()
    reason = FirestoreEmulator.missing()
    if reason:
        raise SystemExit(reason)

    base = import_seconds("import checkout.app", args.import_runs)
    with_firestore = import_seconds(
        "import checkout.app, checkout.ledger.firestore", args.import_runs
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
    print(f"| `import checkout.app` (fresh interpreter) | {base * 1000:.0f} ms | |")
    print(
        f"| ... plus `checkout.ledger.firestore` | {with_firestore * 1000:.0f} ms "
        f"(+{(with_firestore - base) * 1000:.0f} ms) | |"
    )
    for name, values in measured.items():
        values.sort()
        p95 = values[int(len(values) * 0.95) - 1]
        median = statistics.median(values)
        print(f"| {name}, emulator | {median * 1000:.1f} ms | {p95 * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
