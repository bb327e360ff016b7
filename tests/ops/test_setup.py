"""`python -m checkout setup | teardown | deploy` against a stand-in gcloud (tests/fake_gcloud.py).

The stand-in on PATH (a bash script, answered from this process) records each call and keeps what
the commands make in a state file, refusing what Google Cloud would refuse (a duplicate, a binding
on nothing, an unknown account). The real gcloud parses the same commands in
tests/ops/test_setup_gcloud.py; the Stripe part runs against the Stripe emulator and the Secret
Manager fake.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest

from checkout.ops import setup
from checkout.ops.setup_plan import (
    ACK_DEADLINE_SECONDS,
    STRIPE_SECRET,
    WEBHOOK_SECRET,
    Options,
    Step,
    build_plan,
)
from devtools.secret_manager_emulator import SecretManagerEmulator
from devtools.stripe_emulator import StripeEmulator
from tests.fake_gcloud import CHANGING, Server, initial_state, shim
from tests.local_run import code_lines, shell_blocks_of
from tests.stripe_emulator_client import sdk
from tests.support import ROOT, SERVICE_VARS, TEST_KEY

PROJECT = "demo-project"
REGION = "us-central1"
FRONTEND = "https://app.example.com"
OPTIONS = Options(PROJECT, REGION, FRONTEND)


class StandIn:
    """A folder with the stand-in `gcloud` and its state file."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.port = port
        self.answer_first("")
        (tmp / "cloudbuild.yaml").write_text("steps: []\n")  # setup runs from the repository root
        self.path = tmp / "gcloud-state.json"
        self.path.write_text(json.dumps(initial_state(PROJECT)))

    def answer_first(self, guard: str) -> None:
        """The `gcloud` on PATH, running the bash `guard` before asking the stand-in."""
        gcloud = self.bin / "gcloud"
        gcloud.write_text(shim(self.port, guard))
        gcloud.chmod(0o755)

    def state(self) -> dict[str, Any]:
        return json.loads(self.path.read_text())

    def edit(self, **values: Any) -> None:
        self.path.write_text(json.dumps({**self.state(), **values}))

    def world(self) -> dict[str, Any]:
        """What exists in the project: the part of the state a run may change."""
        state = self.state()
        return {k: state[k] for k in ("resources", "policies", "apis")}

    def calls(self) -> list[list[str]]:
        return list(self.state()["calls"])

    def changing_calls(self) -> list[list[str]]:
        return [c for c in self.calls() if set(c) & CHANGING]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
        return {
            **env,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_GCLOUD_STATE": str(self.path),
            "PYTHONPATH": str(ROOT),
            **extra,
        }


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    with Server() as server:
        fake = StandIn(tmp_path, server.port)
        monkeypatch.setenv("PATH", fake.env()["PATH"])
        monkeypatch.setenv("FAKE_GCLOUD_STATE", str(fake.path))
        monkeypatch.chdir(tmp_path)  # setup's record goes to ./.checkout-setup/
        yield fake


class Operators:
    """The operator commands (register-webhook, doctor) in-process: recorded, answering 0."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: tuple[str, ...], env: dict[str, str]) -> int:
        self.calls.append(argv)
        return 0


def run(options: Options = OPTIONS, **kwargs: Any) -> tuple[int, str, Operators]:
    out, operators = io.StringIO(), Operators()
    code = setup.run_setup(
        options, read_key=lambda: TEST_KEY, out=out, operator=operators, **kwargs
    )
    return code, out.getvalue(), operators


def python_m_checkout(command: str, *args: str) -> list[str]:
    """`python -m checkout COMMAND` for this file's project and region."""
    return [
        sys.executable,
        "-m",
        "checkout",
        command,
        "--project",
        PROJECT,
        "--region",
        REGION,
        *args,
    ]


def made_by(step: Step) -> list[str]:
    return [t for t in step.argv if not t.startswith("--")][1:4]


# --- the first run, the second, a run stopped at each step ---


