"""Closed-loop HTTP load: `wrk` when it is installed, else an asyncio client on aiohttp.

wrk is the default because the load generator shares this machine's two cores with the server
and the emulator: wrk (C, one event loop per thread) spends several times less CPU per request
than any Python client. Both report the same numbers, including their own CPU time, so a run
can show how much of the machine the client took.

    python -m bench.loadgen SPEC.json    # the aiohttp client; prints one JSON result line
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Workload:
    """Requests to cycle through: each connection sends the next target as soon as it can."""

    name: str
    method: str
    targets: tuple[str, ...]  # absolute URLs
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    errors: int  # HTTP status >= 400, timeouts and socket errors
    p50_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_s: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def find_wrk(install: bool) -> str | None:
    """The wrk binary; with `install`, try Debian's package once (root and apt-get only)."""
    found = shutil.which("wrk")
    if found or not install:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    print("wrk is not installed: trying `apt-get install -y wrk` ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt_get(*arguments: str) -> bool:
        quiet = subprocess.DEVNULL
        done = subprocess.run(
            ["apt-get", *arguments], env=env, timeout=300, stdout=quiet, stderr=quiet, check=False
        )
        return done.returncode == 0

    try:
        # A fresh machine may have no package lists yet: update once, then retry.
        if not apt_get("install", "-y", "-q", "wrk") and apt_get("update", "-q"):
            apt_get("install", "-y", "-q", "wrk")
    except (OSError, subprocess.TimeoutExpired):
        return None
    return shutil.which("wrk")


def run(
    workload: Workload, connections: int, seconds: float, wrk: str | None, threads: int = 2
) -> LoadResult:
    """Drive the workload for `seconds` with `connections` keep-alive connections."""
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        spec = Path(scratch) / "spec.json"
        spec.write_text(
            json.dumps({**asdict(workload), "connections": connections, "seconds": seconds})
        )
        if wrk:
            script = Path(scratch) / "workload.lua"
            targets = Path(scratch) / "targets.txt"
            targets.write_text("".join(_path_of(t) + "\n" for t in workload.targets))
            script.write_text(_lua(workload, targets))
            command = [
                wrk,
                f"-t{min(threads, connections)}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                _origin_of(workload.targets[0]),
            ]
        else:
            command = [sys.executable, "-m", "bench.loadgen", str(spec)]
        output, cpu = _run_measured(command)
    line = next(line for line in reversed(output.splitlines()) if line.startswith("{"))
    result = json.loads(line)
    return LoadResult(
        requests=result["requests"],
        seconds=result["seconds"],
        errors=result["errors"],
        p50_ms=result["p50_ms"],
        p99_ms=result["p99_ms"],
        max_ms=result["max_ms"],
        client_cpu_s=cpu,
    )


def _run_measured(command: list[str]) -> tuple[str, float]:
    """Run to completion; its stdout, and the CPU time it used (from wait4's rusage)."""
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        output = out.read().decode(errors="replace")
    if process.returncode:
        raise RuntimeError(f"{command[0]} failed ({process.returncode}):\n{output[-2000:]}")
    return output, usage.ru_utime + usage.ru_stime


def _origin_of(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _path_of(url: str) -> str:
    rest = url.partition("://")[2]
    return "/" + rest.split("/", 1)[1] if "/" in rest else "/"


def _lua(workload: Workload, targets: Path) -> str:
    headers = "".join(
        f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}\n"
        for name, value in workload.headers.items()
    )
    one_target = len(workload.targets) == 1
    # With one target wrk builds the request once; a request() function would cost per request.
    cycle = (
        f"wrk.path = {json.dumps(_path_of(workload.targets[0]))}\n"
        if one_target
        else _LUA_CYCLE.replace("TARGETS", json.dumps(str(targets)))
    )
    return (
        f"wrk.method = {json.dumps(workload.method)}\n"
        f"wrk.body = {json.dumps(workload.body)}\n" + headers + cycle + _LUA_DONE
    )


# Each wrk thread starts at a different point of the list, so the threads do not move in step.
_LUA_CYCLE = """
local targets = {}
for line in io.lines(TARGETS) do targets[#targets + 1] = line end
local threads = 0
function setup(thread)
  thread:set("offset", threads * 7919)
  threads = threads + 1
end
local i = 0
function init(args) i = offset or 0 end
function request()
  i = i + 1
  return wrk.format(nil, targets[(i % #targets) + 1])
end
"""

_LUA_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.6f, "errors": %d, "p50_ms": %.3f, "p99_ms": %.3f, ' ..
    '"max_ms": %.3f}\\n',
    summary.requests, summary.duration / 1e6,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


# --- the aiohttp client (used when wrk is unavailable) -------------------------------------------


async def _drive(spec: dict) -> dict:
    import aiohttp

    targets, connections = spec["targets"], spec["connections"]
    latencies: list[float] = []
    errors = 0
    body = spec["body"].encode() or None
    deadline = time.perf_counter() + spec["seconds"]
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)

    async def connection(offset: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        i = offset
        while time.perf_counter() < deadline:
            i += 1
            began = time.perf_counter()
            try:
                async with session.request(
                    spec["method"], targets[i % len(targets)], data=body, headers=spec["headers"]
                ) as response:
                    await response.read()
                    failed = response.status >= 400
            except (TimeoutError, aiohttp.ClientError):
                failed = True
            latencies.append(time.perf_counter() - began)
            errors += failed

    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(connection(n * 7919, session) for n in range(connections)))
    seconds = time.perf_counter() - began
    latencies.sort()

    def percentile(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000 if latencies else 0.0
        )

    return {
        "requests": len(latencies),
        "seconds": seconds,
        "errors": errors,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "max_ms": latencies[-1] * 1000 if latencies else 0.0,
    }


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    try:
        import uvloop  # optional: a cheaper event loop leaves more CPU to the server

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(_drive(spec))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
