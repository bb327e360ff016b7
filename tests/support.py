"""What the tests share: test keys, paths, the live server, log capture, one `assert_error`.

Fixtures that use these live in conftest.py; test modules import from here, never from one
another or from conftest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import functions_framework.aio
import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

import main  # noqa: F401  # wraps functions-framework's app builder: JSON 404/405
from checkout.api.app import CheckoutApi
from checkout.config import ENVIRONMENT_VARIABLES
from checkout.orders.catalogue import Catalogue
from checkout.orders.model import Change
from checkout.orders.session import SessionStatus
from devtools.loopback import Running, free_port, wait_for_answer
from devtools.stripe_emulator.webhooks import snapshot_event

if TYPE_CHECKING:
    from tests.firestore_emulator import Firestore

__all__ = ["free_port"]  # re-exported for the tests


ROOT = Path(__file__).resolve().parent.parent

TEST_KEY = "sk_test_51TestOnlyKeyForTheEmulator0123456789abcdef"

FRONTEND = "http://localhost:5173"


# Variables the service reads; each test starts from none of them set, then the base env.
SERVICE_VARS = ENVIRONMENT_VARIABLES


CREATE = "/api/checkout/embedded-session"
STATUS = "/api/checkout/session-status"
WEBHOOK = "/api/checkout/webhook"
JSON = "application/json"


# --- Requests and answers ----------------------------------------------------------------------


def create(client, body=None, **kwargs):
    if body is None:
        return client.post(CREATE, **kwargs)
    return client.post(CREATE, data=json.dumps(body), content_type="application/json", **kwargs)


@dataclass
class Answer:
    """A raw answer, with the test client's accessors too (status_code, get_json, get_data)."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def status_code(self) -> int:
        return self.status

    def get_json(self) -> Any:
        return json.loads(self.body)

    def get_data(self, as_text: bool = False) -> bytes | str:
        return self.body.decode("utf-8", "replace") if as_text else self.body


def send(
    server: LiveServer,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    chunked: bool = False,
) -> Answer:
    """One request written as raw bytes (no client-side checks), on a fresh connection."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    elif body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return Answer(response.status, response.headers, response.read())


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The contract's error shape, with the hygiene headers every answer carries, and no key.

    `response` is a test client's answer or a raw one (`send`): each has status_code,
    headers, get_json() and get_data().
    """
    text = response.get_data(as_text=True)
    assert response.status_code == status, text[:300]
    assert response.headers["Content-Type"] == JSON
    body: dict[str, Any] = response.get_json()
    assert set(body) == {"error", "code", "request_id"}
    assert body["code"] == code
    assert body["request_id"] == response.headers["X-Request-Id"]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert TEST_KEY not in text
    return body


# --- Stripe's events --------------------------------------------------------------------------


WHSEC = "whsec_TestOnlySigning01"
# Every Stripe event type the service handles (the contract's list; register-webhook enables them).
HANDLED = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    "charge.refunded",
    "refund.created",
    "refund.updated",
    "refund.failed",
    "charge.refund.updated",
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
)


OTHER_WHSEC = "whsec_SomeoneElses0123"


