"""The real Google Cloud CLI as an offline oracle: record the `gcloud` calls a script makes, then
run each through the real `gcloud` on an empty config, where a valid command stops at the missing
account and a bad one at the parser.

Recording first lets a script go on past its first call (the real CLI would exit 1 there, and a
`set -e` script would stop), and lets the slow CLI (about a second a call) run the calls in
parallel. `gcloud config ...` calls run at once instead, because later calls depend on them. A
call that reads one value (`--format=value(...)`) answers `recorded-value`, so that a variable
set from it is not empty in the commands that use it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

GCLOUD = shutil.which("gcloud")
NO_ACCOUNT = "You do not currently have an active account selected"

# Quiet and local: no prompts, no update check, no usage report.
QUIET = {
    "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
    "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
}

RECORDER = """#!{python}
import json, os, shutil, subprocess, sys
log = os.environ["GCLOUD_RECORD_DIR"]
n = len([name for name in os.listdir(log) if name.endswith(".json")])
settings = {{k: v for k, v in os.environ.items() if k.startswith("CLOUDSDK_")}}
settings.pop("CLOUDSDK_CONFIG")
call = {{"argv": sys.argv[1:], "cwd": os.getcwd(), "settings": settings}}
config = os.environ["CLOUDSDK_CONFIG"]
if sys.argv[1:2] == ["config"]:
    done = subprocess.run(
        [{gcloud!r}, *sys.argv[1:]], env={{**os.environ, "PATH": os.environ["GCLOUD_REAL_PATH"]}},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )
    call.update(config=config, returncode=done.returncode, output=done.stdout + done.stderr)
    sys.stderr.write(done.stderr)
else:
    call["config"] = os.path.join(log, f"{{n}}.config")
    shutil.copytree(config, call["config"])
    if any(arg.startswith("--format=value(") for arg in sys.argv[1:]):
        print("recorded-value")  # a value read into a variable, so the next command has one
with open(os.path.join(log, f"{{n}}.json"), "w") as out:
    json.dump(call, out)
sys.exit(call.get("returncode", 0))
"""


def require_gcloud() -> str:
    """The real gcloud: locally a skip with the reason when it is missing, in CI a failure."""
    if GCLOUD:
        return GCLOUD
    if os.environ.get("CI"):
        pytest.fail("CI must check the docs and cloudbuild.yaml with the real gcloud: not on PATH")
    pytest.skip("gcloud (Google Cloud CLI) is not installed (CI runs this test)")


def require_tools(*names: str) -> None:
    missing = [name for name in names if not shutil.which(name)]
    if not missing:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test: {', '.join(missing)} not on PATH")
    pytest.skip(f"{', '.join(missing)} not installed (CI runs this test)")


@dataclass
class Call:
    argv: list[str]
    cwd: str
    config: str
    settings: dict[str, str] = field(default_factory=dict)  # CLOUDSDK_* the caller had set
    returncode: int | None = None
    output: str = ""

    @property
    def command(self) -> str:
        return "gcloud " + " ".join(self.argv)

    def problem(self) -> str | None:
        """None when gcloud accepted the command: stopped at the account, or succeeded offline."""
        if NO_ACCOUNT in self.output:
            return None
        if self.returncode == 0 and "ERROR:" not in self.output:
            return None
        tail = "\n".join(self.output.strip().splitlines()[:8])
        return f"{self.command}\n  exit {self.returncode}:\n{tail}"


class Recorder:
    """A `gcloud` on PATH that records each call; `env()` is the environment to run a script in."""

    def __init__(self, tmp: Path, gcloud: str) -> None:
        self.bin = tmp / "bin"
        self.log = tmp / "calls"
        self.config = tmp / "config"
        for folder in (self.bin, self.log, self.config):
            folder.mkdir(parents=True)
        shim = self.bin / "gcloud"
        shim.write_text(RECORDER.format(python=sys.executable, gcloud=gcloud))
        shim.chmod(0o755)

    def env(self, path: str | None = None) -> dict[str, str]:
        """The shim first on PATH, then `path`; without `path` no other tool can run."""
        real_path = os.environ["PATH"]
        return {
            **clean_environ(),
            "PATH": f"{self.bin}{os.pathsep}{path}" if path else str(self.bin),
            "GCLOUD_REAL_PATH": real_path,
            "GCLOUD_RECORD_DIR": str(self.log),
            "CLOUDSDK_CONFIG": str(self.config),
        }

    def calls(self) -> list[Call]:
        files = sorted(self.log.glob("*.json"), key=lambda p: int(p.stem))
        return [Call(**json.loads(p.read_text())) for p in files]


def clean_environ() -> dict[str, str]:
    """This process's environment without anything that could select an account or a project."""
    return {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CLOUDSDK_", "GOOGLE_", "GCE_", "CLOUD_SDK"))
        },
        **QUIET,
    }


def run_for_real(calls: list[Call], gcloud: str) -> list[Call]:
    """Run each recorded call that has not run yet through the real gcloud, in parallel."""

    def run(call: Call) -> None:
        if call.returncode is not None:
            return
        done = subprocess.run(
            [gcloud, *call.argv],
            cwd=call.cwd,
            env={**clean_environ(), **call.settings, "CLOUDSDK_CONFIG": call.config},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        call.returncode, call.output = done.returncode, done.stdout + done.stderr

    with ThreadPoolExecutor(max_workers=(os.cpu_count() or 1) + 1) as pool:
        list(pool.map(run, calls))
    return calls
