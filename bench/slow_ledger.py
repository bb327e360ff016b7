"""What a slow (not down) ledger costs a status poll: before and after, in one run.

    python -m bench.slow_ledger [--baseline REV] [--delay 2.5] [--polls 4]

Every Firestore answer is held `--delay` seconds by a TCP proxy (devtools/delay_proxy.py) in
front of Google's Firestore emulator. For the baseline revision (exported with `git archive`) and
for the working tree, in turn: a functions-framework server with ORDER_LEDGER=firestore through
the proxy, one session paid at the Stripe emulator (no webhook), then `--polls` status calls of it
and one of an open session, each timed, and the Stripe retrieves they made counted. Needs gcloud
and Java (the Firestore emulator) and git. Prints a Markdown table and the ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

from bench.servers import BENCH_KEY, BIN, ROOT, StripeEmulator, clean_env, http_json
from devtools.delay_proxy import DelayProxy
from devtools.firestore_emulator import FirestoreEmulator
from devtools.loopback import free_port

# main before issue 30: the ledger read, then every write, each under its own deadline.
DEFAULT_BASELINE = "c88d883"
STATUS = "/api/checkout/session-status?session_id="


def export(revision: str, into: Path) -> Path:
    """The repository at `revision`, as files under `into`."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def serve(source: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """functions-framework serving `source`'s main.py, importing `source`'s checkout package."""
    port = free_port()
    command = [str(BIN / "functions-framework"), "--target", "checkout_api", "--source",
               str(source / "main.py"), "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    full = clean_env(**env, PYTHONPATH=str(source))
    process = subprocess.Popen(
        command, cwd=source, env=full, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            http_json(f"{url}/__ready", timeout=1)
        except OSError as error:
            if getattr(error, "code", None):  # an HTTP answer: it is serving
                return process, url
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{source} did not start: see {log}")


def measure(source: Path, proxy: DelayProxy, stripe: StripeEmulator, polls: int, tag: str,
            logs: Path) -> dict[str, object]:  # fmt: skip
    env = {
        "FRONTEND_URL": "http://localhost:5173",
        "STRIPE_SECRET_KEY": BENCH_KEY,
        "STRIPE_API_BASE": stripe.url,
        "ORDER_LEDGER": "firestore",
        "FIRESTORE_EMULATOR_HOST": proxy.host,
        "GOOGLE_CLOUD_PROJECT": f"bench-slow-{tag}-{os.getpid()}",
        "DEPLOYMENT_ID": "bench",
        "CREATE_LIMIT_PER_MINUTE": "0",
        "STATUS_LIMIT_PER_MINUTE": "0",
    }
    process, url = serve(source, env, logs / f"{tag}.log")
    try:
        paid = http_json(f"{url}/api/checkout/embedded-session", {})["session_id"]
        still_open = http_json(f"{url}/api/checkout/embedded-session", {})["session_id"]
        stripe.complete(paid)
        before = http_json(f"{stripe.url}/_emulator/calls")["retrieve_session"]
        times, outcomes = [], []
        for _ in range(polls):
            start = time.perf_counter()
            outcomes.append(http_json(f"{url}{STATUS}{paid}", timeout=60)["outcome"])
            times.append(time.perf_counter() - start)
        reads = http_json(f"{stripe.url}/_emulator/calls")["retrieve_session"] - before
        start = time.perf_counter()
        http_json(f"{url}{STATUS}{still_open}", timeout=60)
        open_time = time.perf_counter() - start
    finally:
        process.terminate()
        process.wait(timeout=10)
    return {"times": times, "reads": reads, "open": open_time, "outcomes": outcomes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE)
    parser.add_argument("--delay", type=float, default=2.5)
    parser.add_argument("--polls", type=int, default=4)
    args = parser.parse_args()
    reason = FirestoreEmulator.missing()
    if reason is not None:
        print(f"skipped: {reason}", file=sys.stderr)
        return 2
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory() as tmp, FirestoreEmulator() as firestore:
        base = export(args.baseline, Path(tmp) / "baseline")
        logs = Path(tmp)
        with DelayProxy(firestore.host, args.delay) as proxy, StripeEmulator() as stripe:
            results = {
                f"baseline {args.baseline}": measure(base, proxy, stripe, args.polls, "old", logs),
                "this tree": measure(ROOT, proxy, stripe, args.polls, "new", logs),
            }
    machine = f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(f"Slow ledger: every Firestore answer held {args.delay:g} s; {args.polls} polls of a "
          f"paid order, then one of an open session. {when}, {machine}, Stripe emulator "
          f"latency {stripe.latency_ms:g} ms.\n")  # fmt: skip
    print("| code | each poll of the paid order (s) | median | Stripe reads | open session |")
    print("|---|---|---:|---:|---:|")
    for name, result in results.items():
        times = result["times"]
        assert isinstance(times, list)
        each = ", ".join(f"{t:.2f}" for t in times)
        print(f"| {name} | {each} | {statistics.median(times):.2f} | "
              f"{result['reads']} | {result['open']:.2f} |")  # fmt: skip
    old, new = results.values()
    old_times, new_times = old["times"], new["times"]
    assert isinstance(old_times, list) and isinstance(new_times, list)
    ratio = statistics.median(new_times) / statistics.median(old_times)
    print(f"\nmedian poll, this tree / baseline: {ratio:.3f}; "
          f"max poll: {max(new_times):.2f} s vs {max(old_times):.2f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
