"""CORS in a real browser: headless Chromium (Debian's package) driven by Playwright.

A page served from an allowed origin calls create (JSON and an Idempotency-Key, so the browser
sends a preflight first), then status, with `fetch`. The same page from another origin is blocked
by the browser itself, and Stripe is never called. No browser is downloaded: CI installs Debian's
`chromium` (.ci/run), and there a missing browser fails this test instead of skipping it
(`browser_page` in conftest.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support import CREATE, STATUS

pytestmark = pytest.mark.browser

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>checkout CORS check</title>
<script>
async function answer(response) {
  return {status: response.status, body: await response.json()};
}
async function runCheckout(api) {
  const result = {};
  try {
    result.create = await answer(await fetch(api + "%(create)s", {
      method: "POST",
      headers: {"Content-Type": "application/json", "Idempotency-Key": "browser-order-1"},
      body: JSON.stringify({imageId: "img_browser"}),
    }));
    const id = encodeURIComponent(result.create.body.session_id);
    result.status = await answer(await fetch(api + "%(status)s?session_id=" + id));
  } catch (error) {
    result.error = {name: error.name, message: String(error.message)};
  }
  return result;
}
</script>
"""


class _PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = (PAGE % {"create": CREATE, "status": STATUS}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def page_origins() -> Iterator[tuple[str, str]]:
    """The same page from two origins: (allowed, foreign)."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    allowed, foreign = (f"http://127.0.0.1:{server.server_address[1]}" for server in servers)
    yield allowed, foreign
    for server in servers:
        server.shutdown()
        server.server_close()


def request_lines(server) -> list[str]:
    return [line for line in server.logs().splitlines() if '"checkout.request"' in line]


def test_page_on_allowed_origin_creates_then_reads_status(
    live_server, stripe_emulator, page_origins, browser_page
):
    allowed, _ = page_origins
    server = live_server(ALLOWED_ORIGINS=allowed)
    browser_page.goto(allowed + "/")
    result = browser_page.evaluate("api => runCheckout(api)", server.url)

    assert "error" not in result, result
    assert result["create"]["status"] == 200
    session_id = result["create"]["body"]["session_id"]
    assert result["status"] == {
        "status": 200,
        "body": {
            "status": "open",
            "payment_status": "unpaid",
            "outcome": "open",
            "amount_refunded": 0,
            "metadata": {"imageId": "img_browser"},
        },
    }
    metadata = stripe_emulator.get_session(session_id)["metadata"]
    assert metadata == {"checkout_deployment": "local", "imageId": "img_browser"}
    # The Idempotency-Key made the browser ask first; the plain GET needed no preflight.
    lines = request_lines(server)
    assert any('"OPTIONS /api/checkout/embedded-session 204"' in line for line in lines)
    assert not any('"OPTIONS /api/checkout/session-status' in line for line in lines)


def test_page_on_foreign_origin_is_blocked_by_the_browser_before_stripe(
    live_server, stripe_emulator, page_origins, browser_page
):
    allowed, foreign = page_origins
    server = live_server(ALLOWED_ORIGINS=allowed)
    browser_page.goto(foreign + "/")
    result = browser_page.evaluate("api => runCheckout(api)", server.url)

    assert result.get("error", {}).get("name") == "TypeError", result
    assert "create" not in result
    assert stripe_emulator.calls()["total"] == 0
    # The preflight was refused, so the POST itself was never sent.
    lines = request_lines(server)
    assert any('"OPTIONS /api/checkout/embedded-session 403"' in line for line in lines)
    assert not any('"POST /api/checkout/embedded-session' in line for line in lines)
