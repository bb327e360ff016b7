"""Shared fixtures: the Stripe emulator on loopback, the function under test, a live server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import functions_framework
import pytest

from checkout.app import reset_service
from checkout.config import ENVIRONMENT_VARIABLES
from devtools.loopback import free_port  # re-exported for the tests
from devtools.secret_manager_emulator import SecretManagerEmulator
from devtools.stripe_emulator import StripeEmulator
from tests.asgi_client import AsgiApp

# The Firestore emulator's fixtures: `firestore` (a running emulator and a fresh project id).
pytest_plugins = ["tests.firestore_emulator"]

ROOT = Path(__file__).resolve().parent.parent
TEST_KEY = "sk_test_51TestOnlyKeyForTheEmulator0123456789abcdef"
FRONTEND = "http://localhost:5173"

# Variables the service reads; each test starts from none of them set, then the base env.
SERVICE_VARS = ENVIRONMENT_VARIABLES


@pytest.fixture(scope="session")
def stripe_emulator_server() -> Iterator[StripeEmulator]:
    with StripeEmulator() as emulator:
        yield emulator


@pytest.fixture
def stripe_emulator(stripe_emulator_server: StripeEmulator) -> Iterator[StripeEmulator]:
    """The session's emulator, reset before and after each test."""
    stripe_emulator_server.reset()
    yield stripe_emulator_server
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
    """The app functions-framework builds for `checkout_api` (Starlette), on one event loop."""
    app = AsgiApp(
        functions_framework.create_app(target="checkout_api", source=str(ROOT / "main.py"))
    )
    yield app
    reset_service()  # closes the Stripe connection pool on the app's loop before it stops
    app.close()


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str]):
    """Set the service's environment (base env plus overrides; None unsets) and rebuild it."""

    def apply(**overrides: str | None) -> None:
        for name in SERVICE_VARS:
            monkeypatch.delenv(name, raising=False)
        for name, value in {**base_env, **overrides}.items():
            if value is not None:
                monkeypatch.setenv(name, value)
        reset_service()

    apply()
    yield apply
    reset_service()


@pytest.fixture
def client(function_app, configure):
    """A test client for `checkout_api`, configured with the base env against the emulator."""
    return function_app.test_client()


class LiveServer:
    """functions-framework (gunicorn, one uvicorn worker) in a subprocess; stdout and stderr
    captured to two files."""

    def __init__(
        self, env: dict[str, str], log_path: Path, source: Path = ROOT / "main.py"
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
        full_env.update(env)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env["PYTHONPATH"] = str(ROOT)  # a source outside the root still imports main.py
        self._log = log_path.open("wb")
        self.stderr_path = log_path.with_suffix(".stderr")
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "functions-framework"),
                "--target",
                "checkout_api",
                "--source",
                str(source),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            # Apart: Cloud Logging reads stdout as JSON lines; gunicorn writes its own to stderr.
            stderr=self._stderr,
        )
        self._wait_ready()

    def _wait_ready(self, seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {(self.logs() + self.stderr())[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/__ready", timeout=1)
            except urllib.error.HTTPError:
                return  # any HTTP answer (our JSON 404) means it is serving
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start in time")

    def logs(self) -> str:
        """Everything the server wrote to stdout: the JSON log lines."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()
        self._stderr.close()


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


# --- Real browsers: Debian's chromium, driven by Playwright (never a browser download) ----------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-proxy-server",  # loopback only, whatever proxy the environment names
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require(missing: str | None, what: str) -> None:
    """Skip locally when something a browser test needs is missing; in CI (CI set) fail instead."""
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run {what}: {missing}")
    pytest.skip(f"{missing} (CI runs {what})")


def require_browser() -> None:
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"Debian's chromium is not installed ({CHROMIUM}): apt-get install chromium"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed: pip install -r requirements-dev.txt"
    require(missing, "the real-browser tests")


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
