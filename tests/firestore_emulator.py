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

import pytest

from devtools.firestore_emulator import FirestoreEmulator


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
    # Before `-m` deselects: every test that needs the emulator carries the marker.
    for item in items:
        if "firestore_emulator_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.firestore)


@pytest.fixture(scope="session")
def firestore_emulator_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FirestoreEmulator]:
    reason = FirestoreEmulator.missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the Firestore emulator tests", pytrace=False)
        pytest.skip(reason)
    log_path = tmp_path_factory.mktemp("firestore-emulator") / "emulator.log"
    with FirestoreEmulator(log_path=log_path) as emulator:
        yield emulator


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
    """The session's emulator (started again if a test stopped it), and a fresh project id.

    FIRESTORE_EMULATOR_HOST is set for this process too, for ledgers the test builds itself.
    """
    require_marker(request, "firestore", "the Firestore emulator")
    firestore_emulator_server.start()
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator_server.host)
    return Firestore(firestore_emulator_server, f"test-{uuid.uuid4().hex[:16]}")
