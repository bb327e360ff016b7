"""What reading the named secrets before the fork costs a Cloud Run cold start (issue 31.5).

With STRIPE_SECRET_NAME and STRIPE_WEBHOOK_SECRET_NAME, the server's first process reads both from
Secret Manager (here the fake, devtools/secret_manager_emulator.py, on loopback) before it listens,
to refuse a value of the wrong shape. Spawned in interleaved rounds, as Cloud Run would (K_SERVICE
set), from the copy the deploy uploads:

- "env": the key and signing secret in the environment (the set-secrets mode): no Google library;
- "named": the secret-manager mode, this work tree;
- each git revision given: the secret-manager mode as that revision deploys it.

Two figures each, in milliseconds from spawn: until it listens (any HTTP answer), and until its
first create is answered; and the CPU milliseconds its processes used by then (steadier on a
shared machine). Stripe is an https address where nothing listens, so the create fails at
once (504) after the key is in hand: the figure is the cold start up to the first use of the key.

    python -m bench.named_secret_start [--rounds 7] [--latency-ms 0] [REVISION ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.cold_start import bundle, tree_cpu_ms
from bench.servers import BIN, FunctionServer, Service
from devtools.loopback import free_port
from devtools.secret_manager_emulator import SecretManagerEmulator

KEY = "sk_test_51BenchOnlyKeyForTheFake0123456789abcdef"
SIGNING_SECRET = "whsec_BenchOnlySigning01"
FRONTEND = "https://shop.example.com"
PROJECT = "bench-project"
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def cloud_run_env(stripe_base: str) -> dict[str, str]:
    return {
        "K_SERVICE": "checkout-api",
        "FRONTEND_URL": FRONTEND,
        "ORDER_EVENTS_TOPIC": f"projects/{PROJECT}/topics/order-events",
        "ORDER_LEDGER": "memory",
        "STRIPE_API_BASE": stripe_base,
        "STRIPE_MAX_RETRIES": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def until_answered(server: Service, path: str, body: bytes | None) -> tuple[float, int]:
    """(milliseconds since spawn, status) of the first HTTP answer to `path`."""
    deadline = server.started + 30
    while True:
        request = urllib.request.Request(server.url + path, data=body)
        if body is not None:
            request.add_header("Content-Type", "application/json")
            request.add_header("Origin", FRONTEND)
        try:
            with _opener.open(request, timeout=10) as response:
                status = response.status
                response.read()
        except urllib.error.HTTPError as error:
            status = error.code
        except OSError:
            if time.perf_counter() > deadline or server.process.poll() is not None:
                raise RuntimeError(f"{server.command[:3]} did not start") from None
            time.sleep(0.002)
            continue
        return (time.perf_counter() - server.started) * 1000, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.named_secret_start", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--latency-ms", type=int, default=0, help="the fake's latency per read")
    parser.add_argument("revisions", nargs="*", help="git revisions to spawn alongside")
    args = parser.parse_args(argv)
    began, load = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()
    sources: dict[str, Path] = {"env": bundle(BIN) / "main.py"}
    sources["named"] = sources["env"]
    sources.update({f"named at {r}": bundle(BIN, r) / "main.py" for r in args.revisions})
    listening: dict[str, list[float]] = {name: [] for name in sources}
    first_use: dict[str, list[float]] = {name: [] for name in sources}
    cpu: dict[str, list[float]] = {name: [] for name in sources}
    with SecretManagerEmulator(latency_ms=args.latency_ms) as fake:
        fake.add_version(PROJECT, "stripe-key", KEY)
        fake.add_version(PROJECT, "stripe-webhook", SIGNING_SECRET)
        base = cloud_run_env(f"https://127.0.0.1:{free_port()}")
        given = {"STRIPE_SECRET_KEY": KEY, "STRIPE_WEBHOOK_SECRET": SIGNING_SECRET}
        named = {
            "STRIPE_SECRET_NAME": f"projects/{PROJECT}/secrets/stripe-key",
            "STRIPE_WEBHOOK_SECRET_NAME": f"projects/{PROJECT}/secrets/stripe-webhook",
            "SECRET_MANAGER_ENDPOINT": fake.endpoint,
        }
        for _ in range(args.rounds):
            for name, source in sources.items():
                env = {**base, **(given if name == "env" else named)}
                with FunctionServer(env, subprocess.DEVNULL, source=source) as server:
                    ready, _ = until_answered(server, "/__ready", None)
                    used, status = until_answered(
                        server, "/api/checkout/embedded-session", b'{"imageId": "bench"}'
                    )
                    if status != 504:  # 504: the key was read, and Stripe did not answer
                        raise RuntimeError(f"{name}: the first create answered {status}")
                    listening[name].append(ready)
                    first_use[name].append(used)
                    cpu[name].append(tree_cpu_ms(server.pid))
        reads = fake.access_count
    print(
        f"Cold start on Cloud Run settings, Secret Manager fake on loopback (latency "
        f"{args.latency_ms} ms), median of {args.rounds}, ms from spawn:"
    )
    for name in sources:
        print(
            f"- {name}: listening {statistics.median(listening[name]):.0f}, first create "
            f"answered {statistics.median(first_use[name]):.0f}; CPU by then "
            f"{statistics.median(cpu[name]):.0f}"
        )
    for name in sources:
        if name != "env":
            ratios = (
                statistics.median(listening[name]) / statistics.median(listening["env"]),
                statistics.median(first_use[name]) / statistics.median(first_use["env"]),
            )
            print(f"- {name} over env: listening {ratios[0]:.2f} x, first create {ratios[1]:.2f} x")
    spawns = args.rounds * (len(sources) - 1)
    print(f"- Secret Manager reads: {reads} in {spawns} spawns in the secret-manager mode")
    print(
        f"{began}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; load average at the "
        f"start {load[0]:.2f}, at the end {os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
