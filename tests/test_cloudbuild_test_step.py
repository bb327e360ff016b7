"""cloudbuild.yaml's test step passes where it runs: a clean copy, a fresh Python, no tools.

Cloud Build runs the step on `python:3.12-slim`, which has no gcloud, Java, Chromium, Node, curl,
make or git. A test that needs one of them and escapes the step's `-m` selection fails the build,
and so no deploy happens (issue 24). This test runs the step's own script, read from
cloudbuild.yaml, in a subprocess whose PATH lacks every one of those tools, on a copy of the
tracked source in a fresh virtualenv, and requires it to pass. It takes minutes (a full install
and most of the suite), so it carries the `deploy_step` marker, which the step itself deselects.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

# What python:3.12-slim lacks and the suite might reach for.
ABSENT_TOOLS = frozenset(
    {
        "gcloud",
        "java",
        "chromium",
        "chromium-browser",
        "google-chrome",
        "node",
        "npm",
        "npx",
        "curl",
        "wget",
        "make",
        "git",
    }
)

pytestmark = [pytest.mark.deploy_step, pytest.mark.timeout(1500)]


def _test_step(build: dict[str, Any]) -> dict[str, Any]:
    (step,) = [s for s in build["steps"] if s.get("id") == "test"]
    return step


def _source_copy(destination: Path) -> None:
    """The files a `gcloud builds submit --ignore-file=.gitignore` upload holds: git's view."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        source = ROOT / os.fsdecode(raw)
        if not source.is_file():  # deleted in the work tree, not yet in the index
            continue
        target = destination / os.fsdecode(raw)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def _path_without_tools(bin_dir: Path) -> Path:
    """One folder with a link to every program on PATH except ABSENT_TOOLS."""
    bin_dir.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or not Path(folder).is_dir() or ".venv" in Path(folder).parts:
            continue
        for program in Path(folder).iterdir():
            name = program.name
            if (
                name in ABSENT_TOOLS
                or name.startswith(("java", "python"))
                or (bin_dir / name).exists()
            ):
                continue
            if program.is_file() and os.access(program, os.X_OK):
                (bin_dir / name).symlink_to(program)
    return bin_dir


def test_the_deploy_test_step_passes_without_gcloud_java_chromium_curl_make_or_git(
    tmp_path: Path,
) -> None:
    build = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    step = _test_step(build)
    assert step["entrypoint"] == "bash"
    *flags, script = step["args"]

    source = tmp_path / "workspace"
    _source_copy(source)
    base_python = getattr(sys, "_base_executable", sys.executable)
    venv = tmp_path / "python"
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    tools = _path_without_tools(tmp_path / "bin")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": f"{venv / 'bin'}{os.pathsep}{tools}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        # The step's own variables (CI=true among them), as Cloud Build sets them.
        **dict(item.split("=", 1) for item in step.get("env", ())),
    }
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONFIG_FILE"):
        if name in os.environ:  # how this machine reaches PyPI, if it is told
            env[name] = os.environ[name]
    for tool in ABSENT_TOOLS:
        assert shutil.which(tool, path=env["PATH"]) is None, tool

    result = subprocess.run(
        ["bash", *flags, script],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=1400,
        check=False,
    )
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
    assert result.returncode == 0, tail
    summary = re.search(r"(\d+) passed", tail)
    assert summary and int(summary[1]) > 100, tail
    assert not re.search(r"\d+ (failed|error)", tail), tail