def sign(payload: bytes, secret: str = WHSEC, timestamp: int | None = None) -> str:
    """Stripe's `Stripe-Signature`, computed here rather than trusted to any library."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def event_for(session: dict[str, Any], kind: str, event_id: str | None = None) -> bytes:
    """A snapshot event as Stripe sends it, around the session the emulator holds."""
    return snapshot_event(session, kind, event_id)


def post_event(client, payload: bytes, signature: str | None = "sign", **headers: str):
    if signature == "sign":
        signature = sign(payload)
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return client.post(
        WEBHOOK, data=payload, headers=headers, content_type="application/json; charset=utf-8"
    )


def status_of(client, session_id: str) -> dict[str, Any]:
    response = client.get(STATUS, query_string={"session_id": session_id})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def http_json(
    method: str, url: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def completed_session(client, stripe_emulator, payment_status: str = "paid") -> dict[str, Any]:
    session_id = create(client, {"imageId": "img_42"}).get_json()["session_id"]
    return stripe_emulator.complete_session(session_id, payment_status)


def in_crowd(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in threads released together; return each result (or exception)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except BaseException as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


# --- Logs -------------------------------------------------------------------------------------


def log_records(text: str, message: str | None = None) -> list[dict[str, Any]]:
    """The JSON log lines in `text` (with the given message, if one is given)."""
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [r for r in records if message is None or r.get("message") == message]


def wait_for_records(
    server: LiveServer, message: str, count: int = 1, seconds: float = 20.0
) -> list[dict[str, Any]]:
    """The server's log records with `message`, once there are `count` of them.

    For what a server does after its answer (the in-process delivery): a generous bound, on a
    noisy machine, not a timing assertion. A record past `count` is still returned, so a test
    that wants exactly `count` sees any extra one that is already there.
    """
    deadline = time.monotonic() + seconds
    while True:
        records = log_records(server.logs(), message)
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


class CapturedLogs:
    """Everything the app has logged to stdout during the test, as parsed records."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self.text = ""

    def __call__(self, message: str | None = None) -> list[dict[str, Any]]:
        self.text += self._capsys.readouterr().out
        return log_records(self.text, message)


# --- Fulfilment ------------------------------------------------------------------------------


class Deliveries:
    """A deliver function for tests: records each change it is given, then runs `then` (if set).

    Passed to CheckoutApi or FulfilApi as `deliver`. A plain function, so it runs in a worker
    thread as any blocking deliver_order would; `then` may raise, or block.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []  # each change's session id, in order
        self.changes: list[Change] = []
        self.then: Callable[[Change], None] | None = None

    def __call__(self, change: Change) -> None:
        self.calls.append(change.session_id)
        self.changes.append(change)
        if self.then is not None:
            self.then(change)

    @property
    def types(self) -> list[str]:
        """Each change's type (order.paid, order.payment_failed, ...), in order."""
        return [change.type for change in self.changes]


def function_app_for(api: CheckoutApi) -> Starlette:
    """The ASGI app functions-framework builds for main.py's `checkout_api`, serving `api`.

    Through checkout/framework.py's wrapping of functions-framework's app (`main` installs it), so
    its own 404/405 answers come from `api` as JSON, as in production.
    """

    @functions_framework.aio.http
    async def checkout_api(request: Request) -> Response:
        return await api.handle(request)

    app: Starlette = functions_framework.aio._create_asgi_app_with_function(
        checkout_api, "http", False
    )
    return app


# What the tests' deployment sells (the base env's defaults: DEPLOYMENT_ID `local`, 200 usd).
SELLS = Catalogue(deployment_id="local", amount=200, currency="usd", price_id=None)


def a_session(
    state: str = "complete", paid: str = "paid", session_id: str = "cs_test_a"
) -> SessionStatus:
    """A session of ours that sold what SELLS sells."""
    return SessionStatus(
        session_id=session_id,
        status=state,
        payment_status=paid,
        metadata={"imageId": "img_1"},
        amount_total=200,
        currency="usd",
        livemode=False,
        marker="local",
    )


# --- Processes and servers --------------------------------------------------------------------


def stop_process(process: subprocess.Popen[Any], seconds: float = 10.0) -> tuple[Any, Any]:
    """Stop a process a test started, however the test ends; what is left of its piped output.

    SIGTERM, up to `seconds` for it to exit and close its pipes (generous: a hang, not a time),
    then SIGKILL. A process that leads its own group (start_new_session=True) is signalled with
    the whole group, and what is left of the group once it has gone is killed: the children it
    started go with it.
    """
    group = process.returncode is None and _leads_its_group(process)
    if process.poll() is None:
        _send(process, signal.SIGTERM, group)
    try:
        output = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        _send(process, signal.SIGKILL, group)
        output = process.communicate(timeout=seconds)
    if group:
        _send(process, signal.SIGKILL, group)
    return output


def _leads_its_group(process: subprocess.Popen[Any]) -> bool:
    try:
        return os.getpgid(process.pid) == process.pid
    except ProcessLookupError:
        return False


