"""`make bench`: throughput, latency, Stripe calls, CPU, cold start and memory of the function.

It starts the Stripe emulator (100 ms injected latency) and the function under functions-framework's
production server (gunicorn, THREADS = the connection count), then drives each workload with 64
keep-alive connections and prints a table, also written to bench/results/latest.md. It exits 1 if
a target in TARGETS is missed. See README "Performance".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench import loadgen
from bench.loadgen import LoadResult, Workload
from bench.servers import (
    BENCH_KEY,
    ROOT,
    FunctionServer,
    SecretManagerFake,
    StripeEmulator,
    cpu_seconds,
    memory_kb,
)

RESULTS = ROOT / "bench" / "results"
CREATE = "/api/checkout/embedded-session"
STATUS = "/api/checkout/session-status?session_id="
STRIPE_LATENCY_MS = 100
SESSIONS_PER_KIND = 1000  # open and complete sessions each: more than one pass of 64 connections
RSS_AFTER_REQUESTS = 20_000
SECRET_NAME = "projects/bench-project/secrets/stripe-key"
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Row:
    name: str
    load: LoadResult
    stripe_calls: int
    server_cpu_s: float  # the gunicorn worker (or the emulator, for the emulator-alone rows)
    emulator_cpu_s: float

    def per_request(self, value: float) -> float:
        return value / self.load.requests if self.load.requests else float("nan")


# name -> (check, description). A check takes the measured numbers and answers pass or fail.
Measured = dict[str, float]
TARGETS: dict[str, tuple[Callable[[Measured], bool], str]] = {
    "create": (lambda m: m["create"] >= 550, "create >= 550 req/s"),
    "status-open": (lambda m: m["status-open"] >= 550, "status-open >= 550 req/s"),
    "status-complete": (
        lambda m: m["status-complete"] >= 2000 and m["status-complete calls"] <= 0.01,
        "status-complete >= 2000 req/s with <= 0.01 Stripe calls/request",
    ),
    "mix": (lambda m: m["mix"] >= 900, "half open / half complete >= 900 req/s"),
    "errors": (lambda m: m["errors"] == 0, "0 errors in every workload"),
    "cold start": (
        lambda m: m["cold start key"] <= 300,
        "cold start (STRIPE_SECRET_KEY) <= 300 ms",
    ),
    "rss": (lambda m: m["rss"] <= 60, f"worker RSS after {RSS_AFTER_REQUESTS:,} requests <= 60 MB"),
}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    wrk = None if args.client == "aiohttp" else loadgen.find_wrk(install=True)
    if args.client == "wrk" and wrk is None:
        print("wrk is not installed and could not be installed (apt-get install wrk)")
        return 2
    client = f"wrk ({wrk})" if wrk else "aiohttp (wrk not available)"
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(
        f"Load generator: {client}; {args.connections} connections, gunicorn THREADS={args.threads}"
    )

    def drive(workload: Workload, connections: int = args.connections) -> LoadResult:
        return loadgen.run(workload, connections, args.seconds, wrk)

    def warm(workload: Workload) -> LoadResult:
        return loadgen.run(workload, args.connections, args.warmup, wrk)

    with (
        (RESULTS / "server.log").open("wb") as server_log,
        StripeEmulator(STRIPE_LATENCY_MS) as emulator,
    ):
        env = {"STRIPE_SECRET_KEY": BENCH_KEY, "STRIPE_API_BASE": emulator.url}
        with FunctionServer(env, args.threads, server_log) as server:
            server.wait_ready("/")
            worker = server.worker_pid()
            print(f"Creating {2 * SESSIONS_PER_KIND} sessions through the function ...", flush=True)
            open_ids, complete_ids = _seed(server.url, emulator)
            served = 2 * SESSIONS_PER_KIND

            rows: list[Row] = []
            stripe_auth = {"Authorization": f"Bearer {BENCH_KEY}"}
            retrieve_direct = Workload(
                "emulator alone: retrieve",
                "GET",
                tuple(f"{emulator.url}/v1/checkout/sessions/{i}" for i in open_ids),
                headers=stripe_auth,
            )
            create_direct = Workload(
                "emulator alone: create",
                "POST",
                (f"{emulator.url}/v1/checkout/sessions",),
                body=_STRIPE_CREATE_FORM,
                headers={**stripe_auth, "Content-Type": "application/x-www-form-urlencoded"},
            )
            for workload, connections in (
                (retrieve_direct, args.connections),
                (create_direct, args.connections),
                (retrieve_direct, 4 * args.connections),
            ):
                name = f"{workload.name} ({connections} conn.)"
                print(f"Running {name} ...", flush=True)
                rows.append(
                    _measure(
                        name,
                        workload,
                        emulator,
                        emulator.pid,
                        lambda w=workload, c=connections: drive(w, c),
                    )
                )

            open_targets = tuple(server.url + STATUS + i for i in open_ids)
            complete_targets = tuple(server.url + STATUS + i for i in complete_ids)
            mixed = tuple(t for pair in zip(open_targets, complete_targets) for t in pair)
            workloads = (
                Workload(
                    "create",
                    "POST",
                    (server.url + CREATE,),
                    body='{"imageId":"bench-image"}',
                    headers={"Content-Type": "application/json"},
                ),
                Workload("status-open", "GET", open_targets),
                Workload("status-complete", "GET", complete_targets),
                Workload("mix", "GET", mixed),
            )
            for workload in workloads:
                print(
                    f"Running {workload.name} (warm-up {args.warmup} s, then {args.seconds} s) ...",
                    flush=True,
                )
                served += warm(workload).requests
                row = _measure(
                    workload.name, workload, emulator, worker, lambda w=workload: drive(w)
                )
                served += row.load.requests
                rows.append(row)
            if served < RSS_AFTER_REQUESTS:
                extra = Workload("status-complete", "GET", complete_targets)
                while served < RSS_AFTER_REQUESTS:
                    served += warm(extra).requests
            memory = memory_kb(worker)
            master_memory = memory_kb(server.pid)

        print(f"Cold starts ({args.spawns} spawns per key path) ...", flush=True)
        emulator.set_latency(0)  # spawn -> first 200 should time the function, not the fake Stripe
        status_path = STATUS + complete_ids[0]
        cold_key = _cold_starts(env, args.spawns, status_path)
        with SecretManagerFake(SECRET_NAME, BENCH_KEY) as secrets:
            named = {
                "STRIPE_SECRET_NAME": SECRET_NAME,
                "SECRET_MANAGER_ENDPOINT": secrets.url,
                "STRIPE_API_BASE": emulator.url,
            }
            cold_name = _cold_starts(named, args.spawns, status_path)
        imports = {"key": _import_cost(env), "name": _import_cost(named)}

    measured: Measured = {row.name: row.load.rate for row in rows}
    measured["status-complete calls"] = next(
        r.per_request(r.stripe_calls) for r in rows if r.name == "status-complete"
    )
    measured["errors"] = sum(row.load.errors for row in rows)
    measured["cold start key"] = statistics.median(cold_key)
    measured["rss"] = memory["Rss"] / 1024
    verdicts = {name: check(measured) for name, (check, _) in TARGETS.items()}
    report = _report(
        rows, client, args, cold_key, cold_name, imports, memory, master_memory, served, verdicts
    )
    print("\n" + report)
    (RESULTS / "latest.md").write_text(report)
    print(f"Written to {(RESULTS / 'latest.md').relative_to(ROOT)}")
    return 0 if all(verdicts.values()) else 1


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10, help="measured time per workload")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured load before each")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("CONCURRENCY", "0")) or None,
        help="gunicorn THREADS (default: $CONCURRENCY, else the connection count)",
    )
    parser.add_argument("--client", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument("--spawns", type=int, default=5, help="cold starts per key path")
    args = parser.parse_args(argv)
    args.threads = args.threads or args.connections
    return args


# The form stripe-python sends for this service's create call.
_STRIPE_CREATE_FORM = (
    "ui_mode=embedded_page&mode=payment&line_items[0][price_data][currency]=usd"
    "&line_items[0][price_data][unit_amount]=200&line_items[0][price_data][product_data][name]=Bench"
    "&line_items[0][quantity]=1&return_url=http%3A%2F%2Flocalhost%3A5173%2Fdone"
    "&redirect_on_completion=if_required&metadata[imageId]=bench-image"
)


def _seed(url: str, emulator: StripeEmulator) -> tuple[list[str], list[str]]:
    """Create sessions through the function; complete every second one in the emulator."""

    def create(_: int) -> str:
        request = urllib.request.Request(
            url + CREATE, data=b"{}", headers={"Content-Type": "application/json"}, method="POST"
        )
        with _opener.open(request, timeout=30) as response:
            return json.loads(response.read())["session_id"]

    with ThreadPoolExecutor(32) as pool:
        ids = list(pool.map(create, range(2 * SESSIONS_PER_KIND)))
        complete_ids, open_ids = ids[::2], ids[1::2]
        list(pool.map(emulator.complete, complete_ids))
    return open_ids, complete_ids


def _measure(
    name: str,
    workload: Workload,
    emulator: StripeEmulator,
    pid: int,
    drive: Callable[[], LoadResult],
) -> Row:
    calls, cpu, emulator_cpu = emulator.calls(), cpu_seconds(pid), cpu_seconds(emulator.pid)
    load = drive()
    return Row(
        name=name,
        load=load,
        stripe_calls=emulator.calls() - calls,
        server_cpu_s=cpu_seconds(pid) - cpu,
        emulator_cpu_s=cpu_seconds(emulator.pid) - emulator_cpu,
    )


def _cold_starts(env: dict[str, str], spawns: int, path: str) -> list[float]:
    """Milliseconds from spawning functions-framework to its first 200 answer, per spawn."""
    times = []
    for _ in range(spawns):
        with FunctionServer(env, 8, subprocess.DEVNULL) as server:
            deadline = server.started + 30
            while True:
                try:
                    with _opener.open(server.url + path, timeout=10) as response:
                        if response.status == 200:
                            break
                except urllib.error.HTTPError as error:
                    raise RuntimeError(
                        f"cold start answered {error.code}: {error.read()[:300]!r}"
                    ) from None
                except OSError:
                    if time.perf_counter() > deadline or server.process.poll() is not None:
                        raise RuntimeError("the function did not start") from None
                    time.sleep(0.002)
            times.append((time.perf_counter() - server.started) * 1000)
    return times


def _import_cost(env: dict[str, str]) -> dict[str, object]:
    """`import main` in a fresh interpreter: its time, and whether heavy libraries came along."""
    probe = (
        "import json, sys, time; t = time.perf_counter(); import main; "
        "t = time.perf_counter() - t; heavy = ('stripe', 'requests', 'google.cloud.secretmanager'); "
        "print(json.dumps({'ms': t * 1000, 'imports': [m for m in heavy if m in sys.modules]}))"
    )
    from bench.servers import clean_env

    runs = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=ROOT,
            env=clean_env(**env),
            capture_output=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.splitlines()[-1]))
    return {"ms": statistics.median(r["ms"] for r in runs), "imports": runs[-1]["imports"]}


def _machine() -> str:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; load average at the end: {load}"
    )


def _report(
    rows: list[Row],
    client: str,
    args: argparse.Namespace,
    cold_key: list[float],
    cold_name: list[float],
    imports: dict[str, dict[str, object]],
    memory: dict[str, int],
    master_memory: dict[str, int],
    served: int,
    verdicts: dict[str, bool],
) -> str:
    lines = [
        f"Machine: {_machine()}",
        f"Client: {client}; {args.connections} connections; Stripe emulator latency "
        f"{STRIPE_LATENCY_MS} ms; gunicorn THREADS={args.threads}; {args.seconds:g} s per workload "
        f"after {args.warmup:g} s warm-up.",
        "",
        "| workload | req/s | p50 ms | p99 ms | errors | Stripe calls/req | server CPU ms/req "
        "| emulator CPU ms/req | client CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        load = row.load
        alone = row.name.startswith("emulator alone")
        lines.append(
            f"| {row.name} | {load.rate:.0f} | {load.p50_ms:.1f} | {load.p99_ms:.1f} | {load.errors} "
            f"| {row.per_request(row.stripe_calls):.3f} "
            f"| {'—' if alone else f'{1000 * row.per_request(row.server_cpu_s):.2f}'} "
            f"| {1000 * row.per_request(row.emulator_cpu_s):.2f} "
            f"| {1000 * row.per_request(load.client_cpu_s):.2f} |"
        )

    def spread(times: list[float]) -> str:
        return f"median {statistics.median(times):.0f} ms (min {min(times):.0f}, max {max(times):.0f}, n={len(times)})"

    lines += [
        "",
        "Cold start, process spawn to first 200 (a status call; Stripe latency 0 for this):",
        f"- STRIPE_SECRET_KEY: {spread(cold_key)}; `import main` {imports['key']['ms']:.0f} ms, "
        f"importing {', '.join(imports['key']['imports']) or 'none of stripe/requests/secretmanager'}",
        f"- STRIPE_SECRET_NAME (Secret Manager fake): {spread(cold_name)}; `import main` "
        f"{imports['name']['ms']:.0f} ms, importing "
        f"{', '.join(imports['name']['imports']) or 'none of stripe/requests/secretmanager'}",
        f"Memory after {served:,} requests: worker RSS {memory['Rss'] / 1024:.1f} MB "
        f"(PSS {memory['Pss'] / 1024:.1f} MB); gunicorn master RSS {master_memory['Rss'] / 1024:.1f} MB "
        f"(PSS {master_memory['Pss'] / 1024:.1f} MB)",
        "",
        "Targets:",
    ]
    for name, (_, description) in TARGETS.items():
        lines.append(f"- {'PASS' if verdicts[name] else 'FAIL'}: {description}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
