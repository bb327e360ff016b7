"""Where the worker's CPU goes under one workload: py-spy samples, summed by component.

    .venv/bin/pip install py-spy          # a profiling tool, not a dependency of the project
    .venv/bin/python -m bench.profile create [--seconds 10]

Starts the same stack as bench/run.py, drives the workload with 64 connections, and samples the
uvicorn worker with `py-spy record --gil` (only the thread holding the GIL, so only CPU that
counts against the one-core ceiling). Each sample goes to the component of its innermost frame.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench import loadgen
from bench.run import RESULTS, Stack

# The first match wins: (start of the file in a py-spy frame, component).
COMPONENTS = (
    ("(checkout/stripe_transport", "Stripe transport (checkout/stripe_access/transport.py)"),
    ("(checkout/", "checkout/ (this service)"),
    ("(main.py", "checkout/ (this service)"),
    ("(stripe/", "stripe SDK"),
    ("(uvicorn/", "uvicorn (HTTP server)"),
    ("(starlette/", "Starlette, functions-framework"),
    ("(functions_framework/", "Starlette, functions-framework"),
    ("(werkzeug/", "werkzeug (routing)"),
    ("(asyncio/", "event loop, sockets, TLS (asyncio)"),
    ("(selectors", "event loop, sockets, TLS (asyncio)"),
    ("(ssl", "event loop, sockets, TLS (asyncio)"),
    ("(logging/", "logging and JSON"),
    ("(json/", "logging and JSON"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("workload", choices=("create", "status-open", "status-complete", "mix"))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        print("py-spy is not installed: .venv/bin/pip install py-spy")
        return 2
    wrk = loadgen.find_wrk(install=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with Stack(1, RESULTS / "server.log") as stack, tempfile.TemporaryDirectory() as scratch:
        workload = next(w for w in stack.workloads() if w.name == args.workload)
        loadgen.run(workload, 64, 2, wrk)  # warm-up
        raw = Path(scratch) / "samples.txt"
        load = threading.Thread(
            target=loadgen.run, args=(workload, 64, args.seconds + 2, wrk), daemon=True
        )
        load.start()
        record = ["record", "--pid", str(stack.workers[0]), "--gil", "--rate", str(args.rate)]
        subprocess.run(
            [py_spy, *record, "--duration", str(args.seconds), "--format", "raw", "-o", str(raw)],
            check=True,
            capture_output=True,
        )
        load.join()
        print(summary(raw.read_text(), args.workload))
    return 0


def summary(raw: str, title: str) -> str:
    """Share of GIL-holding samples per component: in its own code, and including its callees."""
    own: collections.Counter[str] = collections.Counter()
    inside: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        own[_component(frames[-1])] += samples
        for component in {_component(frame) for frame in frames}:
            inside[component] += samples
    lines = [
        f"py-spy --gil, {title}: {total} samples",
        "| component | CPU in its own code | CPU in it and what it calls |",
        "|---|---:|---:|",
    ]
    for component, samples in own.most_common(8):
        share, within = 100 * samples / total, 100 * inside[component] / total
        lines.append(f"| {component} | {share:.0f} % | {within:.0f} % |")
    return "\n".join(lines)


def _component(frame: str) -> str:
    for piece, component in COMPONENTS:
        if piece in frame:
            return component
    return "other stdlib (urllib.parse, re, typing, dataclasses ...)"


if __name__ == "__main__":
    sys.exit(main())
