"""`python -m bench.attacks`: the review's attacks on the public endpoints, and the Stripe calls
each one costs, counted by the Stripe emulator (docs/abuse.md quotes the output).

The function runs with its default limits, behind a pretend Google front end: every request
carries an X-Forwarded-For whose last entry is the attacker's address, as Cloud Run's appends it.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import date

from bench.servers import BENCH_KEY, FunctionServer, StripeEmulator, http_json
from checkout.orders.session import MARKER_KEY

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
ATTACKER = "203.0.113.66"
DEPLOYMENT = "checkout-api"
CREATE = "/api/checkout/embedded-session"
STATUS = "/api/checkout/session-status?session_id="


def send(url: str, method: str = "GET", spoof: str = "") -> int:
    forwarded = f"{spoof}, {ATTACKER}" if spoof else ATTACKER
    headers = {"X-Forwarded-For": forwarded, "Content-Type": "application/json"}
    body = b"{}" if method == "POST" else None
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with _opener.open(request, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def stripe_calls(emulator: StripeEmulator) -> int:
    return http_json(f"{emulator.url}/_emulator/calls")["total"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args()
    emulator = StripeEmulator(latency_ms=100)
    rows: list[tuple[str, int, int, str]] = []

    def attack(name: str, run) -> None:
        # A fresh function per attack: each starts with full buckets and empty caches.
        server = FunctionServer(
            {
                # Cloud Run's default hops; K_SERVICE itself would refuse the emulator's http.
                "TRUSTED_PROXY_HOPS": "1",
                "DEPLOYMENT_ID": DEPLOYMENT,
                "FRONTEND_URL": "https://shop.example.com",
                "STRIPE_SECRET_KEY": BENCH_KEY,
                "STRIPE_API_BASE": emulator.url,
                "CREATE_LIMIT_PER_MINUTE": "30",
                "STATUS_LIMIT_PER_MINUTE": "120",
            },
            subprocess.DEVNULL,
        )
        try:
            server.wait_ready("/ready")
            session = _session(emulator)  # made before counting: it is not the attack's
            before = stripe_calls(emulator)
            requests, answers = run(server, session)
            rows.append((name, requests, stripe_calls(emulator) - before, answers))
        finally:
            server.stop()

    def unknown_ids(server, _session_id: str) -> tuple[int, str]:
        codes = [send(f"{server.url}{STATUS}cs_test_unknown{n:06d}") for n in range(300)]
        return 300, _tally(codes)

    def one_unknown_id(server, _session_id: str) -> tuple[int, str]:
        codes = [send(f"{server.url}{STATUS}cs_test_unknown000001") for _ in range(50)]
        return 50, _tally(codes)

    def polls(server, session: str) -> tuple[int, str]:
        with ThreadPoolExecutor(100) as pool:
            codes = list(pool.map(lambda _: send(f"{server.url}{STATUS}{session}"), range(100)))
        return 100, _tally(codes)

    def head(server, session: str) -> tuple[int, str]:
        return 1, _tally([send(f"{server.url}{STATUS}{session}", "HEAD")])

    def creates(server, _session_id: str) -> tuple[int, str]:
        return 100, _tally([send(server.url + CREATE, "POST") for _ in range(100)])

    def spoofed(server, _session_id: str) -> tuple[int, str]:
        codes = [send(server.url + CREATE, "POST", spoof=f"10.0.{n}.1") for n in range(100)]
        return 100, _tally(codes)

    attack("300 status calls, each for a different unknown id", unknown_ids)
    attack("50 status calls for one unknown id", one_unknown_id)
    attack("100 concurrent status calls for one open session", polls)
    attack("HEAD on the status of an open session", head)
    attack("100 creates from one client", creates)
    attack("100 creates, each with a different spoofed X-Forwarded-For", spoofed)
    emulator.stop()

    print(f"Attacks on {date.today()}, {platform.machine()}, 100 ms injected Stripe latency")
    print("| attack | requests | Stripe calls | answers |")
    print("|---|---:|---:|---|")
    for name, requests, calls, answers in rows:
        print(f"| {name} | {requests} | {calls} | {answers} |")


def _session(emulator: StripeEmulator) -> str:
    """An open session of this deployment's, made straight at the emulator's API."""
    form = urllib.parse.urlencode(
        {
            "ui_mode": "embedded_page",
            "mode": "payment",
            "return_url": "https://shop.example.com/done?session_id={CHECKOUT_SESSION_ID}",
            "line_items[0][price_data][currency]": "usd",
            "line_items[0][price_data][unit_amount]": "200",
            "line_items[0][price_data][product_data][name]": "Attack target",
            "line_items[0][quantity]": "1",
            # One of ours, as the function's own create would mark it.
            f"metadata[{MARKER_KEY}]": DEPLOYMENT,
        }
    ).encode()
    request = urllib.request.Request(
        f"{emulator.url}/v1/checkout/sessions",
        data=form,
        headers={"Authorization": f"Bearer {BENCH_KEY}"},
    )
    with _opener.open(request, timeout=10) as response:
        return json.loads(response.read())["id"]


def _tally(codes: list[int]) -> str:
    counts: dict[int, int] = {}
    for code in codes:
        counts[code] = counts.get(code, 0) + 1
    return ", ".join(f"{n} x {code}" for code, n in sorted(counts.items()))


if __name__ == "__main__":
    main()
