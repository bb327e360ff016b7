"""On Cloud Run a bad configuration stops the process before it listens, so the revision never
becomes ready and traffic stays on the previous one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import ROOT, SERVICE_VARS, TEST_KEY, free_port

CLOUD_RUN = {
    "K_SERVICE": "checkout-api",
    "K_REVISION": "checkout-api-00002-xyz",
    "FRONTEND_URL": "https://shop.example.com",
    "STRIPE_SECRET_KEY": TEST_KEY,
}


def serve(env: dict[str, str], seconds: float = 20) -> tuple[int | None, str, str]:
    """Start functions-framework as Cloud Run does; (exit code or None if serving, out, err)."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    full_env.update(env, PORT=str(port), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "functions-framework"),
            "--target",
            "checkout_api",
            "--source",
            str(ROOT / "main.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + seconds
    code = None
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            break
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1)
        except urllib.error.HTTPError:
            break  # serving: any HTTP answer will do
        except OSError:
            time.sleep(0.1)
    if code is None:
        process.terminate()
    out, err = process.communicate(timeout=15)
    return code, out, err


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PRICE_CURRENCY": "us-dollars"}, "PRICE_CURRENCY"),
        ({"PRICE_AMOUNT": "49"}, "PRICE_AMOUNT"),
        ({"STRIPE_API_BASE": "http://stripe.example.com"}, "STRIPE_API_BASE"),
        ({"STRIPE_TIMEOUT_SECONDS": "30", "REQUEST_TIMEOUT_SECONDS": "60s"}, "REQUEST_TIMEOUT"),
    ],
)
def test_a_misconfigured_revision_exits_before_listening_with_one_clear_line(env, variable):
    code, out, err = serve({**CLOUD_RUN, **env})
    assert code not in (None, 0), "the process started serving"
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    errors = [line for line in lines if line["severity"] in ("ERROR", "CRITICAL")]
    assert len(errors) == 1, lines
    assert errors[0]["message"].startswith("configuration error, not starting: ")
    assert variable in errors[0]["message"]
    assert TEST_KEY not in out + err


def test_a_good_configuration_starts_and_serves():
    code, out, _ = serve(CLOUD_RUN)
    assert code is None, out
