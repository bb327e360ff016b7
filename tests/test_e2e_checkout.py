"""The README's frontend, end to end: Debian's Chromium, a live function and the Stripe emulator.

The test copies the README's React component (Checkout.jsx), its plain-JavaScript variant
(checkout.js) and its Vite config verbatim, builds them with the versions pinned in
tests/e2e/package-lock.json, and renders the component inside <React.StrictMode> in a development
build. The page loads the emulator's stand-in Stripe.js (the README's dev wiring), so nothing
reaches Stripe. In CI (CI set) a missing browser or `npm ci` fails these tests; locally they skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.support import ROOT, TEST_KEY, LiveServer, require

pytestmark = pytest.mark.browser

E2E = ROOT / "tests" / "e2e"
VITE = E2E / "node_modules" / ".bin" / "vite"
SCREENSHOT = ROOT / "docs" / "demo.png"
WEBHOOK_SECRET = "whsec_e2eTestsOnly"
PUBLISHABLE_KEY = "pk_test_e2eTestsOnly"
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
FRAME = "iframe[name=embedded-checkout]"
STATUS_PATH = "/api/checkout/session-status"
CREATE_PATH = "/api/checkout/embedded-session"


def readme_files() -> dict[str, str]:
    """The code blocks that open with a `// <file name>` line, in the README's frontend section
    and in docs/frontend.md (its plain-JavaScript variant and the offline Vite wiring)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[
        readme.index("## Frontend") : readme.index("\n## ", readme.index("## Frontend") + 1)
    ]
    section += (ROOT / "docs" / "frontend.md").read_text()
    files = {}
    for body in re.findall(r"```(?:jsx|js)\n(.*?)```", section, re.S):
        first = body.split("\n", 1)[0]
        if first.startswith("// ") and "." in first:
            files[first[3:].strip()] = body
    return files


def test_readme_frontend_section_has_the_files_these_tests_build():
    assert sorted(readme_files()) == ["Checkout.jsx", "checkout.js", "vite.config.js"]


