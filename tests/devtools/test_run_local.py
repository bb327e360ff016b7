"""`make run`'s launcher: offline with the emulator when no key is set, never on Cloud Run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import ROOT, SERVICE_VARS, TEST_KEY, WHSEC, free_port, stop_process


def request(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def start_launcher(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, str, int, Path]:
    port, emulator_port = free_port(), free_port()
    full_env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    full_env.update(PORT=str(port), STRIPE_EMULATOR_PORT=str(emulator_port), **env)
    log_path = tmp_path / "run.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.run_local"],
        cwd=ROOT,
        env=full_env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, base, log_path)
    except BaseException:
        stop(process)
        raise
    return process, base, emulator_port, log_path


def wait_until_serving(process: subprocess.Popen, base: str, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        try:
            urllib.request.urlopen(f"{base}/ready", timeout=1)
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"make run did not start: {log_path.read_text()}")


def stop(process: subprocess.Popen) -> None:
    """The launcher and its group: the function and the emulator it started."""
    stop_process(process, 15)


@pytest.mark.slow
def test_without_a_key_it_runs_offline_against_the_emulator(tmp_path):
    process, base, emulator_port, log_path = start_launcher(tmp_path)
    try:
        status, created = request(f"{base}/api/checkout/embedded-session", "POST", b"{}")
        assert status == 200, created
        session_id = created["session_id"]
        emulator = f"http://127.0.0.1:{emulator_port}"
        request(f"{emulator}/_emulator/sessions/{session_id}/complete", "POST", b"{}")
        status, body = request(f"{base}/api/checkout/session-status?session_id={session_id}")
        assert (status, body["status"], body["payment_status"]) == (200, "complete", "paid")
        assert "OFFLINE MODE" in log_path.read_text()
    finally:
        stop(process)
    assert process.returncode is not None


def test_on_cloud_run_it_never_falls_back_to_the_emulator(tmp_path):
    # Everything Cloud Run needs (tests/test_startup.py) except a Stripe key.
    process, base, emulator_port, log_path = start_launcher(
        tmp_path,
        K_SERVICE="checkout",
        FRONTEND_URL="https://shop.example.com",
        STRIPE_WEBHOOK_SECRET=WHSEC,
        ORDER_EVENTS_TOPIC="projects/demo-checkout/topics/order-events",
    )
    try:
        status, body = request(f"{base}/api/checkout/embedded-session", "POST", b"{}")
        assert (status, body["code"]) == (500, "payment_configuration_error")
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{emulator_port}/_emulator/calls", timeout=1)
        output = log_path.read_text()
        assert "OFFLINE MODE" not in output
        assert "no Stripe key configured on Cloud Run" in output
    finally:
        stop(process)


def preflight(base: str, origin: str) -> int:
    req = urllib.request.Request(
        f"{base}/api/checkout/embedded-session",
        method="OPTIONS",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.slow
def test_offline_it_prints_the_demo_and_lets_the_demo_call_the_function(tmp_path):
    process, base, emulator_port, log_path = start_launcher(tmp_path)
    emulator = f"http://127.0.0.1:{emulator_port}"
    try:
        assert f"open {emulator}/demo" in log_path.read_text()
        with urllib.request.urlopen(f"{emulator}/demo", timeout=10) as response:
            assert f'const CONFIG = {{"api": "{base}"}};' in response.read().decode()
        assert preflight(base, emulator) == 204  # the demo page's origin
        assert preflight(base, "http://localhost:5173") == 204  # FRONTEND_URL's default, still
        assert preflight(base, "http://127.0.0.1:1") == 403
    finally:
        stop(process)


def test_with_a_key_the_emulator_origin_is_not_allowed(tmp_path):
    process, base, emulator_port, log_path = start_launcher(
        tmp_path, STRIPE_SECRET_KEY=TEST_KEY, STRIPE_API_BASE="http://127.0.0.1:9"
    )
    try:
        assert preflight(base, f"http://127.0.0.1:{emulator_port}") == 403
        assert "/demo" not in log_path.read_text()
    finally:
        stop(process)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PRICE_CURRENCY": "us-dollars"}, "PRICE_CURRENCY"),
        ({"PRICE_AMOUNT": "49"}, "minimum charge"),
        ({"STRIPE_TIMEOUT_SECONDS": "30", "REQUEST_TIMEOUT_SECONDS": "60"}, "REQUEST_TIMEOUT"),
        ({"STRIPE_SECRET_KEY": "pk_test_" + "a1" * 12}, "STRIPE_SECRET_KEY is not usable"),
        ({"STRIPE_WEBHOOK_SECRET": TEST_KEY}, "STRIPE_WEBHOOK_SECRET is not usable"),
    ],
)
def test_a_bad_configuration_is_refused_before_anything_starts(tmp_path, env, message):
    port, emulator_port = free_port(), free_port()
    full_env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    full_env.update(PORT=str(port), STRIPE_EMULATOR_PORT=str(emulator_port), **env)
    done = subprocess.run(
        [sys.executable, "-m", "devtools.run_local"],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "configuration error, not starting: " in done.stderr
    assert message in done.stderr
    assert "OFFLINE MODE" not in done.stdout  # not even the emulator started


def test_when_the_emulator_port_is_taken_it_fails_clearly(tmp_path):
    # Another process answering on the port, as another emulator would: using it would send this
    # run's payments to someone else's emulator, with someone else's webhook secret and state.
    import http.server
    import threading

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    taken = other.server_address[1]
    full_env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    full_env.update(PORT=str(free_port()), STRIPE_EMULATOR_PORT=str(taken))
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.run_local"],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=30)  # generous: it should refuse at once
    except subprocess.TimeoutExpired:
        out = stop_process(process, 15)[0]
        pytest.fail(f"make run used the process on port {taken} instead of failing: {out}")
    finally:
        other.shutdown()
        other.server_close()
    assert process.returncode not in (0, None)
    assert f"port {taken} is in use" in out
    assert "STRIPE_EMULATOR_PORT" in out  # the way out
    assert "OFFLINE MODE" not in out
