"""The processes a benchmark drives: the Stripe emulator, the Secret Manager fake, the function.

Each runs in its own subprocess, as in production, so that its CPU time and memory can be read
from /proc without the load generator's being mixed in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from checkout.config import ENVIRONMENT_VARIABLES
from devtools.loopback import Running, free_port, wait_for_answer

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BENCH_KEY = "sk_test_bench0000000000000000000000000000"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Loopback only: an http_proxy in the environment must not see benchmark traffic.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Variables the service reads, and functions-framework's: the benchmark sets the ones it needs.
SERVICE_VARS = (*ENVIRONMENT_VARIABLES, "THREADS", "WORKERS")


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 10) -> Any:
    """GET (or POST `body` as JSON) and decode the JSON answer; HTTP errors raise."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with _opener.open(request, timeout=timeout) as response:
        return json.loads(response.read())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (/proc/PID/stat utime + stime)."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may contain spaces; the fields after it may not.
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def memory_kb(pid: int) -> dict[str, int]:
    """Rss and Pss of the process in kB (Pss shares pages fairly between gunicorn's processes)."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                values[name] = int(rest.split()[0])
    return values


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except OSError:
        return []


class Service(Running):
    """A subprocess that answers HTTP on a loopback port."""

    def __init__(self, command: list[str], env: dict[str, str], log: IO[bytes] | int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.perf_counter()
        self.command = [part.replace("{port}", str(self.port)) for part in command]
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, path: str, seconds: float = 30.0) -> None:
        """Until any HTTP answer on `path` (an error status counts: it is serving)."""
        why = wait_for_answer(self.url + path, self.process, seconds, poll=0.02)
        if why:
            raise RuntimeError(f"{self.command[:3]} {why}")

    def _ready(self, path: str) -> None:
        """wait_ready() for a constructor: stop the process if it never answers."""
        try:
            self.wait_ready(path)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


class StripeEmulator(Service):
    """devtools.stripe_emulator with injected latency, driven through its /_emulator/ helpers."""

    def __init__(self, latency_ms: float = 100, log: IO[bytes] | int = subprocess.DEVNULL) -> None:
        command = [sys.executable, "-m", "devtools.stripe_emulator", "--port", "{port}"]
        super().__init__([*command, "--latency-ms", str(latency_ms)], clean_env(), log)
        self.latency_ms = latency_ms
        self._ready("/_emulator/health")

    def calls(self) -> int:
        """Requests that reached the emulator's /v1 API so far."""
        return http_json(f"{self.url}/_emulator/calls")["total"]

    def set_latency(self, latency_ms: float) -> None:
        http_json(f"{self.url}/_emulator/faults", {"latency_ms": latency_ms})

    def complete(self, session_id: str) -> None:
        http_json(f"{self.url}/_emulator/sessions/{session_id}/complete", {})


class SecretManagerFake(Service):
    """devtools.secret_manager_emulator holding one secret."""

    def __init__(self, secret_name: str, value: str) -> None:
        command = [sys.executable, "-m", "devtools.secret_manager_emulator", "--port", "{port}"]
        secret = f"{secret_name}={value}"
        super().__init__([*command, "--secret", secret], clean_env(), subprocess.DEVNULL)
        self._ready("/_emulator/calls")


class FunctionServer(Service):
    """`functions-framework --target checkout_api`: the production server (gunicorn with uvicorn
    workers, one event loop each), not --debug."""

    def __init__(
        self,
        env: dict[str, str],
        log: IO[bytes] | int,
        bin_dir: Path = BIN,
        *,
        workers: int = 1,
        target: str = "checkout_api",
        source: Path = ROOT / "main.py",
        signature_type: str | None = None,
    ) -> None:
        command = [
            str(bin_dir / "functions-framework"),
            "--target",
            target,
            *(["--signature-type", signature_type] if signature_type else []),
            "--source",
            str(source),
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
        ]
        # The load generator is one client at 127.0.0.1: per-client limits (docs/abuse.md) would
        # measure the limiter's refusals, not the service.
        limits = {"CREATE_LIMIT_PER_MINUTE": "0", "STATUS_LIMIT_PER_MINUTE": "0"}
        super().__init__(command, clean_env(**{"WORKERS": str(workers), **limits, **env}), log)

    def worker_pids(self, count: int = 1) -> list[int]:
        """The gunicorn workers serving the requests, once `count` of them have started."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            workers = children_of(self.pid)
            if len(workers) >= count:
                return workers
            time.sleep(0.02)
        raise RuntimeError(f"gunicorn started fewer than {count} workers")


def production_bin(log: IO[bytes] | int = subprocess.DEVNULL) -> Path | None:
    """bin/ of a venv holding requirements.txt only, as Cloud Run installs it (None if offline).

    The dev venv also holds the bench's aiohttp, and stripe imports aiohttp whenever it is
    installed: about 90 ms more cold start than production would see.
    """
    venv = ROOT / "bench" / "results" / "prod-venv"
    requirements = (ROOT / "requirements.txt").read_bytes()
    stamp = venv / "requirements.txt"
    if stamp.exists() and stamp.read_bytes() == requirements:
        return venv / "bin"
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run(
            [*pip, "-r", str(ROOT / "requirements.txt")], check=True, stdout=log, stderr=log
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    stamp.write_bytes(requirements)
    return venv / "bin"
