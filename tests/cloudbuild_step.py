"""cloudbuild.yaml's test step, proved in every ordinary run (registered by conftest.py).

The step runs `pytest -m "not browser and not gcloud and ..."` on python:3.12-slim, which has no
gcloud, Java, Chromium, Node, curl, jq, make or git. A test that needs one of them without the
marker that deselects it would fail there, stop the build, and so stop the deploy (issue 24).

So every test that the step selects runs here (`make test`, CI) as it would run there: with a
`PATH` that holds none of those tools and the step's own variables (`CI=true` among them, so a
missing tool fails rather than skips). Such a test fails here, not at deploy time. The tests that
carry a tool marker run with the machine's whole `PATH`. The step's command and selection are
checked by tests/test_cloudbuild_test_step.py, which collects (never runs) the step's tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

# What python:3.12-slim lacks and the suite might reach for.
STEP_IMAGE_LACKS = frozenset(
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
        "jq",
        "make",
        "git",
    }
)

# Written by the plugin at the end of collection, when set: each collected test, whether `-m`
# selected it and whether the plugin runs it without the tools (for test_cloudbuild_test_step.py,
# which collects the step's own command with it: the two must agree on every test).
LIST_VARIABLE = "CHECKOUT_STEP_SELECTION_FILE"

_NOT_MARKER = re.compile(r"not ([A-Za-z_][A-Za-z0-9_]*)")


def the_step(build: dict[str, Any] | None = None) -> dict[str, Any]:
    """cloudbuild.yaml's step `test`."""
    if build is None:
        build = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    (step,) = [s for s in build["steps"] if s.get("id") == "test"]
    return step


def step_script(step: dict[str, Any]) -> list[str]:
    """The step's bash script, one command a line."""
    return [line for line in step["args"][-1].splitlines() if line.strip()]


def step_pytest_args(step: dict[str, Any]) -> list[str]:
    """The arguments of the step's `python -m pytest` command."""
    (line,) = [line for line in step_script(step) if " -m pytest" in line]
    words = shlex.split(line)
    return words[words.index("pytest") + 1 :]


def deselected_markers(expression: str) -> frozenset[str]:
    """The markers of a `-m "not a and not b ..."` expression, the only form the step may use.

    Read this strictly so that what the plugin runs without tools is exactly what the step selects.
    """
    terms = expression.split(" and ")
    markers = [m[1] for term in terms if (m := _NOT_MARKER.fullmatch(term.strip()))]
    if len(markers) != len(terms):
        raise ValueError(f'the test step\'s -m must read "not a and not b ...": {expression!r}')
    return frozenset(markers)


def step_deselects(step: dict[str, Any]) -> frozenset[str]:
    args = step_pytest_args(step)
    return deselected_markers(args[args.index("-m") + 1])


def step_variables(step: dict[str, Any]) -> dict[str, str]:
    """The variables the step sets (CI=true among them), as Cloud Build sets them."""
    return dict(item.split("=", 1) for item in step.get("env", ()))


def in_step(item: pytest.Item, deselected: frozenset[str]) -> bool:
    return not any(item.get_closest_marker(name) for name in deselected)


def tool_free_path(bin_dir: Path, path: str) -> str:
    """`path` without STEP_IMAGE_LACKS: this interpreter's folder, then one folder of links to
    every other program on `path` (the first of each name, as a shell would find it)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    here = Path(sys.executable).parent
    for folder in path.split(os.pathsep):
        if not folder or not Path(folder).is_dir() or Path(folder) == here:
            continue
        for program in Path(folder).iterdir():
            name = program.name
            if name in STEP_IMAGE_LACKS or name.startswith("java") or (bin_dir / name).exists():
                continue
            if program.is_file() and os.access(program, os.X_OK):
                (bin_dir / name).symlink_to(program)
    for name in STEP_IMAGE_LACKS:
        assert shutil.which(name, path=str(here)) is None, f"{name} is in {here}"
    return f"{here}{os.pathsep}{bin_dir}"


class StepEnvironment:
    """The variables a test of the step's selection runs with: swapped in, then restored."""

    def __init__(self, step: dict[str, Any]) -> None:
        self.deselected = step_deselects(step)
        self._variables = step_variables(step)
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._path = ""

    def variables(self) -> dict[str, str]:
        if self._folder is None:  # made on first use: `-m browser` runs never need it
            self._folder = tempfile.TemporaryDirectory(prefix="step-path-")
            self._path = tool_free_path(Path(self._folder.name) / "bin", os.environ["PATH"])
        return {**self._variables, "PATH": self._path}

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        variables = self.variables()
        saved = {name: os.environ.get(name) for name in variables}
        os.environ.update(variables)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def close(self) -> None:
        if self._folder is not None:
            self._folder.cleanup()


_ENVIRONMENT = pytest.StashKey[StepEnvironment]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ENVIRONMENT] = StepEnvironment(the_step())


def pytest_unconfigure(config: pytest.Config) -> None:
    if _ENVIRONMENT in config.stash:
        config.stash[_ENVIRONMENT].close()


_DESELECTED = pytest.StashKey[list[pytest.Item]]()


def pytest_deselected(items: list[pytest.Item]) -> None:
    if items and os.environ.get(LIST_VARIABLE):
        items[0].config.stash.setdefault(_DESELECTED, []).extend(items)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    listing = os.environ.get(LIST_VARIABLE)
    if listing:
        deselected = session.config.stash[_ENVIRONMENT].deselected
        left_out = session.config.stash.get(_DESELECTED, [])
        rows = [(item, "selected") for item in session.items]
        rows += [(item, "deselected") for item in left_out]
        Path(listing).write_text(
            "".join(
                f"{how} {'without-tools' if in_step(item, deselected) else 'with-tools'} "
                f"{item.nodeid}\n"
                for item, how in rows
            )
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    # Setup, call and teardown alike: a fixture that reaches for a tool fails as the test would.
    environment = item.config.stash[_ENVIRONMENT]
    if not in_step(item, environment.deselected):
        return (yield)
    with environment.applied():
        return (yield)
