"""`make run`: start the function on :8080, with the bundled Stripe emulator when no key is set.

Never the emulator on Cloud Run (K_SERVICE); offline its origin joins CORS (docs/emulator.md)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from urllib.parse import urlsplit

from checkout.config import DEFAULT_FRONTEND_URL, ConfigError, load_settings
from checkout.keys import check_secret_shapes
from devtools.loopback import wait_for_answer

# Not real credentials: only the bundled emulator accepts them.
EMULATOR_KEY = "sk_test_emulatorLocalOnlyNotARealKey"
LOCAL_WEBHOOK_SECRET = "whsec_localEmulatorOnly"


def main() -> int:
    env = dict(os.environ)
    port = env.get("PORT", "8080")
    host = env.get("HOST", "127.0.0.1")
    # One uvicorn worker, one event loop: it serves every concurrent request, as on Cloud Run
    # (README "Performance"). WORKERS=N in the environment gives N, for a machine with N cores.
    env.setdefault("WORKERS", "1")
    children: list[subprocess.Popen] = []
    try:
        # The checks Cloud Run makes at start (checkout/startup.py): settings, the secrets' shapes.
        check_secret_shapes(load_settings(env))
    except ConfigError as error:
        print(f"configuration error, not starting: {error}", file=sys.stderr, flush=True)
        return 2

    use_emulator = not (env.get("STRIPE_SECRET_KEY") or env.get("STRIPE_SECRET_NAME"))
    if use_emulator and env.get("K_SERVICE"):
        print("K_SERVICE is set (Cloud Run): refusing to start the Stripe emulator.", flush=True)
        use_emulator = False
    if use_emulator:
        emulator_port = env.get("STRIPE_EMULATOR_PORT", "12111")
        taken = _taken(emulator_port)
        if taken:
            print(
                f"the Stripe emulator's port {emulator_port} is in use ({taken}), not starting: "
                "another process (another `make run`'s emulator?) would get this run's payments. "
                "Stop it, or set STRIPE_EMULATOR_PORT to a free port.",
                file=sys.stderr,
                flush=True,
            )
            return 2
        base = f"http://127.0.0.1:{emulator_port}"
        webhook_url = f"http://127.0.0.1:{port}/api/checkout/webhook"
        children.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "devtools.stripe_emulator",
                    "--port",
                    emulator_port,
                    "--webhook-url",
                    webhook_url,
                    "--webhook-secret",
                    LOCAL_WEBHOOK_SECRET,
                    "--checkout-api",
                    f"http://{_browser_host(host)}:{port}",
                ]
            )
        )
        _wait_for(f"{base}/_emulator/calls", children[0])
        env["STRIPE_API_BASE"] = base
        env["STRIPE_SECRET_KEY"] = EMULATOR_KEY
        env.setdefault("STRIPE_WEBHOOK_SECRET", LOCAL_WEBHOOK_SECRET)
        env["ALLOWED_ORIGINS"] = _with_origin(env, base)
        print(
            f"*** OFFLINE MODE: no STRIPE_SECRET_KEY or STRIPE_SECRET_NAME is set, so payments go "
            f"to the bundled Stripe emulator at {base} (nothing is charged). Set "
            f"STRIPE_SECRET_KEY=sk_test_... to use real Stripe. ***",
            flush=True,
        )
        print(
            f"*** Demo: open {base}/demo and pay with 4242 4242 4242 4242 (the emulator's "
            f"stand-in Stripe.js; a frontend can load it from {base}/js/stripe.js). ***",
            flush=True,
        )

    command = [
        os.path.join(os.path.dirname(sys.executable), "functions-framework"),
        "--target",
        "checkout_api",
        "--host",
        host,
        "--port",
        port,
    ]
    workers = env["WORKERS"]
    print(
        f"Serving checkout_api on http://{host}:{port}: {workers} worker(s), one event loop each",
        flush=True,
    )
    function = subprocess.Popen(command, env=env)
    children.append(function)

    def stop(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return function.wait()
    finally:
        stop(signal.SIGTERM, None)
        for child in children:
            child.wait(timeout=10)


def _with_origin(env: dict[str, str], origin: str) -> str:
    """ALLOWED_ORIGINS with the emulator's origin added, so that its /demo page may call us."""
    configured = env.get("ALLOWED_ORIGINS", "").strip()
    if configured == "*":
        return configured
    if not configured:  # the service's default: the origin of FRONTEND_URL
        frontend = urlsplit(env.get("FRONTEND_URL") or DEFAULT_FRONTEND_URL)
        configured = f"{frontend.scheme}://{frontend.netloc}"
    return f"{configured},{origin}"


def _browser_host(host: str) -> str:
    """The address a browser on this machine uses for a server bound to `host`."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def _taken(port: str) -> str | None:
    """Why the emulator could not listen on 127.0.0.1:`port`, or None if it can."""
    with socket.socket() as probe:
        # As the emulator's server binds: a port left in TIME_WAIT is free, a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", int(port)))
        except (OSError, ValueError) as error:
            return str(error)
    return None


def _wait_for(url: str, process: subprocess.Popen[bytes], seconds: float = 10.0) -> None:
    why = wait_for_answer(url, process, seconds)
    if why:
        raise SystemExit(f"the Stripe emulator at {url} {why} (is its port in use?)")


if __name__ == "__main__":
    sys.exit(main())
