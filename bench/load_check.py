"""Load check (not a unit test): 64 connections of mixed traffic for 30 s; no error, flat memory.

    .venv/bin/python -m bench.load_check [--seconds 30] [--connections 64] [--latency-ms 50]

Starts the Stripe emulator (with latency) and `functions-framework` (one uvicorn worker) as
subprocesses on loopback, seeds open and completed sessions, warms up, then drives create /
status(open) / status(complete) in turn from every connection with aiohttp. Every answer must be
a 200 with the expected body, the worker's RSS after the run must be within 10% of its RSS after
the warm-up, and the server's output must be JSON lines with no ERROR. Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bench.servers import (
    BENCH_KEY,
    ROOT,
    FunctionServer,
    StripeEmulator,
    http_json,
    memory_kb,
)

CREATE = "/api/checkout/embedded-session"
STATUS = "/api/checkout/session-status"
RESULTS = ROOT / "bench" / "results"
SEEDED_SESSIONS = 200  # per kind (open, complete): status traffic cycles through them
MAX_RSS_GROWTH = 0.10


@dataclass
class Tally:
    requests: Counter = field(default_factory=Counter)  # by kind
    errors: Counter = field(default_factory=Counter)  # by kind and what went wrong
    latencies: list[float] = field(default_factory=list)


async def _drive(
    url: str, open_ids: list[str], complete_ids: list[str], connections: int, seconds: float
) -> Tally:
    import aiohttp

    tally = Tally()
    deadline = time.monotonic() + seconds

    async def one(session: aiohttp.ClientSession, kind: str, n: int) -> None:
        if kind == "create":
            request = session.post(url + CREATE, json={"imageId": f"img_load_{n}"})
        else:
            ids = open_ids if kind == "status_open" else complete_ids
            request = session.get(url + STATUS, params={"session_id": ids[n % len(ids)]})
        began = time.monotonic()
        try:
            async with request as response:
                body = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as error:
            tally.errors[f"{kind}: {type(error).__name__}"] += 1
            return
        finally:
            tally.requests[kind] += 1
            tally.latencies.append(time.monotonic() - began)
        if response.status != 200:
            tally.errors[f"{kind}: HTTP {response.status} {body.get('code')}"] += 1
        elif kind == "create" and not body.get("client_secret", "").startswith(
            body.get("session_id", "?") + "_secret_"
        ):
            tally.errors[f"{kind}: unexpected body"] += 1
        elif kind != "create" and body.get("status") != kind.removeprefix("status_"):
            tally.errors[f"{kind}: unexpected status {body.get('status')}"] += 1

    async def connection(offset: int, session: aiohttp.ClientSession) -> None:
        n = offset
        while time.monotonic() < deadline:  # bounded by the deadline
            n += 1
            await one(session, ("create", "status_open", "status_complete")[n % 3], n)

    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(connection(i * 7919, session) for i in range(connections)))
    return tally


def _seed(url: str, emulator: StripeEmulator) -> tuple[list[str], list[str]]:
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda _: http_json(url + CREATE, {})["session_id"], range(400)))
        complete_ids, open_ids = ids[: len(ids) // 2], ids[len(ids) // 2 :]
        list(pool.map(emulator.complete, complete_ids))
    return open_ids[:SEEDED_SESSIONS], complete_ids[:SEEDED_SESSIONS]


def _read_log(text: str) -> tuple[int, int]:
    """Lines of the server's output (stdout and stderr) that are not JSON, and ERROR lines."""
    not_json = errors = 0
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            not_json += 1
            continue
        errors += isinstance(entry, dict) and entry.get("severity") == "ERROR"
    return not_json, errors


def _rss_kb(pid: int) -> int:
    return memory_kb(pid)["Rss"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load_check", description=__doc__)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers (event loops)")
    parser.add_argument("--latency-ms", type=float, default=50, help="the emulator's latency")
    args = parser.parse_args(argv)
    if not (0 < args.seconds <= 600 and 0 <= args.warmup <= 60 and 0 < args.connections <= 512):
        parser.error("keep --seconds in (0, 600], --warmup in [0, 60], --connections in (0, 512]")

    RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / "load-check-server.log"
    with log_path.open("wb") as log, StripeEmulator(args.latency_ms) as emulator:
        env = {
            "FRONTEND_URL": "http://localhost:5173",
            "STRIPE_SECRET_KEY": BENCH_KEY,
            "STRIPE_API_BASE": emulator.url,
        }
        with FunctionServer(env, log, workers=args.workers) as server:
            server.wait_ready("/")
            worker = server.worker_pids(args.workers)[0]
            print(
                f"function {server.url} (WORKERS={args.workers}, worker pid {worker}), "
                f"emulator {emulator.url} ({args.latency_ms:g} ms)",
                flush=True,
            )
            open_ids, complete_ids = _seed(server.url, emulator)
            drive = (server.url, open_ids, complete_ids, args.connections)
            if args.warmup:
                warm = asyncio.run(_drive(*drive, args.warmup))
                print(f"warm-up: {sum(warm.requests.values())} requests in {args.warmup:g} s")
            rss_start = _rss_kb(worker)
            tally = asyncio.run(_drive(*drive, args.seconds))
            rss_end = _rss_kb(worker)
            alive = server.process.poll() is None

    not_json, logged_errors = _read_log(log_path.read_text(errors="replace"))
    total = sum(tally.requests.values())
    errors = sum(tally.errors.values())
    growth = (rss_end - rss_start) / rss_start
    latencies = sorted(tally.latencies)
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0
    report = {
        "connections": args.connections,
        "seconds": args.seconds,
        "requests": total,
        "rate_per_s": round(total / args.seconds, 1),
        "by_kind": dict(tally.requests),
        "p99_ms": round(p99, 1),
        "errors": errors,
        "error_kinds": dict(tally.errors),
        "worker_rss_kb_start": rss_start,
        "worker_rss_kb_end": rss_end,
        "rss_growth_pct": round(100 * growth, 1),
        "server_log_lines_not_json": not_json,
        "server_log_errors": logged_errors,
    }
    print(json.dumps(report, indent=2))
    failures = []
    if errors:
        failures.append(f"{errors} errors: {dict(tally.errors)}")
    if abs(growth) > MAX_RSS_GROWTH:
        failures.append(f"worker RSS moved {100 * growth:+.1f}% (limit ±{100 * MAX_RSS_GROWTH:g}%)")
    if not_json or logged_errors:
        failures.append(f"server log: {not_json} non-JSON lines, {logged_errors} ERROR lines")
    if not alive:
        failures.append("the function server exited during the run")
    if total == 0:
        failures.append("no request completed")
    for failure in failures:
        print(f"FAIL: {failure}")
    print("OK" if not failures else f"see {log_path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
