"""Fixtures for tests against Google's real Firestore emulator (registered by conftest.py).

The emulator starts once per test session; each test gets its own project id, so no test sees
another's documents. Without gcloud or Java the tests skip with the reason, except in CI (`CI` set),
where they fail: CI must run them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from devtools.firestore_emulator import FirestoreEmulator
from devtools.gcloud_emulator import GcloudEmulator

E = TypeVar("E", bound=GcloudEmulator)


@dataclass(frozen=True)
class Firestore:
    """The running emulator, and this test's own project on it."""

    emulator: FirestoreEmulator
    project: str

    @property
    def host(self) -> str:
        return self.emulator.host

    def env(self, **extra: str) -> dict[str, str]:
        """The variables that point the service's Firestore ledger at this test's project."""
        return {
            "ORDER_LEDGER": "firestore",
            "FIRESTORE_EMULATOR_HOST": self.emulator.host,
            "GOOGLE_CLOUD_PROJECT": self.project,
            **extra,
        }


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_users(items, "firestore_emulator_server", pytest.mark.firestore)


def mark_users(items: list[pytest.Item], fixture: str, marker: pytest.MarkDecorator) -> None:
    # Before `-m` deselects: every test that needs the emulator carries the marker.
    for item in items:
        if fixture in getattr(item, "fixturenames", ()):
            item.add_marker(marker)


@pytest.fixture(scope="session")
def firestore_emulator_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FirestoreEmulator]:
    yield from running(FirestoreEmulator, tmp_path_factory)


def running(kind: type[E], tmp_path_factory: pytest.TempPathFactory) -> Iterator[E]:
    """A session's emulator of `kind`; without gcloud or Java a skip, or in CI a failure."""
    reason = kind.missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the {kind.name} emulator tests", pytrace=False)
        pytest.skip(reason)
    log_path = tmp_path_factory.mktemp("gcloud-emulator") / "emulator.log"
    with kind(log_path=log_path) as emulator:
        yield emulator


def fresh_project(
    request: pytest.FixtureRequest,
    server: GcloudEmulator,
    marker: str,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """The session's emulator started again if a test stopped it, its host variable set for this
    process too (for clients a test builds itself), and a fresh project id."""
    require_marker(request, marker, f"the {server.name} emulator")
    server.start()
    monkeypatch.setenv(server.host_variable, server.host)
    return f"test-{uuid.uuid4().hex[:16]}"


def require_marker(request: pytest.FixtureRequest, marker: str, what: str) -> None:
    """Fail a test that reaches `what` without carrying `marker`, with or without the tool.

    The static hook above marks every test whose fixtures name the emulator; a test that asks for
    it at run time (`request.getfixturevalue`) escapes that hook, and would then fail, not be
    deselected, in a step without the tool (cloudbuild.yaml's test step). Failing it here, where
    the tools exist too (CI), means no such test can be left unmarked.
    """
    if request.node.get_closest_marker(marker) is None:
        pytest.fail(
            f"{request.node.nodeid} uses {what} but is not marked `{marker}`: mark it (for a "
            f"parameter, pytest.param(..., marks=pytest.mark.{marker})) so that steps without "
            "the tool deselect it",
            pytrace=False,
        )


@pytest.fixture
def firestore(
    request: pytest.FixtureRequest,
    firestore_emulator_server: FirestoreEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> Firestore:
    """The session's emulator, and a fresh project id (FIRESTORE_EMULATOR_HOST set here too)."""
    project = fresh_project(request, firestore_emulator_server, "firestore", monkeypatch)
    return Firestore(firestore_emulator_server, project)
