"""Shared fixtures: the Stripe emulator on loopback, the function under test, a live server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from checkout.api.app import CheckoutApi
from devtools.secret_manager_emulator import SecretManagerEmulator
from devtools.stripe_emulator import StripeEmulator
from tests.asgi_client import AsgiApp, Client
from tests.support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    FRONTEND,
    SERVICE_VARS,
    TEST_KEY,
    WHSEC,
    CapturedLogs,
    Deliveries,
    LiveServer,
    function_app_for,
    require_browser,
)

# The emulators' fixtures (`firestore`, `pubsub`: a running emulator and a fresh project id), and
# the Cloud Build test step's PATH policy for every test that step selects.
pytest_plugins = ["tests.firestore_emulator", "tests.pubsub_emulator", "tests.cloudbuild_step"]


# Variables the service reads; each test starts from none of them set, then the base env.

# Markers of the tests that take seconds each: emulators, a browser, gcloud, live processes.
HEAVY = ("firestore", "pubsub", "browser", "gcloud", "curl", "slow")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules with heavy tests first, each module's tests in their order.

    `make test` hands whole modules to its workers in this order (pytest-xdist, loadscope): the
    long ones start first and the quick ones fill in at the end, instead of both workers waiting
    on the last emulator module. Runs after the emulator plugins have marked their tests.
    """
    heavy = {
        item.nodeid.split("::")[0]
        for item in items
        if any(item.get_closest_marker(name) for name in HEAVY)
    }
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in heavy)


@pytest.fixture(scope="session")
def stripe_emulator_server() -> Iterator[StripeEmulator]:
    with StripeEmulator() as emulator:
        yield emulator


@pytest.fixture
def stripe_emulator(stripe_emulator_server: StripeEmulator) -> Iterator[StripeEmulator]:
    """The session's emulator, reset before and after each test.

    reset() keeps set_webhook()'s target (configuration); a test's target is cleared here too, so
    that another module on the same xdist worker never sends its events to a server that is gone.
    """
    stripe_emulator_server.reset()
    stripe_emulator_server.set_webhook(None, None)
    yield stripe_emulator_server
    stripe_emulator_server.set_webhook(None, None)
    stripe_emulator_server.reset()


@pytest.fixture(scope="session")
def secret_manager_server() -> Iterator[SecretManagerEmulator]:
    with SecretManagerEmulator() as emulator:
        yield emulator


@pytest.fixture
def sm(secret_manager_server: SecretManagerEmulator) -> Iterator[SecretManagerEmulator]:
    """The session's Secret Manager fake, empty and healthy for each test."""
    secret_manager_server.reset()
    yield secret_manager_server
    secret_manager_server.reset()


@pytest.fixture
def base_env(stripe_emulator: StripeEmulator) -> dict[str, str]:
    return {
        "FRONTEND_URL": FRONTEND,
        "STRIPE_SECRET_KEY": TEST_KEY,
        "STRIPE_API_BASE": stripe_emulator.url,
        "STRIPE_TIMEOUT_SECONDS": "2",
        "STRIPE_MAX_RETRIES": "1",
        # Every test client is 127.0.0.1: per-client limits are off except where a test sets them.
        "CREATE_LIMIT_PER_MINUTE": "0",
        "STATUS_LIMIT_PER_MINUTE": "0",
    }


@pytest.fixture(scope="session")
def function_app() -> Iterator[AsgiApp]:
    """One event loop, as in a gunicorn worker, serving each test's function app in turn."""
    app = AsgiApp()
    yield app
    app.close()


@pytest.fixture
def deliveries() -> Deliveries:
    """The deliver function the test's service fulfils with: it records each session id."""
    return Deliveries()


@pytest.fixture
def delivered(deliveries: Deliveries) -> list[str]:
    """The session ids the test's service delivered, in order."""
    return deliveries.calls


@pytest.fixture
def logs(capsys: pytest.CaptureFixture[str]) -> CapturedLogs:
    """What the app has logged to stdout during the test: logs(message) -> records."""
    return CapturedLogs(capsys)


@pytest.fixture
def configure(
    monkeypatch: pytest.MonkeyPatch,
    base_env: dict[str, str],
    function_app: AsgiApp,
    deliveries: Deliveries,
) -> Iterator[Callable[..., None]]:
    """Set the service's environment (base env plus overrides; None unsets), then serve a new
    CheckoutApi built from it, fulfilling with `deliveries`."""
    apis: list[CheckoutApi] = []

    def apply(**overrides: str | None) -> None:
        for name in SERVICE_VARS:
            monkeypatch.delenv(name, raising=False)
        for name, value in {**base_env, **overrides}.items():
            if value is not None:
                monkeypatch.setenv(name, value)
        if apis:
            apis[-1].close()  # its Stripe connection pool, on the app's loop
        apis.append(CheckoutApi(deliver=deliveries))
        function_app.serve(function_app_for(apis[-1]))

    apply()
    yield apply
    apis[-1].close()


@pytest.fixture
def client(function_app: AsgiApp, configure: Callable[..., None]) -> Client:
    """A test client for `checkout_api`, configured with the base env against the emulator."""
    return function_app.test_client()


@pytest.fixture
def webhook_client(client, configure):
    """The test client, with the webhook signing secret configured."""
    configure(STRIPE_WEBHOOK_SECRET=WHSEC)
    return client


@pytest.fixture
def live_server(tmp_path: Path, base_env: dict[str, str]):
    """Start functions-framework with base env plus overrides: live_server(**env) -> LiveServer."""
    servers: list[LiveServer] = []

    def start(**overrides: str | None) -> LiveServer:
        env = {k: v for k, v in {**base_env, **overrides}.items() if v is not None}
        server = LiveServer(env, tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium per test module; each test opens its own context (fresh state).

    Not per session: Playwright's sync API must not be live while other modules run asyncio.
    """
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium):
    """A fresh page in its own context; request it after `live_server`, so it closes first."""
    context = chromium.new_context(viewport={"width": 960, "height": 760})
    try:
        yield context.new_page()
    finally:
        context.close()
