"""`python -m bench.head_flood`: the review's head flood against the production server, and what it
costs the worker's memory (docs/abuse.md, "Direct exposure").

4 connections each send 4 MiB of header lines and never end the head. The worker's RSS is sampled
before, during (the peak) and after; the ratio is peak over before.
"""

from __future__ import annotations

import platform
import socket
import subprocess
import threading
import time
from datetime import date

from bench.servers import BENCH_KEY, FunctionServer, memory_kb

CONNECTIONS = 4
FLOOD_BYTES = 4 << 20
LINE = b"X-Pad: " + b"p" * 1000 + b"\r\n"


def flood(port: int, outcomes: list[str], index: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /api/checkout/embedded-session HTTP/1.1\r\nHost: x\r\n")
        sent = 0
        try:
            while sent < FLOOD_BYTES:
                sock.sendall(LINE * 64)
                sent += len(LINE) * 64
        except OSError as error:
            outcomes[index] = f"closed by the server after {sent} bytes ({type(error).__name__})"
            return
        sock.settimeout(3)
        try:
            answer = sock.recv(64).split(b"\r\n", 1)[0].decode(errors="replace")
        except TimeoutError:
            answer = ""  # still waiting for the rest of the head
        outcomes[index] = f"all {sent} bytes sent; answer: {answer or 'none in 3 s'}"


def main() -> None:
    env = {"STRIPE_SECRET_KEY": BENCH_KEY, "STRIPE_API_BASE": "http://127.0.0.1:9"}
    with FunctionServer(env, subprocess.DEVNULL) as server:
        server.wait_ready("/ready")
        [worker] = server.worker_pids()
        before = memory_kb(worker)["Rss"]
        outcomes = [""] * CONNECTIONS
        threads = [
            threading.Thread(target=flood, args=(server.port, outcomes, n))
            for n in range(CONNECTIONS)
        ]
        for thread in threads:
            thread.start()
        peak = before
        while any(thread.is_alive() for thread in threads):
            peak = max(peak, memory_kb(worker)["Rss"])
            time.sleep(0.01)
        after = memory_kb(worker)["Rss"]
    print(f"{date.today()} {platform.machine()} Python {platform.python_version()}")
    print(f"{CONNECTIONS} connections x {FLOOD_BYTES >> 20} MiB of header lines, no end of head")
    for outcome in outcomes:
        print(f"  {outcome}")
    print(
        f"worker RSS: before {before / 1024:.1f} MB, peak {peak / 1024:.1f} MB, "
        f"after {after / 1024:.1f} MB; peak/before {peak / before:.2f}"
    )


if __name__ == "__main__":
    main()
