"""What the emulator's payment, list and endpoint tests share: the SDK pointed at an emulator, a
valid session, the /_emulator/ helpers, and a local endpoint that records what it is sent."""

from __future__ import annotations

import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
import stripe

from devtools.stripe_emulator import StripeEmulator

KEY = "sk_test_emulator"
WEBHOOK_SECRET = "whsec_emulator_tests"
OLD_API_VERSION = "2025-09-30.clover"
RETURN_URL = "https://app.example/hero-me?session_id={CHECKOUT_SESSION_ID}"


def sdk(emulator: StripeEmulator, key: str = KEY) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": emulator.url}, max_network_retries=0)


def line_item(amount: int = 200) -> dict[str, Any]:
    return {
        "quantity": 1,
        "price_data": {"currency": "usd", "unit_amount": amount, "product_data": {"name": "B"}},
    }


def create(client: stripe.StripeClient, **overrides: Any) -> Any:
    """An embedded-page payment session for $2 (or as `overrides` say)."""
    params: Any = {
        "ui_mode": "embedded_page",
        "mode": "payment",
        "return_url": RETURN_URL,
        "line_items": [line_item()],
        **overrides,
    }
    return client.v1.checkout.sessions.create(params=params)


def helper(emulator: StripeEmulator, method: str, path: str, **json: Any) -> requests.Response:
    return requests.request(method, f"{emulator.url}/_emulator/{path}", json=json or None)


class WebhookReceiver:
    """A local endpoint that records what the emulator posts to it, answering `status`."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def wait_for(self, count: int, seconds: float = 30) -> None:
        """Until `count` deliveries arrived; the bound is generous: it only says "no hang"."""
        deadline = time.monotonic() + seconds
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.received) >= count

    def verified_event(self, index: int = -1, secret: str = WEBHOOK_SECRET) -> stripe.Event:
        headers, body = self.received[index]
        return stripe.Webhook.construct_event(body, headers["Stripe-Signature"], secret)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


_SHELL_BLOCK = re.compile(r"^```bash[ \t]*\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def shell_block_of(markdown: str, heading: str) -> str:
    """The one bash block in the section under `heading` (up to the next ## heading)."""
    section = markdown.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    (block,) = (match["body"] for match in _SHELL_BLOCK.finditer(section))
    return block
