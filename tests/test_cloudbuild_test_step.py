"""cloudbuild.yaml's test step: its command, its selection, and the PATH policy that proves it.

The step runs the suite on python:3.12-slim, which has no gcloud, Java, Chromium, Node, curl, jq,
make or git. A test that needs one of them and escapes the step's `-m` selection fails the build,
and so no deploy happens (issue 24). The ordinary run proves the step's tests pass without those
tools: tests/cloudbuild_step.py runs each of them with a PATH that lacks every one, and the step's
variables. Here: the step's command collects on such a PATH, selects exactly the tests that policy
covers, and the policy does fail a test that calls a tool without its marker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cloudbuild_step import (
    LIST_VARIABLE,
    STEP_IMAGE_LACKS,
    deselected_markers,
    step_deselects,
    step_pytest_args,
    step_script,
    step_variables,
    the_step,
    tool_free_path,
)
from tests.support import ROOT

pytestmark = pytest.mark.deploy_step

TOOL_MARKERS = {"browser", "gcloud", "curl", "firestore", "pubsub"}


@pytest.fixture(scope="module")
def step() -> dict[str, Any]:
    return the_step()


@pytest.fixture(scope="module")
def step_env(tmp_path_factory: pytest.TempPathFactory, step: dict[str, Any]) -> dict[str, str]:
    """The step's variables, and a PATH with none of the tools its image lacks."""
    path = tool_free_path(tmp_path_factory.mktemp("step") / "bin", os.environ["PATH"])
    env = {**os.environ, **step_variables(step), "PATH": path}
    env.pop(LIST_VARIABLE, None)
    for tool in STEP_IMAGE_LACKS:
        assert shutil.which(tool, path=path) is None, tool
    return env


def test_the_step_installs_the_locked_requirements_then_runs_pytest(step: dict[str, Any]) -> None:
    assert step["name"] == "python:3.12-slim"
    assert step["entrypoint"] == "bash"
    assert step["args"][:-1] == ["-euo", "pipefail", "-c"]
    install, run = step_script(step)
    assert install == "python -m pip install --quiet --no-cache-dir -r requirements-dev.txt"
    assert run.startswith("python -m pytest -m ")
    assert step_variables(step)["CI"] == "true"  # a missing tool fails the step, never skips


def test_the_step_deselects_every_tool_marker_and_itself(step: dict[str, Any]) -> None:
    assert step_deselects(step) == {*TOOL_MARKERS, "deploy_step"}


@pytest.mark.parametrize(
    "expression",
    ["not browser or not gcloud", "browser", "not (browser and gcloud)", "not browser and curl"],
)
def test_a_selection_the_policy_cannot_read_exactly_is_refused(expression: str) -> None:
    with pytest.raises(ValueError, match="not a and not b"):
        deselected_markers(expression)


def test_the_step_collects_without_the_tools_exactly_the_tests_run_without_them(
    step: dict[str, Any], step_env: dict[str, str], tmp_path: Path
) -> None:
    # The step's own pytest command, collected (not run) on the step's PATH: nothing it imports
    # needs a tool, and what it selects is exactly what every ordinary run runs without the tools.
    listing = tmp_path / "collected.txt"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *step_pytest_args(step), "--collect-only"],
        cwd=ROOT,
        env={**step_env, LIST_VARIABLE: str(listing)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    rows = [line.split(" ", 2) for line in listing.read_text().splitlines()]
    selected = {nodeid for how, _, nodeid in rows if how == "selected"}
    without_tools = {nodeid for _, policy, nodeid in rows if policy == "without-tools"}

    assert len(selected) > 500
    assert selected == without_tools
    left_out = {nodeid for how, _, nodeid in rows if how == "deselected"}
    assert any("test_docs.py" in nodeid for nodeid in left_out)  # gcloud, curl
    assert any("test_ledger.py" in nodeid for nodeid in left_out)  # firestore
    assert any("test_cloudbuild_test_step.py" in nodeid for nodeid in left_out)


SAMPLE = """
import os
import shutil
import subprocess

import pytest


def test_unmarked_calls_curl():
    subprocess.run(["curl", "--version"], check=True, capture_output=True)


@pytest.mark.curl
def test_marked_calls_curl():
    subprocess.run(["curl", "--version"], check=True, capture_output=True)


def test_unmarked_runs_as_in_the_step():
    assert os.environ["CI"] == "true"
    assert {tool for tool in TOOLS if shutil.which(tool)} == set()
    subprocess.run(["bash", "-c", "true"], check=True)  # what the image has is still there


@pytest.fixture
def tool_in_a_fixture():
    subprocess.run(["git", "--version"], check=True, capture_output=True)


def test_unmarked_fixture_calls_git(tool_in_a_fixture):
    pass
"""


@pytest.mark.curl
def test_an_unmarked_test_that_calls_curl_fails_in_the_ordinary_run(tmp_path: Path) -> None:
    for tool in ("curl", "git"):  # CI has them, so only the policy can make the test fail
        assert shutil.which(tool), f"{tool} is not installed"
    tests = tmp_path / "test_sample.py"
    tests.write_text(SAMPLE.replace("TOOLS", repr(sorted(STEP_IMAGE_LACKS))))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.cloudbuild_step",
            "-p",
            "no:cacheprovider",
            "-rA",
            str(tests),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "FAILED test_sample.py::test_unmarked_calls_curl" in output, output
    assert "PASSED test_sample.py::test_marked_calls_curl" in output, output
    assert "PASSED test_sample.py::test_unmarked_runs_as_in_the_step" in output, output
    assert "ERROR test_sample.py::test_unmarked_fixture_calls_git" in output, output
    assert "No such file or directory: 'curl'" in output, output
