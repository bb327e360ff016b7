"""The docs' commands, run: every `gcloud` command by the real CLI, the curl walk-through live.

A page's shell blocks run in bash one after another, as a reader pastes them into one terminal,
so each command sees the variables its page defines. bash finds only a recording `gcloud` on its
PATH: curl, make and the rest are "not found", so nothing leaves the machine. Each recorded call
then runs through the real `gcloud` on an empty config (tests/gcloud_cli.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkout.config import ENVIRONMENT_VARIABLES
from tests.gcloud_cli import Call, Recorder, require_gcloud, run_for_real
from tests.local_run import code_lines, running_make_run, shell_blocks_of
from tests.support import HANDLED, ROOT

BASH = shutil.which("bash") or "/bin/bash"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# A `gcloud` in command position: at a line's start, or after a pipe, `;`, `&&`, `$(` or `do`.
_GCLOUD_COMMAND = re.compile(r"(?:^|[|;&(]|\bdo|\bthen)\s*gcloud\s", re.MULTILINE)


def shell_blocks(path: Path) -> list[str]:
    return shell_blocks_of(path.read_text())


def gcloud_commands(block: str) -> int:
    return sum(len(_GCLOUD_COMMAND.findall(line)) for line in code_lines(block))


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


PAGES_WITH_GCLOUD = [p for p in DOCS if any(gcloud_commands(b) for b in shell_blocks(p))]


def test_the_pages_that_document_google_cloud_are_found() -> None:
    # The extraction itself: the deploy guide and the README's one-line deploy must be seen.
    found = {page_id(p) for p in PAGES_WITH_GCLOUD}
    assert {"README.md", "docs/deploy.md"} <= found


# --- every gcloud command, by the real CLI ---


class PageRun:
    """One page's shell blocks run in one bash, with every gcloud call recorded."""

    def __init__(self, page: Path, tmp: Path, gcloud: str) -> None:
        self.page = page
        blocks = shell_blocks(page)
        self.expected_calls = sum(gcloud_commands(b) for b in blocks)
        self.recorder = Recorder(tmp, gcloud)
        script = "set -u\n" + "".join(
            f"\n# --- {page_id(page)}, block {n}\n{block}" for n, block in enumerate(blocks, 1)
        )
        self.result = subprocess.run(
            [BASH, "-c", script],
            cwd=ROOT,
            env=self.recorder.env(),
            input="placeholder-value\n" * 50,  # whatever `read` asks for
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        self.calls: list[Call] = self.recorder.calls()


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PageRun]:
    gcloud = require_gcloud()
    runs = {
        page_id(p): PageRun(p, tmp_path_factory.mktemp(p.stem), gcloud) for p in PAGES_WITH_GCLOUD
    }
    run_for_real([call for run in runs.values() for call in run.calls], gcloud)
    return runs


@pytest.mark.gcloud
# The first test also pays for the module's fixture: every documented gcloud command through the
# real CLI, a few seconds each. A generous bound (a hang, not a time) for a loaded machine.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", [page_id(p) for p in PAGES_WITH_GCLOUD])
def test_every_gcloud_command_in_the_page_passes_the_real_cli(
    page_runs: dict[str, PageRun], page: str
) -> None:
    run = page_runs[page]
    assert "unbound variable" not in run.result.stderr, (
        f"{page} uses a variable it never defines:\n{run.result.stderr}"
    )
    assert "syntax error" not in run.result.stderr, run.result.stderr
    # Every command written on the page ran (a loop may run one more than once).
    assert len(run.calls) >= run.expected_calls, (
        f"{page}: {run.expected_calls} gcloud commands written, {len(run.calls)} ran\n"
        f"{run.result.stderr}"
    )
    problems = [p for call in run.calls if (p := call.problem()) and not signing_in(call)]
    assert not problems, "gcloud refused:\n" + "\n\n".join(problems)


def signing_in(call: Call) -> bool:
    """A valid `gcloud auth` command on an empty config with no terminal: a login parsed, then
    asked for the browser's code; print-access-token (which `setup`, run by the page, calls)
    parsed, then found no application-default credentials."""
    return call.argv[:2] in (["auth", "login"], ["auth", "application-default"]) and (
        "complete the sign-in prompts" in call.output
        or "default credentials were not found" in call.output
    )


# --- the README's curl walk-through, against a live `make run` ---


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Walk-through with curl", 1)[1].split("\n## ", 1)[0]
    (block,) = shell_blocks_of(section)
    return block


def documented_answers(block: str) -> list[str]:
    """The JSON answers the walk-through shows, as comment lines right after the commands."""
    return [line[2:] for line in block.splitlines() if line.startswith("# {")]