def _send(process: subprocess.Popen[Any], sig: signal.Signals, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(process.pid, sig)
        elif process.poll() is None:
            process.send_signal(sig)


class LiveServer(Running):
    """functions-framework (gunicorn, one uvicorn worker) in a subprocess; stdout and stderr
    captured to two files.

    Stopped by `stop()`, or on leaving a `with` block; one that does not start stops itself.
    """

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        source: Path = ROOT / "main.py",
        target: str = "checkout_api",
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
                target,
                *(["--signature-type", "cloudevent"] if target == "fulfil_order" else []),
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
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, seconds: float = 20.0) -> None:
        # Any HTTP answer (our JSON 404) means it is serving.
        why = wait_for_answer(f"{self.url}/__ready", self.process, seconds)
        if why:
            raise RuntimeError(f"server {why}: {(self.logs() + self.stderr())[-2000:]}")

    def logs(self) -> str:
        """Everything the server wrote to stdout: the JSON log lines."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()
        self._stderr.close()


def ledger_collection(name: str, deployment_id: str = "local") -> str:
    """The path of a deployment's ledger collection (checkout/orders/ledger's `scoped_path`)."""
    return f"checkout_deployments/{deployment_id}/{name}"


def read_document(firestore: Firestore, collection: str, doc_id: str) -> dict | None:
    from google.cloud import firestore as gcf

    async def read() -> dict | None:
        client = gcf.AsyncClient(project=firestore.project)
        snapshot = await client.collection(collection).document(doc_id).get()
        return snapshot.to_dict() if snapshot.exists else None

    return asyncio.run(read())


def document_ids(firestore: Firestore, collection: str) -> list[str]:
    """The ids of every document in a collection of this test's project."""
    from google.cloud import firestore as gcf

    async def ids() -> list[str]:
        client = gcf.AsyncClient(project=firestore.project)
        return [ref.id async for ref in client.collection(collection).list_documents()]

    return asyncio.run(ids())


def refund(stripe_emulator, payment_intent: str, amount: int | None = None) -> dict[str, Any]:
    """Refund `payment_intent` on the Stripe emulator: all of it, or `amount`."""
    form = {"payment_intent": payment_intent, **({"amount": str(amount)} if amount else {})}
    return _stripe_post(stripe_emulator, "/v1/refunds", form)


def create_session(emulator, **params: str) -> dict:
    form = {
        "ui_mode": "embedded_page",
        "mode": "payment",
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "200",
        "line_items[0][price_data][product_data][name]": "Feelings board",
        "line_items[0][quantity]": "1",
        "return_url": "http://shop.test/done?session_id={CHECKOUT_SESSION_ID}",
        "redirect_on_completion": "if_required",
        **params,
    }
    return _stripe_post(emulator, "/v1/checkout/sessions", form)


def _stripe_post(emulator, path: str, form: dict[str, str]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    response = requests.post(f"{emulator.url}{path}", data=form, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


# --- Real browsers: Debian's chromium, driven by Playwright (never a browser download) ---


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
    # Looked up now, not at import: a test of the Cloud Build step's selection has no chromium on
    # its PATH (tests/cloudbuild_step.py), and must not find it by the path found at import.
    if not Path(CHROMIUM).exists() or shutil.which(Path(CHROMIUM).name) is None:
        missing = f"Debian's chromium is not installed ({CHROMIUM}): apt-get install chromium"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed: pip install -r requirements-dev.txt"
    require(missing, "the real-browser tests")


def service_account_file(directory: Path, project: str) -> Path:
    """A service-account key file naming `project`, as Application Default Credentials read it.

    Its key is real (freshly made) and its token endpoint is a closed loopback port, so
    `google.auth.default()` reads the project from it without any network.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    path = directory / "service-account.json"
    account = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "test",
        "private_key": pem,
        "client_email": f"runtime@{project}.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token",
    }
    path.write_text(json.dumps(account))
    return path


# --- Small HTTP peers for the Stripe transport's tests ------------------------------------------


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nRequest-Id: req_1\r\n"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and body (Content-Length framed), or b"" if the client left."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + (await reader.readexactly(length) if length else b"")


def answer(body: bytes, *extra: bytes) -> bytes:
    return OK + b"".join(extra) + b"Content-Length: %d\r\n\r\n" % len(body) + body