class StaticSite:
    """A frontend's web server on loopback: files from `roots`, and index.html for other paths."""

    def __init__(self) -> None:
        self.roots: list[Path] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].lstrip("/") or "index.html"
                found = next(
                    (root / path for root in site.roots if (root / path).is_file()),
                    site.roots[0] / "index.html",  # a single-page app routes /hero-me itself
                )
                body = found.read_bytes()
                self.send_response(200)
                kind = CONTENT_TYPES.get(found.suffix, "application/octet-stream")
                self.send_header("Content-Type", f"{kind}; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Shop:
    """A frontend built from the README, and the function it calls."""

    site: StaticSite
    function: LiveServer


def build(workdir: Path, api: str, stand_in: str) -> Path:
    """The README's files, built by Vite as `vite build --mode development` in a fresh app."""
    for source in (E2E / "app").iterdir():
        shutil.copy(source, workdir / source.name)
    shutil.copy(E2E / "package.json", workdir / "package.json")
    (workdir / "node_modules").symlink_to(E2E / "node_modules", target_is_directory=True)
    for name, body in readme_files().items():
        (workdir / name).write_text(body)
    env = {
        **os.environ,
        "NODE_ENV": "development",  # React's development build: StrictMode's double effects
        "VITE_CHECKOUT_API": api,
        "VITE_STRIPE_PUBLISHABLE_KEY": PUBLISHABLE_KEY,
        "VITE_STRIPE_JS_URL": stand_in,
    }
    result = subprocess.run(
        [str(VITE), "build", "--mode", "development", "--logLevel", "warn"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir / "dist"


def require_vite() -> None:
    missing = None
    if shutil.which("node") is None:
        missing = "Node.js is not installed"
    elif not VITE.exists():
        missing = "tests/e2e has no node_modules: run `npm ci` in tests/e2e"
    require(missing, "the end-to-end browser tests")


@pytest.fixture(scope="module")
def shops(chromium, stripe_emulator_server, tmp_path_factory) -> Iterator[dict[str, Shop]]:
    """One shop per REDIRECT_ON_COMPLETION value, each built against its own function."""
    require_vite()
    emulator = stripe_emulator_server
    shops: dict[str, Shop] = {}
    try:
        for redirect in ("if_required", "always"):
            site = StaticSite()
            logs = tmp_path_factory.mktemp(f"function-{redirect}")
            env = {
                "FRONTEND_URL": site.url,
                # The emulator's origin too: its /demo page calls the function from there.
                "ALLOWED_ORIGINS": f"{site.url},{emulator.url}",
                "STRIPE_SECRET_KEY": TEST_KEY,
                "STRIPE_API_BASE": emulator.url,
                "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "REDIRECT_ON_COMPLETION": redirect,
            }
            shops[redirect] = Shop(site, LiveServer(env, logs / "function.log"))
            workdir = tmp_path_factory.mktemp(f"app-{redirect}")
            dist = build(workdir, shops[redirect].function.url, f"{emulator.url}/js/stripe.js")
            site.roots = [dist, workdir]  # workdir: the plain-JS page and the README's checkout.js
        yield shops
    finally:
        for shop in shops.values():
            shop.function.stop()
            shop.site.stop()


@pytest.fixture
def webhooks_to(stripe_emulator):
    """Send the emulator's webhooks to this shop's function, signed, for the test's duration."""

    def point(shop: Shop) -> None:
        stripe_emulator.set_webhook(f"{shop.function.url}/api/checkout/webhook", WEBHOOK_SECRET)

    yield point
    stripe_emulator.set_webhook(None)


class Watched:
    """A page and what happened on it: navigations of the top frame, errors, API answers."""

    def __init__(self, page) -> None:
        self.page = page
        self.navigations: list[str] = []
        self.errors: list[str] = []
        self.created: list[dict] = []
        page.on(
            "framenavigated",
            lambda frame: frame == page.main_frame and self.navigations.append(frame.url),
        )
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)
        page.on("response", self._response)

    def _console(self, message) -> None:
        # A declined card is a 402 from the frame's fetch: Chromium logs every non-2xx resource.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(message.text)

    def _response(self, response) -> None:
        if response.url.endswith(CREATE_PATH) and response.request.method == "POST":
            self.created.append(response.json())

    def frame(self):
        return self.page.frame_locator(FRAME)


def open_page(browser_page, url: str) -> Watched:
    watched = Watched(browser_page)
    browser_page.goto(url)
    return watched


def pay(frame, card: str, email: str = "jenny@example.com") -> None:
    frame.get_by_label("Email").fill(email)
    frame.get_by_label("Card number").fill(card)
    frame.get_by_label("Expiration").fill("12 / 34")
    frame.get_by_label("CVC").fill("123")
    frame.get_by_role("button", name="Pay").click()


def function_status(shop: Shop, session_id: str) -> dict:
    url = f"{shop.function.url}{STATUS_PATH}?session_id={session_id}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def paid_on_the_same_page(watched: Watched, card: str, image_id: str) -> dict:
    """Pay, and return the status answer that onComplete received."""
    page = watched.page
    page.evaluate("window.marker = 'set before paying'")
    with page.expect_response(lambda r: STATUS_PATH in r.url) as status:
        pay(watched.frame(), card)
    expect(page.get_by_test_id("paid")).to_have_text(f"Paid {image_id}")
    # onPaid(imageId, sessionId): the app keeps the session for useStillPaid.
    assert page.evaluate("window.paid") == [[image_id, watched.created[-1]["session_id"]]]
    # Neither a navigation nor a reload: the marker set before paying is still there.
    assert page.evaluate("window.marker") == "set before paying"
    assert len(watched.navigations) == 1, watched.navigations  # the page's own load only
    assert watched.errors == []
    return status.value.json()


def assert_paid_and_fulfilled(stripe_emulator, session_id: str, image_id: str) -> None:
    session = stripe_emulator.get_session(session_id)
    assert (session["status"], session["payment_status"]) == ("complete", "paid")
    assert session["metadata"] == {"checkout_deployment": "local", "imageId": image_id}
    assert session["customer_details"]["email"] == "jenny@example.com"
    deliveries = [d for d in stripe_emulator.deliveries() if d["session_id"] == session_id]
    assert [(d["type"], d["status"]) for d in deliveries] == [("checkout.session.completed", 200)]


def test_readme_react_component_pays_with_4242_without_a_reload(
    shops, stripe_emulator, webhooks_to, browser_page
):
    shop = shops["if_required"]
    webhooks_to(shop)
    watched = open_page(browser_page, f"{shop.site.url}/?imageId=img_react")
    frame = watched.frame()
    expect(frame.get_by_text("Hero Me Feelings - Personalized AAC Board")).to_be_visible()
    expect(frame.get_by_role("button", name="Pay $2.00")).to_be_visible()
    # A development build under StrictMode: React ran the probe's effect twice...
    assert browser_page.evaluate("window.effectRuns") == 2
    # ...and yet one checkout, one session: the provider called fetchClientSecret once.
    assert stripe_emulator.calls()["sessions_created"] == 1

    status = paid_on_the_same_page(watched, "4242 4242 4242 4242", "img_react")

    assert (status["status"], status["payment_status"]) == ("complete", "paid")
    assert status["metadata"] == {"imageId": "img_react"}
    [created] = watched.created
    assert_paid_and_fulfilled(stripe_emulator, created["session_id"], "img_react")


def test_readme_react_component_shows_declines_then_pays_on_the_same_form(
    shops, stripe_emulator, webhooks_to, browser_page
):
    shop = shops["if_required"]
    webhooks_to(shop)
    watched = open_page(browser_page, f"{shop.site.url}/?imageId=img_retry")
    frame = watched.frame()
    for card, message in (
        ("4000 0000 0000 0002", "Your card was declined."),
        ("4000 0000 0000 9995", "Your card has insufficient funds."),
    ):
        pay(frame, card)
        expect(frame.get_by_role("alert")).to_have_text(message)
        [created] = watched.created
        assert function_status(shop, created["session_id"])["status"] == "open"
        assert browser_page.evaluate("window.paid") == []
        expect(frame.get_by_role("button", name="Pay")).to_be_enabled()

    status = paid_on_the_same_page(watched, "4242 4242 4242 4242", "img_retry")

    assert (status["status"], status["payment_status"]) == ("complete", "paid")
    assert stripe_emulator.calls()["sessions_created"] == 1
    assert_paid_and_fulfilled(stripe_emulator, created["session_id"], "img_retry")


def test_readme_react_component_with_always_lands_on_the_return_page(
    shops, stripe_emulator, webhooks_to, browser_page
):
    shop = shops["always"]
    webhooks_to(shop)
    watched = open_page(browser_page, f"{shop.site.url}/?imageId=img_always")
    browser_page.evaluate("window.marker = 'set before paying'")
    with browser_page.expect_response(lambda r: STATUS_PATH in r.url) as status:
        pay(watched.frame(), "4242 4242 4242 4242")
    [created] = watched.created
    session_id = created["session_id"]

    # RETURN_PATH's default, with Stripe's {CHECKOUT_SESSION_ID} filled in by the stand-in.
    assert browser_page.url == f"{shop.site.url}/hero-me?session_id={session_id}"
    assert status.value.url.endswith(f"{STATUS_PATH}?session_id={session_id}")
    answer = status.value.json()
    assert (answer["status"], answer["payment_status"]) == ("complete", "paid")
    expect(browser_page.get_by_role("status")).to_have_text("Paid")
    expect(browser_page.get_by_test_id("paid")).to_have_text("Paid img_always")
    assert browser_page.evaluate("window.marker") is None  # a real navigation this time
    assert watched.errors == []
    assert_paid_and_fulfilled(stripe_emulator, session_id, "img_always")


def refund_in_full(stripe_emulator, session_id: str) -> None:
    """Refund the session's payment through Stripe's API, as the Dashboard does, days later."""
    payment_intent = stripe_emulator.get_session(session_id)["payment_intent"]
    request = urllib.request.Request(
        f"{stripe_emulator.url}/v1/refunds",
        data=urllib.parse.urlencode({"payment_intent": payment_intent}).encode(),
        headers={"Authorization": f"Bearer {TEST_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["status"] == "succeeded"


def dispute(stripe_emulator, session_id: str) -> None:
    """The cardholder disputes the payment at their bank: an emulator helper (Stripe has no API)."""
    stripe_emulator.open_dispute(stripe_emulator.get_session(session_id)["payment_intent"])


def board_is_taken_away(watched: Watched, shop: Shop, session_id: str, outcome: str) -> None:
    """The emulator's signed event reached the function: the page's next check drops the board."""
    page = watched.page
    expect(page.get_by_test_id("revoked")).to_have_text(f"Access removed: {outcome}")
    expect(page.get_by_test_id("paid")).to_have_count(0)
    assert set(page.evaluate("window.revoked")) == {outcome}
    assert function_status(shop, session_id)["outcome"] == outcome
    assert len(watched.navigations) == 1, watched.navigations  # no reload did it
    assert watched.errors == []


def still_shows_the_board_after_a_check(watched: Watched, image_id: str) -> None:
    page = watched.page
    with page.expect_response(lambda r: STATUS_PATH in r.url) as check:
        pass  # the board's component asks every 300 ms
    assert check.value.json()["outcome"] == "paid"
    expect(page.get_by_test_id("paid")).to_have_text(f"Paid {image_id}")
    assert page.evaluate("window.revoked") == []


@pytest.mark.parametrize("outcome", ["refunded", "disputed"])
def test_readme_react_component_takes_the_board_away_on_a_refund_or_a_dispute(
    shops, stripe_emulator, webhooks_to, browser_page, outcome
):
    shop = shops["if_required"]
    webhooks_to(shop)
    watched = open_page(browser_page, f"{shop.site.url}/?imageId=img_{outcome}")
    paid_on_the_same_page(watched, "4242 4242 4242 4242", f"img_{outcome}")
    [created] = watched.created
    still_shows_the_board_after_a_check(watched, f"img_{outcome}")

    (refund_in_full if outcome == "refunded" else dispute)(stripe_emulator, created["session_id"])

    board_is_taken_away(watched, shop, created["session_id"], outcome)


def test_readme_return_page_tells_a_settling_debit_and_offers_a_new_checkout_when_it_fails(
    shops, stripe_emulator, browser_page
):
    shop = shops["always"]
    request = urllib.request.Request(
        f"{shop.function.url}{CREATE_PATH}",
        data=b'{"imageId": "img_debit"}',
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        session_id = json.loads(response.read())["session_id"]
    stripe_emulator.complete_session(session_id, "unpaid")  # a bank debit, still settling
    return_page = f"{shop.site.url}/hero-me?session_id={session_id}"

    watched = open_page(browser_page, return_page)
    expect(browser_page.get_by_role("status")).to_contain_text("still confirming the payment")

    stripe_emulator.settle_payment(session_id, "failed")  # days later, the debit bounces
    browser_page.goto(return_page)
    expect(browser_page.get_by_role("status")).to_contain_text("The payment failed.")
    browser_page.get_by_role("button", name="Start a new checkout").click()

    # The app's onNewCheckout took the customer back to the checkout page: a new session.
    expect(watched.frame().get_by_role("button", name="Pay $2.00")).to_be_visible()
    assert browser_page.url.startswith(f"{shop.site.url}/?imageId=")
    [created] = watched.created
    assert created["session_id"] != session_id
    assert browser_page.evaluate("window.paid") == []
    assert watched.errors == []


def test_readme_plain_javascript_variant_pays_without_a_reload(
    shops, stripe_emulator_server, stripe_emulator, webhooks_to, browser_page
):
    shop = shops["if_required"]
    webhooks_to(shop)
    query = f"stripe_js={stripe_emulator_server.url}/js/stripe.js&api={shop.function.url}"
    watched = open_page(browser_page, f"{shop.site.url}/plain.html?{query}&imageId=img_plain")
    expect(watched.frame().get_by_role("button", name="Pay $2.00")).to_be_visible()
    status = paid_on_the_same_page(watched, "4242 4242 4242 4242", "img_plain")

    assert (status["status"], status["payment_status"]) == ("complete", "paid")
    [created] = watched.created
    assert_paid_and_fulfilled(stripe_emulator, created["session_id"], "img_plain")


def test_readme_plain_javascript_variant_takes_the_board_away_on_a_refund(
    shops, stripe_emulator_server, stripe_emulator, webhooks_to, browser_page
):
    shop = shops["if_required"]
    webhooks_to(shop)
    query = f"stripe_js={stripe_emulator_server.url}/js/stripe.js&api={shop.function.url}"
    watched = open_page(browser_page, f"{shop.site.url}/plain.html?{query}&imageId=img_plain_ref")
    paid_on_the_same_page(watched, "4242 4242 4242 4242", "img_plain_ref")
    [created] = watched.created
    still_shows_the_board_after_a_check(watched, "img_plain_ref")

    refund_in_full(stripe_emulator, created["session_id"])

    board_is_taken_away(watched, shop, created["session_id"], "refunded")


def test_demo_page_sells_the_board_without_a_reload_and_writes_the_readme_screenshot(
    shops, stripe_emulator_server, stripe_emulator, webhooks_to, browser_page
):
    shop = shops["if_required"]
    webhooks_to(shop)
    demo = f"{stripe_emulator_server.url}/demo?api={shop.function.url}&imageId=img_demo_readme"
    watched = open_page(browser_page, demo)
    expect(browser_page.get_by_role("heading", name="Hero Me Feelings board")).to_be_visible()
    assert browser_page.locator(FRAME).count() == 0  # the form comes on click
    browser_page.evaluate("window.marker = 'set before paying'")
    browser_page.get_by_role("button", name="Buy for $2").click()
    with browser_page.expect_response(lambda r: STATUS_PATH in r.url) as status:
        pay(watched.frame(), "4242 4242 4242 4242")

    expect(browser_page.get_by_text("Paid ✓")).to_contain_text("img_demo_readme")
    expect(watched.frame().get_by_text("Payment successful")).to_be_visible()
    assert status.value.json()["status"] == "complete"
    assert browser_page.evaluate("window.marker") == "set before paying"
    assert len(watched.navigations) == 1
    assert watched.errors == []
    [created] = watched.created
    assert_paid_and_fulfilled(stripe_emulator, created["session_id"], "img_demo_readme")

    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser_page.screenshot(
        path=str(SCREENSHOT), clip={"x": 0, "y": 0, "width": 960, "height": 600}
    )
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