def answer_pattern(answers: list[str]) -> re.Pattern[str]:
    """`…` stands for an id's characters; curl -s prints the bodies back to back."""
    parts = [re.escape(a).replace("…", "[A-Za-z0-9_]+") for a in answers]
    return re.compile(r"\s*".join(parts) + r"\s*")


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """`make run` on free ports (its own process group); yields (function, emulator, log)."""
    yield from running_make_run(tmp_path)


@pytest.mark.curl
def test_the_curl_walkthrough_gets_the_documented_answers(
    make_run: tuple[str, str, Path],
) -> None:
    api, emulator, log = make_run
    block = walkthrough()
    # The block names its two addresses first; only those change, to this run's free ports.
    addresses = {"API": "http://127.0.0.1:8080", "EMULATOR": "http://127.0.0.1:12111"}
    for name, default in addresses.items():
        assert re.search(rf"^{name}={re.escape(default)}\b", block, re.MULTILINE), name
    script = block.replace(addresses["API"], api).replace(addresses["EMULATOR"], emulator)

    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answers = documented_answers(block)
    assert len(answers) == 3
    assert answer_pattern(answers).fullmatch(result.stdout), (
        f"documented:\n{chr(10).join(answers)}\ngot:\n{result.stdout}"
    )
    # "the function's log shows one `checkout_order_change` record, then ... one
    # `checkout_order_delivered`" (bounded, generous: a hang, not a time)
    deadline = time.monotonic() + 10
    while '"message":"checkout_order_delivered"' not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    for record in ("checkout_order_change", "checkout_order_delivered"):
        assert log.read_text().count(f'"message":"{record}"') == 1, record


# --- the configuration reference ---


def test_every_environment_variable_the_service_reads_is_documented() -> None:
    documented = {
        name
        for page in DOCS
        for row in re.findall(r"^\|.*$", page.read_text(), re.MULTILINE)
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])
    }
    missing = set(ENVIRONMENT_VARIABLES) - documented
    assert not missing, f"not in any docs table's first column: {sorted(missing)}"


# --- what the operations guide says to alert on ---


def test_the_dispute_alert_covers_the_api_and_the_reconciler_job() -> None:
    # A dispute whose webhook was missed is recorded, and logged, by the reconciler: a Cloud Run
    # job, whose log entries are resource cloud_run_job, not the API's cloud_run_revision.
    block = next(
        b for b in shell_blocks(ROOT / "docs" / "operations.md") if "checkout_dispute_opened" in b
    )
    (condition,) = re.findall(r"--condition-filter='([^']*)'", block)
    (log_filter,) = re.findall(r"--log-filter='([^']*)'", block)
    assert "resource.type" not in log_filter  # the metric counts every resource's entries
    named = set(re.findall(r'resource\.type\s*=\s*"([a-z_]+)"', condition))
    assert "resource.type" not in condition or named >= {"cloud_run_revision", "cloud_run_job"}


def test_the_undelivered_alert_counts_the_reconcilers_error_record() -> None:
    # The reconciler (a Cloud Run job) logs one ERROR per change undelivered past the alert bound;
    # the metric must match that record's message exactly, and the alert the job's resource.
    block = next(
        b
        for b in shell_blocks(ROOT / "docs" / "operations.md")
        if "checkout_change_undelivered" in b
    )
    (log_filter,) = re.findall(r"--log-filter='([^']*)'", block)
    assert log_filter == 'jsonPayload.message="checkout_change_undelivered"'
    (condition,) = re.findall(r"--condition-filter='([^']*)'", block)
    assert 'resource.type="cloud_run_job"' in condition
    assert "logging.googleapis.com/user/checkout_change_undelivered" in condition
    source = (ROOT / "checkout" / "ops" / "reconcile.py").read_text()
    assert 'log.error("checkout_change_undelivered"' in source


def test_every_handled_event_and_change_type_is_listed_where_handled_events_are_listed() -> None:
    from checkout.ops.register_webhook import ENABLED_EVENTS
    from checkout.orders.model import CHANGE_TYPES, HANDLED_EVENTS

    handled = set(HANDLED)
    assert set(HANDLED_EVENTS) == handled == set(ENABLED_EVENTS)  # what register-webhook sets
    webhooks = (ROOT / "docs" / "webhooks.md").read_text()
    openapi = (ROOT / "openapi.yaml").read_text()
    for kind in handled:
        assert f"`{kind}`" in webhooks, kind
        # openapi.yaml writes the session events after the first as `.async_payment_failed`.
        assert f"`{kind}`" in openapi or f"`{kind.removeprefix('checkout.session')}`" in openapi
    pubsub = (ROOT / "docs" / "pubsub.md").read_text()
    schema = (ROOT / "checkout" / "orders" / "order_change.schema.json").read_text()
    for change in CHANGE_TYPES:
        assert f"`{change}`" in pubsub and f'"{change}"' in schema, change
