"""`python -m devtools.stripe_emulator`: serve the emulator until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import sys

from devtools.loopback import wait_for_stop
from devtools.stripe_emulator.api import StripeEmulator
from devtools.stripe_emulator.events import retry_schedule


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.stripe_emulator",
        description="A stateful Stripe Checkout Sessions emulator for local development and tests.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0, help="delay every /v1 answer")
    parser.add_argument("--webhook-url", help="deliver every event here")
    parser.add_argument("--webhook-secret", help="sign events with this whsec_ secret")
    parser.add_argument(
        "--retry-factor",
        type=float,
        help="retry failed deliveries on Stripe's test-mode schedule divided by this "
        "(3600: hours become seconds); default: no retries",
    )
    parser.add_argument(
        "--checkout-api",
        default="http://127.0.0.1:8080",
        help="the checkout_api function the /demo page calls",
    )
    args = parser.parse_args(argv)

    emulator = StripeEmulator(
        args.host,
        args.port,
        latency_ms=args.latency_ms,
        webhook_url=args.webhook_url,
        webhook_secret=args.webhook_secret,
        checkout_api=args.checkout_api,
        retry_schedule=retry_schedule(args.retry_factor) if args.retry_factor else (),
    )
    try:
        emulator.start()
    except OSError as err:
        print(f"Cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    print(f"Stripe emulator listening on {emulator.url}", flush=True)
    try:
        wait_for_stop()
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
