"""Operator commands beside `make run`: doctor's --help, its local checks, reconcile's warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from checkout.config import ENVIRONMENT_VARIABLES
from devtools.stripe_emulator import StripeEmulator
from tests.local_run import running_make_run
from tests.support import ROOT, SERVICE_VARS, LiveServer

LOCAL_SECRET = "whsec_localEmulatorOnly"


def command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**full, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_doctor_help_lists_every_check_and_the_settings_it_reads() -> None:
    result = command("-m", "checkout", "doctor", "--help", env={})
    assert result.returncode == 0
    source = (ROOT / "checkout" / "ops" / "doctor.py").read_text()
    checks = set(re.findall(r'Check\(\s*"([a-z ]+)"', source))
    assert len(checks) >= 10
    missing = [name for name in checks if name not in result.stdout]
    assert not missing, missing
    settings = set(re.findall(r"\b[A-Z][A-Z0-9_]{4,}\b", result.stdout.split("settings read")[1]))
    assert settings <= set(ENVIRONMENT_VARIABLES)
    for name in ("STRIPE_SECRET_KEY", "STRIPE_SECRET_NAME", "ORDER_LEDGER", "ORDER_EVENTS_TOPIC"):
        assert name in settings


@pytest.mark.slow
def test_doctor_beside_a_local_server_checks_the_emulator_setup_not_a_dashboard_endpoint(
    live_server: Callable[..., LiveServer], stripe_emulator: StripeEmulator
) -> None:
    server = live_server(STRIPE_WEBHOOK_SECRET=LOCAL_SECRET)
    port = str(urlsplit(stripe_emulator.url).port)
    env = {"PORT": str(server.port), "STRIPE_EMULATOR_PORT": port}
    result = command("-m", "devtools.local_doctor", env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "register-webhook" not in output
    assert "ok   local webhook" in output
    assert "FAIL" not in output


def test_doctor_beside_a_stopped_server_says_to_start_it(
    stripe_emulator: StripeEmulator,
) -> None:
    port = str(urlsplit(stripe_emulator.url).port)
    env = {"PORT": "9", "STRIPE_EMULATOR_PORT": port}
    result = command("-m", "devtools.local_doctor", env=env)
    assert result.returncode == 1
    assert "FAIL local webhook" in result.stdout and "make run" in result.stdout
    assert "register-webhook" not in result.stdout


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    yield from running_make_run(tmp_path)


@pytest.mark.curl
def test_make_doctor_beside_make_run_passes(make_run: tuple[str, str, Path]) -> None:
    api, emulator, _ = make_run
    env = {
        "PORT": str(urlsplit(api).port),
        "STRIPE_EMULATOR_PORT": str(urlsplit(emulator).port),
    }
    full = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-o",
            ".venv/.installed",
            "doctor",
            f"PY={sys.executable}",
        ],
        cwd=ROOT,
        env={**full, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "register-webhook" not in result.stdout


def test_reconcile_with_a_memory_ledger_warns_it_is_not_the_servers(
    stripe_emulator: StripeEmulator,
) -> None:
    env = {
        "STRIPE_API_BASE": stripe_emulator.url,
        "STRIPE_SECRET_KEY": "sk_test_emulatorLocalOnlyNotARealKey",
        "DEPLOYMENT_ID": "local",
    }
    result = command("-m", "checkout", "reconcile", env=env)
    assert result.returncode == 0, result.stderr
    assert "not the one of a running server" in result.stderr