@pytest.mark.slow
def test_a_first_run_makes_every_resource_in_the_plans_order(stand_in: StandIn) -> None:
    code, out, operators = run()
    assert code == 0, out
    plan = build_plan(OPTIONS)
    gcloud_steps = [s for s in plan.steps() if s.argv[0] == "gcloud"]
    changing = stand_in.changing_calls()
    # One changing call per gcloud step, in the plan's order, and nothing else changed.
    assert len(changing) == len(gcloud_steps)
    for call, step in zip(changing, gcloud_steps, strict=True):
        assert call[:3] == list(step.argv[1:4]), (call, step.title)
    assert [a[3] for a in operators.calls] == ["register-webhook", "doctor"]
    # The key went to gcloud on standard input: never an argument, never a line of output.
    assert TEST_KEY not in json.dumps(stand_in.calls()) and TEST_KEY not in out
    world = stand_in.world()
    resources = world["resources"]
    assert f"secrets/{STRIPE_SECRET}" in resources and f"secrets/{WEBHOOK_SECRET}" in resources
    (subscription,) = [k for k in resources if k.startswith("pubsub subscriptions/eventarc-")]
    assert resources[subscription]["ackDeadlineSeconds"] == ACK_DEADLINE_SECONDS
    assert resources[subscription]["deadLetterPolicy"]["maxDeliveryAttempts"] == 10
    # The first build replaced the placeholders.
    assert "built" in json.dumps(resources[f"run services/{OPTIONS.service}"])
    assert f"[{len(list(plan.steps()))}/{len(list(plan.steps()))}]" in out


def test_the_ack_deadline_equals_the_workers_request_timeout() -> None:
    import yaml

    build = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    assert build["substitutions"]["_WORKER_TIMEOUT"] == f"{ACK_DEADLINE_SECONDS}s"


@pytest.mark.slow
def test_a_second_run_changes_nothing(stand_in: StandIn) -> None:
    assert run()[0] == 0
    before = stand_in.world()
    first_calls = len(stand_in.calls())
    code, out, operators = run()
    assert code == 0, out
    second = stand_in.calls()[first_calls:]
    assert not [c for c in second if set(c) & CHANGING], "a second run changed something"
    assert stand_in.world() == before
    assert "done" not in [line.rsplit(": ", 1)[-1] for line in out.splitlines()]
    # register-webhook updates the one endpoint in place; doctor checks again.
    assert [a[3] for a in operators.calls] == ["register-webhook", "doctor"]


@pytest.mark.slow
@pytest.mark.timeout(600)  # about 1,700 stand-in calls: a hang, not a time
def test_a_run_stopped_at_each_step_in_turn_continues_to_the_state_of_one_clean_run(
    stand_in: StandIn, tmp_path: Path
) -> None:
    assert run()[0] == 0
    clean = stand_in.world()
    total = len(stand_in.changing_calls())
    stand_in.path.write_text(json.dumps(initial_state(PROJECT)))
    # Run r makes the step run r-1 stopped at (its first change), then fails at the next: so
    # every step fails once, and every run continues where the last one stopped.
    for failing in range(1, total + 1):
        stand_in.edit(changes=0, fail_at=1 if failing == 1 else 2, calls=[])
        code, out, _ = run()
        assert code == 1, out
        assert "stand-in's failure" in out and "command: gcloud " in out and "fix:" in out, out
        assert "run the same setup command again" in out
    stand_in.edit(changes=0, fail_at=None)
    code, out, _ = run()
    assert code == 0, out
    assert stand_in.world() == clean


@pytest.mark.slow
def test_an_interrupted_run_says_where_and_continues_when_run_again(stand_in: StandIn) -> None:
    def interrupt(argv: tuple[str, ...], env: dict[str, str]) -> int:
        raise KeyboardInterrupt

    out = io.StringIO()
    code = setup.run_setup(OPTIONS, read_key=lambda: TEST_KEY, out=out, operator=interrupt)
    assert code == 130
    assert "interrupted during: register the Stripe webhook endpoint" in out.getvalue()
    code, again, _ = run()
    assert code == 0, again
    assert "register the Stripe webhook endpoint and store its signing secret: ok" in again


def test_dry_run_runs_no_gcloud_and_prints_every_command_in_order(
    stand_in: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    result = subprocess.run(
        python_m_checkout("setup", "--frontend-url", FRONTEND, "--dry-run"),
        env=stand_in.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert stand_in.calls() == []
    lines = result.stdout.splitlines()[1:]
    assert len(lines) == len(build_plan(OPTIONS).items)
    assert TEST_KEY not in result.stdout


# --- preconditions: nothing changes when one fails ---


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("no-account", "gcloud auth login"),
        ("no-adc", "gcloud auth application-default login"),
        ("no-billing", "billing projects link"),
        ("bad-key", "not a secret key"),
        ("live-key-http", "https --frontend-url"),
    ],
)
def test_a_failed_precondition_stops_before_any_change(
    stand_in: StandIn, problem: str, message: str, tmp_path: Path
) -> None:
    # The stand-in's answers for the precondition commands, made to fail one at a time.
    guards = {
        "no-account": 'if [ "$1 $2" = "auth list" ]; then exit 0; fi\n',
        "no-adc": 'if [ "$1 $2" = "auth application-default" ]; then\n'
        "  echo 'ERROR: no credentials' >&2; exit 1\nfi\n",
        "no-billing": 'if [ "$1" = billing ]; then echo False; exit 0; fi\n',
    }
    options, key = OPTIONS, TEST_KEY
    if problem in guards:
        stand_in.answer_first(guards[problem])
    elif problem == "bad-key":
        key = "pk_test_abc"
    else:
        key, options = "sk_live_" + "x" * 24, Options(PROJECT, REGION, "http://app.example.com")
    out = io.StringIO()
    code = setup.run_setup(options, read_key=lambda: key, out=out, operator=Operators())
    assert code == 2
    assert message in out.getvalue()
    assert "nothing was changed" in out.getvalue()
    assert stand_in.changing_calls() == []
    assert key not in out.getvalue()


