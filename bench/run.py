"""`make bench`: throughput, latency, Stripe calls, CPU, cold start and memory of the function,
and the order flow's webhook latency and deliveries (bench/order_flow.py).

Starts the Stripe emulator (100 ms injected latency) and the function under functions-framework's
production server (gunicorn with one uvicorn worker: one event loop), drives each workload with 64
keep-alive connections, and prints a table, also written to bench/results/latest.md. Throughput
targets are ratios to the latency limit, connections / Stripe latency (640 req/s at 64 and 100
ms), measured in the same run, so that they hold on a slower or busier machine. Exits 1 if a
target in TARGETS is missed (the order flow's are skipped, with the reason, without gcloud and
Java for Google's emulators). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
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
from types import TracebackType
from typing import Any

from bench import cold_start, loadgen, order_flow
from bench.loadgen import LoadResult, Workload
from bench.servers import (
    BENCH_KEY,
    BIN,
    ROOT,
    FunctionServer,
    SecretManagerFake,
    StripeEmulator,
    clean_env,
    cpu_seconds,
    memory_kb,
    production_bin,
)

RESULTS = ROOT / "bench" / "results"
CREATE = "/api/checkout/embedded-session"
STATUS = "/api/checkout/session-status?session_id="
STRIPE_LATENCY_MS = 100
SESSIONS_PER_KIND = 1000  # open and complete sessions each; status workloads cycle through them
RSS_AFTER_REQUESTS = 20_000
SECRET_NAME = "projects/bench-project/secrets/stripe-key"
# Cold start (bench/cold_start.py): spawn to the first create, over a minimal Express server on the
# Stripe Node SDK spawned in the same rounds (issue 23). Without Node or its packages, over the bare
# async functions-framework function instead, as before issue 23 (1.65: README "Performance").
COLD_START_RATIO = {"express": 1.3, "bare aio": 1.65}
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# name -> (check, description): each check reads the measured numbers; "limit" is connections /
# Stripe latency, in req/s.
Measured = dict[str, float]
TARGETS: dict[str, tuple[Callable[[Measured], bool], str]] = {
    "create": (lambda m: m["create"] >= 0.9 * m["limit"], "create >= 0.9 x the latency limit"),
    "status-open": (
        lambda m: m["status-open"] >= 0.9 * m["limit"],
        "status-open >= 0.9 x the latency limit",
    ),
    "status-complete": (
        lambda m: m["status-complete"] >= 5 * m["limit"] and m["status-complete calls"] <= 0.01,
        "status-complete >= 5 x the latency limit with <= 0.01 Stripe calls/request",
    ),
    "mix": (lambda m: m["mix"] >= 1.5 * m["limit"], "half open / half complete >= 1.5 x the limit"),
    "create p99": (
        lambda m: m["create p99"] <= 1.5 * STRIPE_LATENCY_MS + 50,
        f"create p99 <= 1.5 x the Stripe latency + 50 ms ({1.5 * STRIPE_LATENCY_MS + 50:g} ms)",
    ),
    "errors": (lambda m: m["errors"] == 0, "0 errors in every workload"),
    "cold start": (
        lambda m: m["cold ratio"] <= m["cold ratio target"],
        "cold start, first create, <= 1.3 x Express + stripe-node (without Node: <= 1.65 x the "
        "bare async function)",
    ),
    "rss": (lambda m: m["rss"] <= 60, f"worker RSS after {RSS_AFTER_REQUESTS:,} requests <= 60 MB"),
    "webhook p99": (
        lambda m: m["webhook p99"] <= 0.1 * m["delivery ms"] and m["webhook errors"] == 0,
        "order flow: webhook p99 <= 0.1 x the 10 s delivery, and every webhook answered 200",
    ),
    "delivered once": (
        lambda m: m["delivered once"] == 1,
        "order flow: each change delivered exactly once (the delivery sink's count)",
    ),
}
# Targets that need Google's emulators (gcloud and Java): without them, skipped with the reason.
ORDER_FLOW_TARGETS = ("webhook p99", "delivered once")


@dataclass(frozen=True)
class Row:
    name: str
    load: LoadResult
    stripe_calls: int
    server_cpu_s: float | None  # the gunicorn worker; None when the function is not involved
    emulator_cpu_s: float
    other_cores: float  # CPU the rest of the machine used meanwhile: the noise in the numbers

    def per_request(self, value: float) -> float:
        return value / self.load.requests if self.load.requests else float("nan")


class Stack:
    """The Stripe emulator and the function under gunicorn, with open and complete sessions."""

    def __init__(self, workers: int, log: Path) -> None:
        self._log = log.open("wb")
        self.emulator = StripeEmulator(STRIPE_LATENCY_MS)
        self.env = {"STRIPE_SECRET_KEY": BENCH_KEY, "STRIPE_API_BASE": self.emulator.url}
        self.server = FunctionServer(self.env, self._log, workers=workers)
        try:
            self.server.wait_ready("/")
            self.workers = self.server.worker_pids(workers)
            print(f"Creating {2 * SESSIONS_PER_KIND} sessions through the function ...", flush=True)
            self.open_ids, self.complete_ids = self._seed()
        except BaseException:
            self.__exit__()  # no `with` body runs, so nothing else would stop the processes
            raise
        self.served = 3 * SESSIONS_PER_KIND  # requests the function has answered so far

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.server.stop()
        self.emulator.stop()
        self._log.close()

    def workloads(self) -> list[Workload]:
        url = self.server.url
        open_targets = tuple(url + STATUS + i for i in self.open_ids)
        complete_targets = tuple(url + STATUS + i for i in self.complete_ids)
        pairs = zip(open_targets, complete_targets, strict=True)
        return [
            Workload(
                "create",
                "POST",
                (url + CREATE,),
                body='{"imageId":"bench-image"}',
                headers={"Content-Type": "application/json"},
            ),
            Workload("status-open", "GET", open_targets),
            Workload("status-complete", "GET", complete_targets),
            Workload("mix", "GET", tuple(target for pair in pairs for target in pair)),
        ]

    def _seed(self) -> tuple[list[str], list[str]]:
        """Create sessions, complete every second one, and poll each complete one once.

        The first poll of a complete session goes to Stripe and fills the cache, as a
        frontend's first poll after payment does; the status-complete workload measures the
        polls after that.
        """

        def call(path: str, body: bytes | None = None) -> dict:
            headers = {"Content-Type": "application/json"}
            request = urllib.request.Request(self.server.url + path, data=body, headers=headers)
            with _opener.open(request, timeout=30) as response:
                return json.loads(response.read())

        with ThreadPoolExecutor(32) as pool:
            created = pool.map(lambda _: call(CREATE, b"{}"), range(2 * SESSIONS_PER_KIND))
            ids = [answer["session_id"] for answer in created]
            complete_ids, open_ids = ids[::2], ids[1::2]
            list(pool.map(self.emulator.complete, complete_ids))
            polled = pool.map(lambda i: call(STATUS + i)["status"], complete_ids)
            if set(polled) != {"complete"}:
                raise RuntimeError("seeding failed: a completed session does not read complete")
        return open_ids, complete_ids


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    load_at_start = os.getloadavg()
    wrk = None if args.client == "aiohttp" else loadgen.find_wrk(install=True)
    if args.client == "wrk" and wrk is None:
        print("wrk is not installed and could not be installed (apt-get install wrk)")
        return 2
    client = f"wrk {_wrk_version(wrk)}" if wrk else "aiohttp (wrk not available)"
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"Load generator: {client}; {args.connections} connections; WORKERS={args.workers}")
    print("Production venv for the cold starts (built once) ...", flush=True)
    cold_bin = production_bin()

    def drive(workload: Workload, seconds: float, connections: int = args.connections):
        return loadgen.run(workload, connections, seconds, wrk)

    with Stack(args.workers, RESULTS / "server.log") as stack:
        emulator = stack.emulator
        stripe_auth = {"Authorization": f"Bearer {BENCH_KEY}"}
        retrieve = Workload(
            "emulator alone: retrieve",
            "GET",
            tuple(f"{emulator.url}/v1/checkout/sessions/{i}" for i in stack.open_ids),
            headers=stripe_auth,
        )
        create = Workload(
            "emulator alone: create",
            "POST",
            (f"{emulator.url}/v1/checkout/sessions",),
            body=_STRIPE_CREATE_FORM,
            headers={**stripe_auth, "Content-Type": "application/x-www-form-urlencoded"},
        )
        rows: list[Row] = []
        for workload, connections in (
            (retrieve, args.connections),
            (create, args.connections),
            (retrieve, 4 * args.connections),
        ):
            name = f"{workload.name}, {connections} conn."
            print(f"Running {name} ...", flush=True)
            rows.append(
                _measure(
                    name,
                    emulator,
                    None,
                    functools.partial(drive, workload, args.seconds, connections),
                )
            )
        for workload in stack.workloads():
            print(
                f"Running {workload.name} ({args.warmup:g} s warm-up, {args.seconds:g} s) ...",
                flush=True,
            )
            stack.served += drive(workload, args.warmup).requests
            # wrk leaves its last requests in flight when it exits, and the service finishes them
            # (their Stripe calls count against STRIPE_MAX_IN_FLIGHT): let them end first.
            time.sleep(0.5)
            row = _measure(
                workload.name,
                emulator,
                stack.workers,
                functools.partial(drive, workload, args.seconds),
            )
            stack.served += row.load.requests
            rows.append(row)
        polling = stack.workloads()[2]
        while stack.served < RSS_AFTER_REQUESTS:
            stack.served += drive(polling, 2).requests
        memory = max((memory_kb(pid) for pid in stack.workers), key=lambda m: m["Rss"])
        master_memory = memory_kb(stack.server.pid)

        print(f"Cold starts, {args.spawns} rounds ...", flush=True)
        emulator.set_latency(0)  # spawn -> first 200 should time the function, not the fake Stripe
        status_path = STATUS + stack.complete_ids[0]
        bin_dir = cold_bin or BIN
        cold = cold_start.measure(emulator.url, args.spawns, bin_dir)
        with SecretManagerFake(SECRET_NAME, BENCH_KEY) as secrets:
            named = {
                "STRIPE_SECRET_NAME": SECRET_NAME,
                "SECRET_MANAGER_ENDPOINT": secrets.url,
                "STRIPE_API_BASE": emulator.url,
            }
            cold_name = _cold_starts(named, args.spawns, status_path, bin_dir)
        imports = {"key": _import_cost(stack.env, bin_dir), "name": _import_cost(named, bin_dir)}

    skipped = order_flow.missing()
    flow = None
    if skipped is None:
        print("Order flow (Firestore and Pub/Sub emulators, 10 s deliveries) ...", flush=True)
        flow = order_flow.measure()
    measured: Measured = {row.name: row.load.rate for row in rows}
    if flow is not None:
        measured.update(flow.measured())
    complete = next(row for row in rows if row.name == "status-complete")
    measured["status-complete calls"] = complete.per_request(complete.stripe_calls)
    measured["errors"] = sum(row.load.errors for row in rows)
    yardstick = "express" if "express" in cold.times else "bare aio"
    measured["cold ratio"] = cold.ratio(yardstick) or float("nan")
    measured["cold ratio target"] = COLD_START_RATIO[yardstick]
    measured["rss"] = memory["Rss"] / 1024
    measured["limit"] = args.connections * 1000 / STRIPE_LATENCY_MS
    create_row = next(row for row in rows if row.name == "create")
    measured["create p99"] = create_row.load.p99_ms
    verdicts = {
        name: None if flow is None and name in ORDER_FLOW_TARGETS else check(measured)
        for name, (check, _) in TARGETS.items()
    }
    lines = [
        f"Machine: {_machine(load_at_start)}",
        f"Load: {client}, {args.connections} connections, {args.seconds:g} s per workload after "
        f"{args.warmup:g} s warm-up. Function: functions-framework (gunicorn, uvicorn workers), "
        f"WORKERS={args.workers}, {_loop_and_parser()}. Stripe emulator latency "
        f"{STRIPE_LATENCY_MS} ms, so the latency limit is {measured['limit']:.0f} req/s for a "
        "workload that calls Stripe once a request.",
        "",
        *_table(rows, measured["limit"]),
        "",
        *cold.lines(),
        f"- `import main` with STRIPE_SECRET_KEY: {imports['key']}",
        f"- STRIPE_SECRET_NAME (Secret Manager fake), spawn to first status 200: "
        f"{_spread(cold_name)}; `import main` {imports['name']}",
        "",
        f"Memory after {stack.served:,} requests: worker RSS {memory['Rss'] / 1024:.1f} MB (PSS "
        f"{memory['Pss'] / 1024:.1f} MB), gunicorn master RSS {master_memory['Rss'] / 1024:.1f} "
        f"MB (PSS {master_memory['Pss'] / 1024:.1f} MB).",
        "",
        *(flow.lines() if flow is not None else [f"Order flow skipped: {skipped}"]),
        "",
        "Targets:",
        *(f"- {_verdict(verdicts[n], skipped)}: {d}" for n, (_, d) in TARGETS.items()),
    ]
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    (RESULTS / "latest.md").write_text(report)
    print(f"Written to {(RESULTS / 'latest.md').relative_to(ROOT)}")
    return 0 if all(verdict is not False for verdict in verdicts.values()) else 1


def _verdict(passed: bool | None, skipped: str | None) -> str:
    if passed is None:
        return f"SKIP ({skipped})"
    return "PASS" if passed else "FAIL"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10, help="measured time per workload")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured load before each")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WORKERS", "1")),
        help="uvicorn workers, one event loop each (default: $WORKERS, else 1)",
    )
    parser.add_argument("--client", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument("--spawns", type=int, default=5, help="cold-start rounds")
    return parser.parse_args(argv)


# What stripe-python sends for this service's create call.
_STRIPE_CREATE_FORM = (
    "ui_mode=embedded_page&mode=payment&line_items[0][price_data][currency]=usd"
    "&line_items[0][price_data][unit_amount]=200"
    "&line_items[0][price_data][product_data][name]=Bench&line_items[0][quantity]=1"
    "&return_url=http%3A%2F%2Flocalhost%3A5173%2Fdone&redirect_on_completion=if_required"
    "&metadata[imageId]=bench-image"
)


def _measure(
    name: str, emulator: StripeEmulator, workers: list[int] | None, drive: Callable[[], LoadResult]
) -> Row:
    def cpu() -> tuple[float, float, float]:
        server = sum(cpu_seconds(pid) for pid in workers or ())
        return server, cpu_seconds(emulator.pid), _machine_busy_seconds()

    calls, before = emulator.calls(), cpu()
    load = drive()
    after = cpu()
    server, emulator_cpu, machine = (a - b for a, b in zip(after, before, strict=True))
    other = machine - server - emulator_cpu - load.client_cpu_s
    return Row(
        name=name,
        load=load,
        stripe_calls=emulator.calls() - calls,
        server_cpu_s=server if workers else None,
        emulator_cpu_s=emulator_cpu,
        other_cores=max(0.0, other / load.seconds),
    )


def _machine_busy_seconds() -> float:
    """CPU time every process on the machine has used, from /proc/stat (all but idle, iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _cold_starts(
    env: dict[str, str], spawns: int, path: str, bin_dir: Path, source: Path | None = None
) -> list[float]:
    """Milliseconds from spawning functions-framework to its first 200, one per spawn."""
    where: dict[str, Any] = {"target": "hello", "source": source} if source else {}
    times = []
    for _ in range(spawns):
        with FunctionServer(env, subprocess.DEVNULL, bin_dir, **where) as server:
            deadline = server.started + 30
            while True:
                try:
                    with _opener.open(server.url + path, timeout=10):
                        break
                except urllib.error.HTTPError as error:
                    raise RuntimeError(f"cold start answered {error.code}") from None
                except OSError:
                    if time.perf_counter() > deadline or server.process.poll() is not None:
                        raise RuntimeError("the function did not start") from None
                    time.sleep(0.002)
            times.append((time.perf_counter() - server.started) * 1000)
    return times


def _import_cost(env: dict[str, str], bin_dir: Path) -> str:
    """`import main` in a fresh interpreter: median time, and which heavy packages it pulled in."""
    probe = (
        "import json, sys, time\n"
        "began = time.perf_counter()\n"
        "import main\n"
        "heavy = ('stripe', 'requests', 'google.cloud.secretmanager', 'grpc', 'aiohttp')\n"
        "print(json.dumps([time.perf_counter() - began, [m for m in heavy if m in sys.modules]]))"
    )
    runs = []
    for _ in range(3):
        done = subprocess.run(
            [str(bin_dir / "python"), "-c", probe],
            cwd=ROOT,
            env=clean_env(**env),
            capture_output=True,
            check=True,
        )
        runs.append(json.loads(done.stdout.splitlines()[-1]))
    median = statistics.median(seconds for seconds, _ in runs) * 1000
    return f"{median:.0f} ms, importing {', '.join(runs[-1][1]) or 'none of the heavy packages'}"


def _spread(times: list[float]) -> str:
    median = statistics.median(times)
    return f"median {median:.0f} ms (min {min(times):.0f}, max {max(times):.0f}, n={len(times)})"


def _table(rows: list[Row], limit: float) -> list[str]:
    lines = [
        "| workload | req/s | x limit | p50 ms | p99 ms | max ms | errors | Stripe calls/req "
        "| server CPU ms/req | emulator CPU ms/req | client CPU ms/req | other load (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        load = row.load
        server = (
            "—" if row.server_cpu_s is None else f"{1000 * row.per_request(row.server_cpu_s):.2f}"
        )
        lines.append(
            f"| {row.name} | {load.rate:.0f} | {load.rate / limit:.2f} | {load.p50_ms:.1f} "
            f"| {load.p99_ms:.1f} | {load.max_ms:.0f} | {load.errors} "
            f"| {row.per_request(row.stripe_calls):.3f} | {server} "
            f"| {1000 * row.per_request(row.emulator_cpu_s):.2f} "
            f"| {1000 * row.per_request(load.client_cpu_s):.2f} | {row.other_cores:.2f} |"
        )
    return lines


def _loop_and_parser() -> str:
    """What uvicorn's "auto" picks in the production venv: uvloop and httptools when installed."""
    found = [name for name in ("uvloop", "httptools") if importlib.util.find_spec(name)]
    return " and ".join(found) + " (uvicorn's auto)" if found else "asyncio and h11"


def _machine(load_at_start: tuple[float, float, float]) -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    start, end = (", ".join(f"{v:.2f}" for v in load) for load in (load_at_start, os.getloadavg()))
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; load average at the start {start}, at the "
        f"end {end}"
    )


def _wrk_version(wrk: str) -> str:
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    words = (done.stdout + done.stderr).split()
    return words[1] if len(words) > 1 else ""


if __name__ == "__main__":
    sys.exit(main())
