"""Cold start: process start to the first successful create, against the Stripe emulator on
loopback, for the service and two yardsticks spawned in the same rounds.

- the service (`functions-framework --target checkout_api`, as Cloud Run runs it), from a copy of
  what the deploy uploads (main.py and checkout/, with the bytecode the deploy compiles, and no
  other), with PYTHONDONTWRITEBYTECODE set: every instance starts from the same image, so no spawn
  may reuse bytecode an earlier one wrote;
- a bare `@functions_framework.aio.http` function (bench/hello_world_async.py): the Python floor,
  the same server stack with nothing of ours; its first 200 is a GET;
- Express (bench/express/server.js: Express and the Stripe Node SDK, as stripe-samples write it),
  when `node` is installed and `make bench` could `npm ci` it: the target is a ratio to this;
- bare Node (bench/node_checkout.js, when `node` is installed): the same create on Node's own
  http module, nothing to require: Node's floor.

Spawns are interleaved round by round, so that a busy moment on the machine hits all alike; the
figures are medians. `python -m bench.cold_start` runs this alone (about 20 s), and adds where
`import main` spends its time (`python -X importtime`); `make bench` runs it as one of its parts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.order_flow import WEBHOOK_SECRET, completed_event
from bench.servers import (
    BENCH_KEY,
    BIN,
    ROOT,
    FunctionServer,
    Service,
    StripeEmulator,
    children_of,
    clean_env,
    http_json,
    production_bin,
)
from checkout.orders.session import MARKER_KEY
from devtools.pubsub_emulator import PubSubApi, PubSubEmulator, topic_path
from devtools.stripe_emulator.webhooks import sign_payload

CREATE = "/api/checkout/embedded-session"
WEBHOOK_PATH = "/api/checkout/webhook"
# The order flow's contenders (--topic), beside "service" and each revision's name.
TOPIC = "service+topic"
WEBHOOK_SUFFIX = "webhook"
WEBHOOK = f"service {WEBHOOK_SUFFIX}"
TOPIC_WEBHOOK = f"{TOPIC} {WEBHOOK_SUFFIX}"
TOPIC_PROJECT = "bench-project"
EXPRESS = ROOT / "bench" / "express"
# What stripe-python sends for this service's create call (the Node yardstick sends the same).
CREATE_FORM = (
    "ui_mode=embedded_page&mode=payment&line_items[0][price_data][currency]=usd"
    "&line_items[0][price_data][unit_amount]=200"
    "&line_items[0][price_data][product_data][name]=Bench&line_items[0][quantity]=1"
    "&return_url=http%3A%2F%2Flocalhost%3A5173%2Fdone&redirect_on_completion=if_required"
)
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class ColdStarts:
    """Per contender, over the same rounds: milliseconds from spawn to first success, and the CPU
    milliseconds its processes used by then (steadier than the wall clock on a shared machine)."""

    times: dict[str, list[float]]
    cpu: dict[str, list[float]]
    venv: str
    revisions: tuple[str, ...] = ()
    pubsub_import: str | None = None  # what `from google.cloud import pubsub_v1` adds (--topic)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def ratio(self, over: str, of: str = "service") -> float | None:
        return self.median(of) / self.median(over) if over in self.times else None

    def cpu_ratio(self, over: str, of: str = "service") -> float:
        return statistics.median(self.cpu[of]) / statistics.median(self.cpu[over])

    def lines(self) -> list[str]:
        labels = {
            "service": "the service (this work tree, as deployed), first create",
            TOPIC: "the service with ORDER_EVENTS_TOPIC, first create",
            WEBHOOK: "the service, first webhook (no topic: delivered in-process)",
            TOPIC_WEBHOOK: "the service with ORDER_EVENTS_TOPIC, first webhook (it publishes)",
            "bare aio": "bare `@functions_framework.aio.http` function, first GET",
            "express": f"Express 5 + stripe-node on Node {_node_version()}, first create",
            "bare node": f"bare Node {_node_version()} http server, first create",
        }
        for revision in self.revisions:
            labels[revision] = f"the service at {revision}, first create"
            labels[f"{revision} {WEBHOOK_SUFFIX}"] = f"the service at {revision}, first webhook"
        lines = [
            f"Cold start, spawn to first success (emulator on loopback, latency 0), {self.venv}:"
        ]
        for name, times in self.times.items():
            spread = ", ".join(f"{t:.0f}" for t in times)
            cpu = statistics.median(self.cpu[name])
            lines.append(
                f"- {labels[name]}: median {self.median(name):.0f} ms ({spread}); CPU {cpu:.0f} ms"
            )
        others = [
            name
            for name in self.times
            if name != "service" and name not in _order_flow_contenders(self.revisions)
        ]
        ratios = [f"{self.ratio(n):.2f} x {n} ({self.cpu_ratio(n):.2f} in CPU)" for n in others]
        lines.append(f"- ratio of the service, wall (CPU): {', '.join(ratios)}")
        if TOPIC in self.times:
            lines += self._topic_lines()
        return lines

    def _topic_lines(self) -> list[str]:
        """The order topic's cost: with over without, and over each revision's (today's)."""

        def over(of: str, name: str, label: str) -> str:
            return f"{self.ratio(name, of):.2f} x {label} ({self.cpu_ratio(name, of):.2f} in CPU)"

        hooks = [f"{r} {WEBHOOK_SUFFIX}" for r in self.revisions]
        lines = [
            "- with ORDER_EVENTS_TOPIC, first create, wall (CPU): "
            + ", ".join(
                [over(TOPIC, "service", "without a topic")]
                + [over(TOPIC, r, r) for r in self.revisions]
            ),
            "- first webhook with ORDER_EVENTS_TOPIC (its publish imports google.cloud.pubsub), "
            "wall (CPU): "
            + ", ".join(
                [over(TOPIC_WEBHOOK, WEBHOOK, "the first webhook without a topic")]
                + [
                    over(TOPIC_WEBHOOK, h, h.replace(WEBHOOK_SUFFIX, "first webhook"))
                    for h in hooks
                ]
                + [over(TOPIC_WEBHOOK, TOPIC, "its own first create")]
            ),
        ]
        if self.pubsub_import:
            lines.append(f"- {self.pubsub_import}")
        return lines


def _order_flow_contenders(revisions: tuple[str, ...]) -> set[str]:
    """The contenders --topic adds: none of them is a yardstick for the service's first create."""
    return {TOPIC, WEBHOOK, TOPIC_WEBHOOK, *(f"{r} {WEBHOOK_SUFFIX}" for r in revisions)}


def bundle(bin_dir: Path, revision: str | None = None) -> Path:
    """What the deploy uploads, from the work tree or a git revision, as Cloud Run gets it: the
    source, and the bytecode if that revision's cloudbuild.yaml compiles it (COMPILE), for the
    Python of `bin_dir`."""
    name = revision or "work-tree"
    where = BUNDLES / name
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    if revision is None:
        shutil.copy2(ROOT / "main.py", where / "main.py")
        shutil.copytree(ROOT / "checkout", where / "checkout", ignore=_BYTECODE)
        build = (ROOT / "cloudbuild.yaml").read_text()
    else:
        show = ["git", "show", f"{revision}:cloudbuild.yaml"]
        build = subprocess.run(show, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        with tempfile.TemporaryFile() as archive:
            command = ["git", "archive", revision, "main.py", "checkout"]
            subprocess.run(command, cwd=ROOT, stdout=archive, check=True)
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                tar.extractall(where, filter="data")
    if "compileall" in build:
        subprocess.run([str(bin_dir / "python"), *COMPILE], cwd=where, check=True)
    return where


_BYTECODE = shutil.ignore_patterns("__pycache__", "*.pyc")
# The deploy's bytecode step (cloudbuild.yaml, step `bytecode`), as arguments to python.
COMPILE = ("-m", "compileall", "-q", "-f", "--invalidation-mode", "checked-hash", "checkout")
BUNDLES = ROOT / "bench" / "results" / "bundles"


def measure(
    emulator_url: str,
    rounds: int = 5,
    bin_dir: Path | None = None,
    revisions: tuple[str, ...] = (),
    pubsub_host: str | None = None,
) -> ColdStarts:
    """`rounds` interleaved spawns of each contender (Node only where it is installed); each git
    revision in `revisions` is one more contender, as that revision would deploy.

    With `pubsub_host` (a Pub/Sub emulator), the order flow's contenders too: the service with
    ORDER_EVENTS_TOPIC to its first create, and to its first webhook (a paid session's
    checkout.session.completed, whose change it publishes), the first webhook without a topic,
    and each revision's first webhook. Each process has its own memory ledger, so one paid
    session serves every spawn: its first webhook is a first fact everywhere.
    """
    bin_dir = bin_dir or BIN
    sources = {"service": bundle(bin_dir) / "main.py"}
    sources.update({revision: bundle(bin_dir, revision) / "main.py" for revision in revisions})
    service_env = {
        "STRIPE_SECRET_KEY": BENCH_KEY,
        "STRIPE_API_BASE": emulator_url,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    # name -> (source, extra environment, whether its first success is a webhook)
    contenders: dict[str, tuple[Path, dict[str, str], bool]] = {
        name: (source, {}, False) for name, source in sources.items()
    }
    event = b""
    if pubsub_host is not None:
        topic = {
            "ORDER_EVENTS_TOPIC": _order_topic(pubsub_host),
            "PUBSUB_EMULATOR_HOST": pubsub_host,
        }
        service_env["STRIPE_WEBHOOK_SECRET"] = WEBHOOK_SECRET
        event = completed_event(_paid_session(emulator_url))
        contenders[TOPIC] = (sources["service"], topic, False)
        contenders[WEBHOOK] = (sources["service"], {}, True)
        contenders[TOPIC_WEBHOOK] = (sources["service"], topic, True)
        for revision in revisions:
            contenders[f"{revision} {WEBHOOK_SUFFIX}"] = (sources[revision], {}, True)
    node = shutil.which("node")
    express = node is not None and (EXPRESS / "node_modules" / "express").is_dir()
    names = [*contenders, "bare aio"] + ["express"] * express + ["bare node"] * bool(node)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}

    def record(
        name: str, server: Service, path: str, body: bytes | None = None, signed: bool = False
    ) -> None:
        times[name].append(_first_success(server, path, body, signed))
        cpu[name].append(tree_cpu_ms(server.pid))

    for _ in range(rounds):
        for name, (source, extra, webhook) in contenders.items():
            env = {**service_env, **extra}
            with FunctionServer(env, subprocess.DEVNULL, bin_dir, source=source) as server:
                if webhook:
                    record(name, server, WEBHOOK_PATH, event, signed=True)
                else:
                    record(name, server, CREATE, b"{}")
        hello = ROOT / "bench" / "hello_world_async.py"
        with FunctionServer({}, subprocess.DEVNULL, bin_dir, target="hello", source=hello) as bare:
            record("bare aio", bare, "/")
        env = clean_env(
            STRIPE_API_BASE=emulator_url, STRIPE_SECRET_KEY=BENCH_KEY, CREATE_FORM=CREATE_FORM
        )
        if express:
            command = [str(node), str(EXPRESS / "server.js"), "{port}"]
            with Service(command, env, subprocess.DEVNULL) as checkout:
                record("express", checkout, CREATE, b"{}")
        if node:
            command = [node, str(ROOT / "bench" / "node_checkout.js"), "{port}"]
            with Service(command, env, subprocess.DEVNULL) as checkout:
                record("bare node", checkout, CREATE, b"{}")
    venv = "production venv (requirements.txt only)" if bin_dir != BIN else "dev venv"
    pubsub_import = None if pubsub_host is None else pubsub_import_cost(bin_dir)
    return ColdStarts(times, cpu, venv, revisions, pubsub_import)


def _order_topic(pubsub_host: str) -> str:
    """The topic the --topic contenders publish to, created on the emulator (no subscription:
    nothing reads it)."""
    PubSubApi(pubsub_host).create_topic(TOPIC_PROJECT, "checkout-orders")
    return topic_path(TOPIC_PROJECT, "checkout-orders")


def _paid_session(emulator_url: str) -> dict[str, Any]:
    """A session as the service creates it (its marker: the default DEPLOYMENT_ID), then paid."""
    request = urllib.request.Request(
        f"{emulator_url}/v1/checkout/sessions",
        data=f"{CREATE_FORM}&metadata[{MARKER_KEY}]=local&metadata[imageId]=bench-image".encode(),
        headers={"Authorization": f"Bearer {BENCH_KEY}"},
    )
    with _opener.open(request, timeout=10) as response:
        session_id = json.loads(response.read())["id"]
    url = f"{emulator_url}/_emulator/sessions/{session_id}/complete"
    paid: dict[str, Any] = http_json(url, {"payment_status": "paid"})
    return paid


def _first_success(
    server: Service, path: str, body: bytes | None = None, signed: bool = False
) -> float:
    """Poll `path` until it answers 200; milliseconds since the process was spawned. `signed`:
    the body is a Stripe event, signed afresh for each attempt as Stripe signs it."""
    deadline = server.started + 30
    while True:
        request = urllib.request.Request(server.url + path, data=body)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if signed and body is not None:
            request.add_header("Stripe-Signature", sign_payload(body, WEBHOOK_SECRET))
        try:
            with _opener.open(request, timeout=10) as response:
                response.read()
                break
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"{server.command[:3]} answered {error.code}") from None
        except OSError:
            if time.perf_counter() > deadline or server.process.poll() is not None:
                raise RuntimeError(f"{server.command[:3]} did not start") from None
            time.sleep(0.002)
    return (time.perf_counter() - server.started) * 1000


def tree_cpu_ms(pid: int) -> float:
    """CPU milliseconds used so far by `pid` and its descendants, with the children they have
    reaped (/proc/PID/stat: utime, stime, cutime, cstime; in clock ticks, 10 ms here)."""
    ticks = 0
    pending = [pid]
    while pending:
        process = pending.pop()
        try:
            with open(f"/proc/{process}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
            ticks += sum(int(value) for value in fields[11:15])
            pending += children_of(process)
        except (OSError, ValueError):
            continue  # it exited meanwhile
    return ticks * 1000 / _CLOCK_TICKS


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def import_breakdown(bin_dir: Path, runs: int = 5, top: int = 10) -> list[str]:
    """What `import main` adds to the bare function's imports (`python -X importtime`, each
    module's own time, the least of `runs`), summed by top-level package, in the deployed copy."""
    service = _own_import_times(bin_dir, "import main", BUNDLES / "work-tree", runs)
    bare = _own_import_times(bin_dir, "import hello_world_async", ROOT / "bench", runs)
    added: dict[str, float] = {}
    for name, microseconds in service.items():
        if name not in bare:
            package = name.split(".")[0]
            added[package] = added.get(package, 0.0) + microseconds / 1000
    ranked = sorted(added.items(), key=lambda item: -item[1])[:top]
    parts = ", ".join(f"{name} {ms:.1f}" for name, ms in ranked)
    return [
        f"`import main` adds {sum(added.values()):.0f} ms of imports to the bare function's "
        f"{sum(bare.values()) / 1000:.0f} ms (least of {runs}); by package: {parts}"
    ]


def pubsub_import_cost(bin_dir: Path, runs: int = 5) -> str:
    """What the first publish imports after `import main` (`python -X importtime`, own times,
    least of `runs`): google-cloud-pubsub and what it brings (gRPC, protobuf, google.api_core)."""
    where = BUNDLES / "work-tree"
    service = _own_import_times(bin_dir, "import main", where, runs)
    publishing = _own_import_times(
        bin_dir, "import main\nfrom google.cloud import pubsub_v1", where, runs
    )
    added = {name: us for name, us in publishing.items() if name not in service}
    ranked = sorted(added.items(), key=lambda item: -item[1])[:5]
    parts = ", ".join(f"{name} {us / 1000:.1f}" for name, us in ranked)
    return (
        f"`from google.cloud import pubsub_v1` after `import main` adds "
        f"{sum(added.values()) / 1000:.0f} ms of imports, {len(added)} modules (least of "
        f"{runs}); the largest: {parts}"
    )


def _own_import_times(bin_dir: Path, code: str, cwd: Path, runs: int) -> dict[str, int]:
    """Each module's own import time in microseconds (`python -X importtime`), least of `runs`."""
    least: dict[str, int] = {}
    for _ in range(runs):
        done = subprocess.run(
            [str(bin_dir / "python"), "-X", "importtime", "-c", code],
            cwd=cwd,
            env=clean_env(PYTHONDONTWRITEBYTECODE="1"),
            capture_output=True,
            text=True,
            check=True,
        )
        for line in done.stderr.splitlines():
            match = re.match(r"import time:\s+(\d+) \|\s+\d+ \| *(\S+)", line)
            if match:
                name, microseconds = match.group(2), int(match.group(1))
                least[name] = min(microseconds, least.get(name, microseconds))
    return least


def instruction_counts(
    bin_dir: Path, emulator_url: str, revisions: tuple[str, ...] = ()
) -> list[str]:
    """Instructions (valgrind's callgrind) of `import main`, and of import plus a first create
    served in one process (bench/first_create.py), per deployed copy, over the bare function's
    import plus first GET. Deterministic where wall and CPU time are not: for each step's gain."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return ["Instructions: valgrind is not installed (apt-get install valgrind)."]
    env = clean_env(
        STRIPE_SECRET_KEY=BENCH_KEY,
        STRIPE_API_BASE=emulator_url,
        PYTHONDONTWRITEBYTECODE="1",
        CREATE_LIMIT_PER_MINUTE="0",
    )
    script = str(ROOT / "bench" / "first_create.py")

    def count(cwd: Path, *arguments: str) -> float:
        command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
        done = subprocess.run(
            [*command, str(bin_dir / "python"), *arguments],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        (collected,) = re.findall(r"Collected : (\d+)", done.stderr)
        return int(collected) / 1e6

    bare = count(ROOT / "bench", script, "bare")
    lines = [f"Instructions (millions, callgrind): bare function, import + first GET {bare:.0f}"]
    for name in ("work-tree", *revisions):
        where = BUNDLES / name
        imported = count(where, "-c", "import main")
        served = count(where, script, "service")
        lines.append(
            f"- the service at {name}: `import main` {imported:.0f}, import + first create "
            f"{served:.0f}, {served - bare:+.0f} over the bare function ({served / bare:.2f} x)"
        )
    return lines


def _node_version() -> str:
    node = shutil.which("node")
    if node is None:
        return ""
    done = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dev-venv", action="store_true", help="skip the production venv")
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions under valgrind"
    )
    parser.add_argument(
        "--topic",
        action="store_true",
        help="also the order flow: ORDER_EVENTS_TOPIC on Google's Pub/Sub emulator, and first "
        "webhooks (needs gcloud and Java)",
    )
    parser.add_argument(
        "revisions", nargs="*", help="git revisions of the service to spawn alongside, as deployed"
    )
    args = parser.parse_args(argv)
    if args.topic and PubSubEmulator.missing():
        print(PubSubEmulator.missing())
        return 2
    bin_dir = None if args.dev_venv else production_bin()
    began, load = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(StripeEmulator(latency_ms=0))
        pubsub = stack.enter_context(PubSubEmulator()) if args.topic else None
        result = measure(
            emulator.url,
            args.rounds,
            bin_dir,
            tuple(args.revisions),
            pubsub.host if pubsub else None,
        )
        print("\n".join(result.lines()), flush=True)
        if args.instructions:
            counts = instruction_counts(bin_dir or BIN, emulator.url, tuple(args.revisions))
            print("\n".join(counts), flush=True)
    print("\n".join(import_breakdown(bin_dir or BIN)))
    print(
        f"{began}, {os.cpu_count()} CPUs; load average at the start {load[0]:.2f}, at the end "
        f"{os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