def test_what_the_user_made_differently_is_named_not_replaced(stand_in: StandIn) -> None:
    state = stand_in.state()
    state["resources"]["firestore databases/(default)"] = {
        "locationId": "europe-west3",
        "type": "FIRESTORE_NATIVE",
    }
    stand_in.path.write_text(json.dumps(state))
    code, out, _ = run()
    assert code == 1
    assert "locationId is europe-west3, not us-central1" in out
    assert "does not replace" in out
    assert stand_in.state()["resources"]["firestore databases/(default)"]["locationId"] == (
        "europe-west3"
    )


# --- teardown ---


@pytest.mark.parametrize("delete_data", [False, True])
@pytest.mark.slow
def test_teardown_removes_what_setup_made_and_keeps_the_ledger_unless_asked(
    stand_in: StandIn, delete_data: bool
) -> None:
    assert run()[0] == 0
    operators = Operators()
    out = io.StringIO()
    code = setup.run_teardown(
        OPTIONS, yes=True, delete_data=delete_data, out=out, operator=operators
    )
    assert code == 0, out.getvalue()
    world = stand_in.world()
    kept = {
        "iam service-accounts/123456789012-compute@developer.gserviceaccount.com",
    }
    if not delete_data:
        kept |= {
            "firestore databases/(default)",
            "firestore fields ttls/(default)/checkout_events/expire_at",
            "pubsub subscriptions/checkout-orders-dead-letter-sub",
        }
    assert set(world["resources"]) == kept
    assert not [b for bindings in world["policies"].values() for b in bindings], world["policies"]
    assert [a[1:4] for a in operators.calls] == [("-m", "checkout.ops.setup", "delete-webhook")]


@pytest.mark.slow
def test_teardown_asks_first_and_does_nothing_without_a_yes(stand_in: StandIn) -> None:
    assert run()[0] == 0
    before = stand_in.world()
    out = io.StringIO()
    code = setup.run_teardown(
        OPTIONS,
        yes=False,
        delete_data=False,
        out=out,
        confirm=lambda prompt: "n",
        operator=Operators(),
    )
    assert code == 1
    assert stand_in.world() == before


@pytest.mark.slow
def test_teardown_keeps_a_shared_resource_setup_did_not_make(stand_in: StandIn) -> None:
    state = stand_in.state()
    repository = "artifacts repositories/cloud-run-source-deploy"
    state["resources"][repository] = {"name": "cloud-run-source-deploy"}
    stand_in.path.write_text(json.dumps(state))
    assert run()[0] == 0
    assert (
        setup.run_teardown(
            OPTIONS, yes=True, delete_data=True, out=io.StringIO(), operator=Operators()
        )
        == 0
    )
    assert repository in stand_in.world()["resources"]


# --- later deploys ---


@pytest.mark.slow
def test_deploy_runs_the_readme_build_with_the_recorded_options(stand_in: StandIn) -> None:
    options = Options(PROJECT, REGION, FRONTEND, database="orders-db", price_amount="500")
    assert run(options)[0] == 0
    record = json.loads((Path(".checkout-setup") / f"{PROJECT}.json").read_text())
    assert record["options"]["database"] == "orders-db"
    before = len(stand_in.calls())
    assert setup.run_deploy(PROJECT, out=io.StringIO()) == 0
    (call,) = stand_in.calls()[before:]
    assert call[:2] == ["builds", "submit"]
    assert any("FIRESTORE_DATABASE=orders-db|PRICE_AMOUNT=500" in token for token in call)


# --- the Stripe part, against the emulator and the Secret Manager fake ---


class _Refuse(grpc.GenericRpcHandler):  # type: ignore[misc]
    def service(self, details: Any) -> Any:
        def refuse(requests: Any, context: Any) -> Any:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "the test's project refuses it")

        return grpc.stream_stream_rpc_method_handler(refuse)


