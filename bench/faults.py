"""`python -m bench.faults`: how long each fault takes to answer, against its documented budget.

test_faults.py and test_keys.py (tests/) check what a budget counts (the attempts, which timeout
ended them); they read no clock, because a busy machine would make them flaky. This measures the
time. Each case runs a fresh function (production server) against the Stripe emulator or the
Secret Manager fake, times one request, and prints seconds / budget. The budget is the worst case
config.py adds up for the Stripe or Secret Manager calls alone (`stripe_budget_seconds`,
SECRET_MANAGER_BUDGET_SECONDS), so a hang lands just above 1 (the rest of the request). The deploy's
request timeout is sized for the budget plus REQUEST_MARGIN_SECONDS: past that, the command exits 1.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import date

from bench.servers import BENCH_KEY, FunctionServer, SecretManagerFake, StripeEmulator, http_json
from checkout.config import (
    REQUEST_MARGIN_SECONDS,
    SECRET_MANAGER_BUDGET_SECONDS,
    stripe_budget_seconds,
)
from devtools.loopback import free_port

CREATE = "/api/checkout/embedded-session"
SECRET_NAME = "projects/bench-project/secrets/stripe-key"
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Case:
    name: str
    budget: float
    expected: int  # the HTTP status the contract gives this fault
    env: dict[str, str] = field(default_factory=dict)
    stripe_faults: dict[str, object] | None = None
    secret_failure: str | None = None  # with the key read from the Secret Manager fake


def stripe_case(name: str, timeout: float, retries: int, expected: int, **faults: object) -> Case:
    env = {"STRIPE_TIMEOUT_SECONDS": str(timeout), "STRIPE_MAX_RETRIES": str(retries)}
    return Case(name, stripe_budget_seconds(timeout, retries), expected, env, faults)


CASES = [
    stripe_case("Stripe 500 on every try (2 s timeout, 2 retries)", 2, 2, 502, mode="error_500"),
    stripe_case("Stripe 429 (2 s timeout, 2 retries)", 2, 2, 503, mode="rate_limit_429"),
    stripe_case("Stripe hangs (0.5 s timeout, 0 retries)", 0.5, 0, 504, mode="hang"),
    stripe_case("Stripe hangs (0.5 s timeout, 1 retry)", 0.5, 1, 504, mode="hang"),
    Case(
        "Stripe's port closed (5 s timeout, 1 retry: refused, so only the backoff)",
        stripe_budget_seconds(0, 1),
        504,
        {"STRIPE_TIMEOUT_SECONDS": "5", "STRIPE_MAX_RETRIES": "1", "CLOSED_PORT": "1"},
    ),
    Case(
        "Secret Manager 503 on every try",
        SECRET_MANAGER_BUDGET_SECONDS,
        503,
        secret_failure="unavailable",
    ),
]


def post(url: str) -> int:
    request = urllib.request.Request(
        url, data=b"{}", method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with _opener.open(request, timeout=120) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def run(case: Case, emulator: StripeEmulator) -> tuple[float, int]:
    http_json(f"{emulator.url}/_emulator/reset", {})
    env = {"STRIPE_SECRET_KEY": BENCH_KEY, "STRIPE_API_BASE": emulator.url, **case.env}
    if env.pop("CLOSED_PORT", None):
        env["STRIPE_API_BASE"] = f"http://127.0.0.1:{free_port()}"
    secrets = None
    if case.secret_failure:
        secrets = SecretManagerFake(SECRET_NAME, BENCH_KEY)
        http_json(f"{secrets.url}/_emulator/failure", {"mode": case.secret_failure})
        del env["STRIPE_SECRET_KEY"]
        env |= {"STRIPE_SECRET_NAME": SECRET_NAME, "SECRET_MANAGER_ENDPOINT": secrets.url}
    server = FunctionServer(env, subprocess.DEVNULL)
    try:
        server.wait_ready("/ready")
        if case.stripe_faults:
            http_json(f"{emulator.url}/_emulator/faults", case.stripe_faults)
        started = time.perf_counter()
        status = post(server.url + CREATE)
        return time.perf_counter() - started, status
    finally:
        server.stop()
        if secrets is not None:
            secrets.stop()
        http_json(f"{emulator.url}/_emulator/reset", {})  # releases a hang


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args()
    emulator = StripeEmulator(latency_ms=0)
    rows: list[tuple[str, int, float, float]] = []
    try:
        for case in CASES:
            seconds, status = run(case, emulator)
            if status != case.expected:
                print(f"{case.name}: answered {status}, expected {case.expected}", file=sys.stderr)
                return 1
            rows.append((case.name, status, seconds, case.budget))
    finally:
        emulator.stop()

    print(f"Faults on {date.today()}, {platform.machine()}, {os.cpu_count()} CPUs")
    print("| fault | answer | seconds | budget (s) | seconds / budget |")
    print("|---|---:|---:|---:|---:|")
    for name, status, seconds, budget in rows:
        print(f"| {name} | {status} | {seconds:.2f} | {budget:g} | {seconds / budget:.2f} |")
    over = [name for name, _, seconds, budget in rows if seconds > budget + REQUEST_MARGIN_SECONDS]
    for name in over:
        print(f"over the budget and the request's margin: {name}", file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
