"""The Makefile's two test targets: `make test`, every test on every core; `make check`, the quick
loop that leaves out exactly the tests needing a tool, an emulator or seconds each."""

from __future__ import annotations

import re
import tomllib

from tests.support import ROOT

MAKEFILE = (ROOT / "Makefile").read_text()


def recipe(target: str) -> list[str]:
    """The commands of a target, one a line."""
    lines = MAKEFILE.split(f"\n{target}:", 1)[1].splitlines()[1:]
    commands: list[str] = []
    for line in lines:
        if not line.startswith("\t"):
            break
        if commands and commands[-1].endswith("\\"):  # a command continued on the next line
            commands[-1] = commands[-1][:-1] + line.strip()
        else:
            commands.append(line.strip())
    return commands


def variable(name: str) -> str:
    (value,) = re.findall(rf"^{name} :?\??= ?(.*)$", MAKEFILE, re.MULTILINE)
    return value


def markers() -> set[str]:
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    return {line.split(":")[0] for line in pytest_options["ini_options"]["markers"]}


LINT = ["$(PY) -m ruff check .", "$(PY) -m ruff format --check .", "$(PY) -m mypy"]


def test_make_test_lints_then_runs_every_test_on_every_core_beside_mypy() -> None:
    commands = recipe("test")
    assert commands[:2] == LINT[:2]
    # One shell line: mypy in the background, pytest, then mypy's report and the worse status.
    (together,) = commands[2:]
    assert together.startswith("types=$$(mktemp); $(PY) -m mypy >$$types 2>&1 & mypy=$$!;")
    assert "$(PY) -m pytest $(call PARALLEL,loadscope,$(TEST_JOBS)); tests=$$?;" in together
    assert together.endswith("exit $$((typed ? typed : tests))")
    assert variable("JOBS") == "logical"
    # One worker more than CPUs (its workers often wait), unless JOBS names a count.
    assert variable("TEST_JOBS").startswith("$(if $(filter logical,$(JOBS)),$(shell $(PYTHON) -c")
    assert "(os.cpu_count() or 1) + 1" in variable("TEST_JOBS")
    assert variable("TEST_JOBS").endswith(",$(JOBS))")
    assert "-n $(2) --dist $(1)" in variable("PARALLEL")
    assert "-p no:xdist" in variable("PARALLEL")  # JOBS=1: one process


def test_make_check_lints_then_leaves_out_every_marked_test() -> None:
    assert recipe("check") == [*LINT, '$(PY) -m pytest $(call PARALLEL,load,$(JOBS)) -m "$(QUICK)"']
    terms = variable("QUICK").split(" and ")
    assert all(term.startswith("not ") for term in terms)
    assert {term.removeprefix("not ") for term in terms} == markers()


def test_ci_runs_make_test() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.rstrip().endswith("make test")
    assert "set -euo pipefail" in ci
