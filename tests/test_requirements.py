"""Dependencies: every one pinned, with hashes, and the lock files made from their inputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)")


def requirements(path: Path) -> dict[str, list[str]]:
    """name -> the lines of its requirement (continuations joined), for a pip-compile output."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith(" "):
            assert current is not None, f"{path.name}: continuation without a requirement"
            current.append(line.strip())
            continue
        match = _PIN.match(line)
        assert match, f"{path.name}: not an exact pin: {line!r}"
        current = entries.setdefault(match.group(1).lower(), [match.group(2)])
    return entries


def pins(path: Path) -> dict[str, str]:
    """name -> version for the `==` pins of an input file (comments and -r/-c lines skipped)."""
    found = {}
    for line in path.read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-dev.txt"])
def test_every_dependency_is_pinned_with_hashes(name):
    entries = requirements(ROOT / name)
    assert entries
    for package, lines in entries.items():
        assert any(part.startswith("--hash=sha256:") for part in " ".join(lines).split()), package


@pytest.mark.parametrize(
    ("lock", "source"),
    [("requirements.txt", "requirements.in"), ("requirements-dev.txt", "requirements-dev.in")],
)
def test_the_lock_holds_every_input_pin_at_its_version(lock, source):
    locked = {name: lines[0] for name, lines in requirements(ROOT / lock).items()}
    for package, version in pins(ROOT / source).items():
        assert locked.get(package) == version, f"{package}: run `make lock`"


def test_development_runs_exactly_the_production_versions():
    production = {name: lines[0] for name, lines in requirements(ROOT / "requirements.txt").items()}
    development = {
        name: lines[0] for name, lines in requirements(ROOT / "requirements-dev.txt").items()
    }
    for package, version in production.items():
        assert development.get(package) == version, package
