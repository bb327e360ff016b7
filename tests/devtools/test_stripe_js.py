"""The emulator's stand-in Stripe.js in Chromium: Stripe's API surface and its integration errors.

A page served on loopback (as a dev server serves it) loads /js/stripe.js from the
emulator, as an app in development does. Sessions are created straight in the emulator.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import expect

from tests.support import create_session

pytestmark = pytest.mark.browser

FRAME = "iframe[name=embedded-checkout]"


@pytest.fixture
def console_errors(browser_page) -> list[str]:
    errors: list[str] = []
    browser_page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    browser_page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


@pytest.fixture
def page(browser_page, stripe_emulator, console_errors):
    """A shop page on loopback with the stand-in loaded and an empty #checkout element.

    A real server: Chromium refuses loopback scripts to a page whose address it does not know.
    """
    html = (
        '<!doctype html><meta charset="utf-8"><title>shop</title><div id="checkout"></div>'
        f'<script src="{stripe_emulator.url}/js/stripe.js"></script>'
    ).encode()

    class Shop(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Shop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    browser_page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
    yield browser_page
    server.shutdown()
    server.server_close()


def test_it_looks_like_stripe_js_to_stripe_js_and_react_stripe_js(page):
    shape = page.evaluate(
        """async () => {
          const stripe = Stripe("pk_test_shop");
          const names = ["elements", "createToken", "createPaymentMethod", "confirmCardPayment",
                         "createEmbeddedCheckoutPage", "_registerWrapper", "registerAppInfo"];
          let elements;
          try { stripe.elements(); } catch (e) { elements = e.name; }
          return {
            version: Stripe.version,
            functions: names.filter((name) => typeof stripe[name] === "function"),
            elements,
            token: await stripe.createToken({}),
          };
        }"""
    )
    assert shape["version"] == "endive"  # what @stripe/stripe-js 10 expects
    assert len(shape["functions"]) == 7
    assert shape["elements"] == "IntegrationError"
    assert "only supports embedded Checkout" in shape["token"]["error"]["message"]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("sk_test_abc", "You should not use your secret key with Stripe.js"),
        ("", "Please call Stripe() with your publishable key"),
    ],
)
def test_a_key_that_is_not_publishable_is_refused(page, key, message):
    error = page.evaluate(
        "key => { try { Stripe(key); } catch (e) { return [e.name, e.message]; } }", key
    )
    assert error[0] == "IntegrationError"
    assert message in error[1]


def test_a_second_instance_before_destroy_is_stripes_integration_error(page, stripe_emulator):
    secret = create_session(stripe_emulator)["client_secret"]
    result = page.evaluate(
        """async (secret) => {
          const stripe = Stripe("pk_test_shop");
          const options = { fetchClientSecret: async () => secret };
          const first = await stripe.createEmbeddedCheckoutPage(options);
          const second = await stripe.createEmbeddedCheckoutPage(options).then(
            () => "created", (e) => [e.name, e.message]);
          first.destroy();
          const third = await stripe.createEmbeddedCheckoutPage(options);
          third.destroy();
          return second;
        }""",
        secret,
    )
    assert result == ["IntegrationError", "You cannot have multiple Embedded Checkout objects."]


def test_mount_unmount_and_destroy_misuse_are_integration_errors(page, stripe_emulator):
    secret = create_session(stripe_emulator)["client_secret"]
    errors = page.evaluate(
        """async (secret) => {
          const attempt = (f) => {
            try { f(); return "ok"; } catch (e) { return e.name + ": " + e.message; }
          };
          const checkout = await Stripe("pk_test_shop").createEmbeddedCheckoutPage(
            { fetchClientSecret: async () => secret });
          return {
            missingElement: attempt(() => checkout.mount("#nowhere")),
            unmountFirst: attempt(() => checkout.unmount()),
            mount: attempt(() => checkout.mount("#checkout")),
            mountTwice: attempt(() => checkout.mount("#checkout")),
            unmount: attempt(() => checkout.unmount()),
            remount: attempt(() => checkout.mount(document.getElementById("checkout"))),
            destroy: attempt(() => checkout.destroy()),
            mountDestroyed: attempt(() => checkout.mount("#checkout")),
          };
        }""",
        secret,
    )
    assert "applies to no DOM elements" in errors["missingElement"]
    assert (
        errors["unmountFirst"] == "IntegrationError: This Embedded Checkout object is not mounted."
    )
    assert errors["mount"] == errors["unmount"] == errors["remount"] == errors["destroy"] == "ok"
    assert "already mounted" in errors["mountTwice"]
    assert "has been destroyed" in errors["mountDestroyed"]
    assert page.locator(FRAME).count() == 0  # destroy() took the form away


def test_missing_fetch_client_secret_and_the_old_name_are_integration_errors(page):
    errors = page.evaluate(
        """async () => {
          const stripe = Stripe("pk_test_shop");
          const missing = await stripe.createEmbeddedCheckoutPage({ onComplete() {} }).then(
            () => "created", (e) => e.name + ": " + e.message);
          let renamed;
          try { await stripe.initEmbeddedCheckout({ fetchClientSecret: async () => "x" }); }
          catch (e) { renamed = e.name + ": " + e.message; }
          return { missing, renamed };
        }"""
    )
    assert errors["missing"].startswith("IntegrationError:")
    assert "fetchClientSecret must be a function" in errors["missing"]
    assert errors["renamed"].startswith("IntegrationError:")
    assert "createEmbeddedCheckoutPage" in errors["renamed"]


def test_fetch_client_secret_is_called_once_however_often_it_is_mounted(page, stripe_emulator):
    secret = create_session(stripe_emulator)["client_secret"]
    page.evaluate(
        """async (secret) => {
          window.fetches = 0;
          const checkout = await Stripe("pk_test_shop").createEmbeddedCheckoutPage({
            fetchClientSecret: async () => { window.fetches += 1; return secret; } });
          checkout.mount("#checkout");
          checkout.unmount();
          checkout.mount("#checkout");
        }""",
        secret,
    )
    frame = page.frame_locator(FRAME)
    expect(frame.get_by_text("Feelings board")).to_be_visible()
    expect(frame.get_by_role("button", name="Pay $2.00")).to_be_visible()
    assert page.evaluate("window.fetches") == 1


def test_a_rejected_fetch_client_secret_shows_in_the_frame_and_the_console(page, console_errors):
    page.evaluate(
        """async () => {
          const checkout = await Stripe("pk_test_shop").createEmbeddedCheckoutPage({
            fetchClientSecret: async () => {
              throw new Error("payment_provider_busy: Try again (request req_1)");
            } });
          checkout.mount("#checkout");
        }"""
    )
    alert = page.frame_locator(FRAME).get_by_role("alert")
    expect(alert).to_contain_text("Something went wrong")
    assert any(
        "fetchClientSecret() failed" in line and "payment_provider_busy" in line
        for line in console_errors
    ), console_errors


@pytest.mark.parametrize("state", ["unknown", "expired", "complete"])
def test_a_secret_that_cannot_be_paid_shows_an_error_in_the_frame(page, stripe_emulator, state):
    session = create_session(stripe_emulator)
    secret = session["client_secret"]
    if state == "unknown":
        secret = session["id"] + "_secret_notTheRealOne"
    elif state == "expired":
        stripe_emulator.expire_session(session["id"])
    else:
        stripe_emulator.complete_session(session["id"])
    page.evaluate(
        """async (secret) => {
          const checkout = await Stripe("pk_test_shop").createEmbeddedCheckoutPage(
            { fetchClientSecret: async () => secret });
          checkout.mount("#checkout");
        }""",
        secret,
    )
    expected = {"unknown": "unknown", "expired": "expired", "complete": "already complete"}[state]
    expect(page.frame_locator(FRAME).get_by_role("alert")).to_contain_text(expected)
    expect(page.frame_locator(FRAME).get_by_label("Card number")).to_have_count(0)
