"""The real Google Cloud CLI as an offline oracle: record the `gcloud` calls a script makes, then
run each through the real `gcloud` on an empty config, where a valid command stops at the missing
account and a bad one at the parser.

Recording first lets a script go on past its first call (the real CLI would exit 1 there, and a
`set -e` script would stop), and lets the recorded calls run as one batch: each in a process of
its own, forked from one that has loaded gcloud's Python once, as gcloud's own launcher would run
it (about a third of the CPU of a fresh `gcloud` a call), several at a time. `gcloud config ...`
calls run at once instead, because later calls depend on them. A call that reads one value
(`--format=value(...)`) answers `recorded-value`, so that a variable set from it is not empty.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

GCLOUD = shutil.which("gcloud")
NO_ACCOUNT = "You do not currently have an active account selected"

# Quiet and local: no prompts, no update check, no usage report.
QUIET = {
    "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
    "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
}

# -S: the recorder, started for every recorded call, needs only the standard library.
RECORDER = """#!{python} -S
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
    """The real gcloud: locally a skip with the reason when it is missing, in CI a failure.

    Looked up at each call, not at import: a test of the Cloud Build step's selection has no
    gcloud on its PATH (tests/cloudbuild_step.py), and must not find it by GCLOUD.
    """
    gcloud = shutil.which("gcloud")
    if gcloud:
        return gcloud
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
    """Run each recorded call that has not run yet through the real gcloud, as one batch."""
    waiting = [call for call in calls if call.returncode is None]
    launch = _launcher(gcloud)
    if launch is None:  # not the Google Cloud CLI's usual layout: one `gcloud` process a call
        _run_each(waiting, gcloud)
        return calls
    python, flags, lib, exported = launch
    with tempfile.TemporaryDirectory(prefix="gcloud-batch-") as folder:
        outputs = [Path(folder) / f"{n}.out" for n in range(len(waiting))]
        jobs: list[dict[str, Any]] = [
            {
                "argv": call.argv,
                "cwd": call.cwd,
                "env": {
                    **clean_environ(),
                    **call.settings,
                    "CLOUDSDK_CONFIG": call.config,
                    **exported,
                },
                "output": str(outputs[n]),
            }
            for n, call in enumerate(waiting)
        ]
        done = subprocess.run(
            [python, *flags, "-c", BATCH, lib, str((os.cpu_count() or 1) + 1)],
            input=json.dumps(jobs),
            env={**clean_environ(), **exported, "CLOUDSDK_CONFIG": folder},
            capture_output=True,
            text=True,
            timeout=120 + 10 * len(jobs),
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        codes = json.loads(done.stdout)
        for n, call in enumerate(waiting):
            call.returncode = codes[n]
            call.output = outputs[n].read_text(errors="replace")
    return calls


def _launcher(gcloud: str) -> tuple[str, list[str], str, dict[str, str]] | None:
    """The interpreter, its flags, gcloud's lib folder and the variables gcloud's launcher
    (bin/gcloud) would use: its bundled Python when it has one, else python3 without site."""
    root = Path(os.path.realpath(gcloud)).parent.parent
    lib = root / "lib"
    if not (lib / "gcloud.py").is_file() or not (lib / "googlecloudsdk").is_dir():
        return None
    exported = {"CLOUDSDK_ROOT_DIR": str(root), "PYTHONIOENCODING": "UTF-8"}
    bundled = root / "platform" / "bundledpythonunix" / "bin" / "python3"
    python = os.environ.get("CLOUDSDK_PYTHON")
    if python is None and os.access(bundled, os.X_OK):
        return str(bundled), [], str(lib), {**exported, "CLOUDSDK_PYTHON_SITEPACKAGES": "1"}
    python = python or shutil.which("python3")
    return (python, ["-S"], str(lib), exported) if python else None


# Runs in gcloud's Python: load gcloud once, then fork one process per call (its own variables,
# folder, output file and a 120 s alarm), a few at a time; print each call's exit code as JSON.
BATCH = """
import json, os, signal, sys
lib, parallel = sys.argv[1], int(sys.argv[2])
sys.path[:0] = [os.path.join(lib, "third_party"), lib]
import gcloud as launcher
sys.path = launcher.reorder_sys_path(sys.path)
launcher._fix_google_module()
from googlecloudsdk import gcloud_main
from googlecloudsdk.core.configurations import named_configs
jobs = json.load(sys.stdin)
codes, running = {}, {}

def reap():
    pid, status = os.wait()
    codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)

for n, job in enumerate(jobs):
    while len(running) >= parallel:
        reap()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            output = os.open(job["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(output, 1)
            os.dup2(output, 2)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.chdir(job["cwd"])
            os.environ.clear()
            os.environ.update(job["env"])
            sys.argv = ["gcloud", *job["argv"]]
            named_configs.ActivePropertiesFile.Invalidate()  # read at import, from no config
            signal.alarm(120)
            code = gcloud_main.main() or 0
        except SystemExit as error:
            code = error.code if isinstance(error.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    running[pid] = n
while running:
    reap()
print(json.dumps([codes[n] for n in range(len(jobs))]))
"""


def _run_each(calls: list[Call], gcloud: str) -> None:
    """One `gcloud` process a call, several at a time."""

    def run(call: Call) -> None:
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
