"""The upload that .gcloudignore selects is self-contained: it installs and serves on its own.

gcloud uploads what is on disk minus what .gcloudignore (gitignore syntax) excludes; the Python
buildpack then installs requirements.txt and runs `functions-framework --target checkout_api`.
The slow test does the same, offline except for PyPI, against the Stripe emulator.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pathspec
import pytest

from devtools.stripe_emulator import StripeEmulator
from tests.support import FRONTEND, ROOT, TEST_KEY, free_port, stop_process


def ignore_spec(root: Path) -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines((root / ".gcloudignore").read_text().splitlines())


def is_uploaded(spec: pathspec.GitIgnoreSpec, path: str) -> bool:
    """Gitignore semantics: a path is left out if it, or any directory above it, is ignored."""
    parts = path.split("/")
    directories = ["/".join(parts[:i]) + "/" for i in range(1, len(parts))]
    return not any(spec.match_file(p) for p in [*directories, path])


def upload_set(root: Path) -> list[str]:
    """The files `gcloud run deploy --source root` uploads (gcloud reads the disk, not git)."""
    spec = ignore_spec(root)
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath).relative_to(root)
        # An ignored directory is never entered: nothing below it can be re-included.
        dirnames[:] = [d for d in dirnames if not spec.match_file(f"{(here / d).as_posix()}/")]
        files += [
            (here / f).as_posix() for f in filenames if not spec.match_file((here / f).as_posix())
        ]
    return sorted(files)


# --- what is uploaded ---


def test_upload_is_main_requirements_and_the_checkout_package_only() -> None:
    package = sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "checkout").rglob("*.py")
        if "__pycache__" not in p.parts
    )
    assert package, "checkout/ has no modules"
    uploaded = upload_set(ROOT)
    # Bytecode, where the deploy compiled it (cloudbuild.yaml): each file an uploaded module's.
    bytecode = [path for path in uploaded if path.endswith(".cpython-312.pyc")]
    for path in bytecode:
        module = path.replace("/__pycache__", "").removesuffix(".cpython-312.pyc") + ".py"
        assert module in package, path
    # The order change's JSON Schema travels with the package that publishes it.
    assert [p for p in uploaded if p not in bytecode] == sorted(
        ["main.py", "requirements.txt", "checkout/orders/order_change.schema.json", *package]
    )


@pytest.mark.parametrize(
    "path",
    [
        "tests/conftest.py",
        "devtools/stripe_emulator/api.py",
        "bench/run.py",
        ".venv/bin/python",
        "venv/lib/site.py",
        ".ci/run",
        ".git/config",
        ".github/workflows/ci.yml",
        "README.md",
        "docs/deploy.md",
        "cloudbuild.yaml",
        "requirements-dev.txt",
        "pyproject.toml",
        "Makefile",
        ".env",
        ".pytest_cache/README.md",
        "checkout/__pycache__/app.cpython-311.pyc",
        "checkout/__pycache__/app.cpython-313.pyc",
        "checkout/api/app.pyc",
        "__pycache__/main.cpython-312.pyc",
        "tests/__pycache__/conftest.cpython-312.pyc",
        "checkout/.env",
        "checkout/.app.py.swp",
    ],
)
def test_gcloudignore_leaves_out_everything_but_production_code(path: str) -> None:
    assert not is_uploaded(ignore_spec(ROOT), path)


@pytest.mark.parametrize(
    "path",
    [
        "main.py",
        "requirements.txt",
        "checkout/api/app.py",
        "checkout/new_module.py",
        # The bytecode the deploy compiles for the base image's Python (cloudbuild.yaml).
        "checkout/__pycache__/app.cpython-312.pyc",
        "checkout/orders/ledger/__pycache__/memory.cpython-312.pyc",
    ],
)
def test_gcloudignore_uploads_production_code(path: str) -> None:
    assert is_uploaded(ignore_spec(ROOT), path)


# --- the upload, installed and served as the buildpack would ---


def call(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"functions-framework exited:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/__ready", timeout=1)
        except urllib.error.HTTPError:
            return  # our JSON 404: serving
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"functions-framework did not start:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_uploaded_bundle_installs_alone_and_serves_checkout(
    tmp_path: Path, stripe_emulator: StripeEmulator
) -> None:
    bundle = tmp_path / "workspace"
    for path in upload_set(ROOT):
        (bundle / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, bundle / path)
    assert not any((bundle / d).exists() for d in ("tests", "devtools", "bench"))

    # Nothing from this checkout or its venv may leak in: no PYTHONPATH, no user site-packages.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    # A virtualenv holding nothing but what requirements.txt installs: not even pip, which runs
    # from this checkout's venv into it (`pip --python`). No bytecode compiled up front either:
    # the server compiles what it imports. Those two cost about 12 of this test's 15 s.
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env, timeout=60
    )
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--disable-pip-version-check",
            "--quiet",
            "--no-compile",
            "-r",
            "requirements.txt",
        ],
        cwd=bundle,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env.update(
        # What Cloud Run and cloudbuild.yaml set, with the emulator in place of Stripe. Not
        # K_SERVICE: on Cloud Run STRIPE_API_BASE must be https, and the emulator is plain http.
        K_REVISION="checkout-api-00001-abc",
        K_CONFIGURATION="checkout-api",
        PORT=str(port),
        FRONTEND_URL=FRONTEND,
        STRIPE_SECRET_KEY=TEST_KEY,
        STRIPE_API_BASE=stripe_emulator.url,
    )
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                str(venv / "bin" / "functions-framework"),
                "--target",
                "checkout_api",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=bundle,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_serving(url, server, log)

            status, created = call(f"{url}/api/checkout/embedded-session", {"imageId": "img_b1"})
            assert status == 200, created
            assert set(created) == {"client_secret", "session_id"}
            session_id = created["session_id"]
            assert session_id.startswith("cs_test_")
            assert created["client_secret"].startswith(f"{session_id}_secret_")

            status_url = f"{url}/api/checkout/session-status?session_id={session_id}"
            assert call(status_url) == (
                200,
                {
                    "status": "open",
                    "payment_status": "unpaid",
                    "outcome": "open",
                    "amount_refunded": 0,
                    "metadata": {"imageId": "img_b1"},
                },
            )
            stripe_emulator.complete_session(session_id)
            assert call(status_url) == (
                200,
                {
                    "status": "complete",
                    "payment_status": "paid",
                    "outcome": "paid",
                    "amount_refunded": 0,
                    "metadata": {"imageId": "img_b1"},
                },
            )
            assert stripe_emulator.calls()["sessions_created"] == 1
        finally:
            stop_process(server)