@pytest.fixture
def refusing_google() -> Iterator[str]:
    """host:port of a gRPC server refusing every call, as Google Cloud does to an account without
    the roles: doctor's ledger and topic checks fail at once (an unreachable port is retried for
    seconds, which setup's two doctor runs here would wait out)."""
    server = grpc.server(ThreadPoolExecutor(max_workers=2), handlers=[_Refuse()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.mark.slow
def test_setup_registers_the_webhook_once_and_stores_each_secret_once(
    stand_in: StandIn,
    stripe_emulator: StripeEmulator,
    sm: SecretManagerEmulator,
    tmp_path: Path,
    refusing_google: str,
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(TEST_KEY + "\n")
    env = stand_in.env(
        FAKE_SM_URL=sm.endpoint,
        SECRET_MANAGER_ENDPOINT=sm.endpoint,
        STRIPE_API_BASE=stripe_emulator.url,
        # doctor's ledger and topic: refused here, so doctor fails, and with it setup.
        FIRESTORE_EMULATOR_HOST=refusing_google,
        PUBSUB_EMULATOR_HOST=refusing_google,
        STRIPE_TIMEOUT_SECONDS="5",
    )
    command = python_m_checkout("setup", "--frontend-url", FRONTEND, "--key-file", str(key_file))
    for attempt in (1, 2):
        result = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        output = result.stdout + result.stderr
        assert TEST_KEY not in output
        assert "ok   stripe key: works (test mode)" in output, output
        assert "ok   webhook endpoint" in output
        # doctor's verdict is setup's: its ledger check fails here.
        assert "FAIL ledger" in output
        assert result.returncode == 1, output
        endpoints = sdk(stripe_emulator).v1.webhook_endpoints.list().data
        assert len(endpoints) == 1, attempt
        assert endpoints[0]["url"] == (
            f"https://{OPTIONS.service}-123456789012.{REGION}.run.app/api/checkout/webhook"
        )
        assert sm.versions(PROJECT, STRIPE_SECRET) == [TEST_KEY.encode()]
        (signing,) = sm.versions(PROJECT, WEBHOOK_SECRET)
        assert signing.startswith(b"whsec_")
    # teardown deletes the endpoint it registered (and what the stand-in holds), keeping the data.
    teardown = python_m_checkout("teardown", "--yes")
    result = subprocess.run(
        teardown, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert sdk(stripe_emulator).v1.webhook_endpoints.list().data == []
    assert "firestore databases/(default)" in stand_in.world()["resources"]
    assert f"secrets/{STRIPE_SECRET}" not in stand_in.world()["resources"]


# --- docs/deploy.md shows setup's own commands ---


def test_the_step_by_step_commands_in_docs_deploy_md_are_setups_own() -> None:
    from checkout.ops.setup_plan import DOCS_OPTIONS, shell_line

    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text.split("\n## What setup does, step by step\n", 1)[1].split("\n## ", 1)[0]
    (block,) = shell_blocks_of(section)
    preamble = ("export ", "read ", "unset ")
    documented = [
        " ".join(line.split()) for line in code_lines(block) if not line.startswith(preamble)
    ]
    expected = [" ".join(shell_line(item).split()) for item in build_plan(DOCS_OPTIONS).items]
    assert documented == expected


def test_the_readme_deploys_with_the_two_logins_setup_and_deploy() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for block in shell_blocks_of(section) for line in code_lines(block)]
    assert lines[:2] == ["gcloud auth login", "gcloud auth application-default login"]
    assert lines[2].startswith(".venv/bin/python -m checkout setup --project ")
    assert lines[3] == ".venv/bin/python -m checkout deploy --project my-project"
    assert len(lines) == 4


@pytest.mark.slow
def test_teardown_leaves_a_database_that_is_not_as_setup_makes_it(stand_in: StandIn) -> None:
    state = stand_in.state()
    theirs = {"locationId": "europe-west3", "type": "FIRESTORE_NATIVE"}
    state["resources"]["firestore databases/(default)"] = theirs
    stand_in.path.write_text(json.dumps(state))
    assert run()[0] == 1  # setup stops at the database, saying what differs
    out = io.StringIO()
    code = setup.run_teardown(OPTIONS, yes=True, delete_data=True, out=out, operator=Operators())
    assert code == 0, out.getvalue()
    assert "kept (it is not as setup makes it" in out.getvalue()
    assert stand_in.world()["resources"]["firestore databases/(default)"] == theirs
