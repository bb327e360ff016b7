"""`python -m checkout setup | teardown | deploy`: the first deploy in one command, and its undo.

setup_plan.py's steps with the user's own gcloud, each looking before it makes: docs/deploy.md."""

# ruff: noqa: S603, PLC0415
# S603: gcloud and python run with argv lists from the plan, never a shell; PLC0415: the Stripe
# part imports the service only in teardown's own process.

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from checkout.config import is_live_key
from checkout.errors import CheckoutError
from checkout.keys import SecretConfigError, check_stripe_key_shape
from checkout.ops.setup_plan import (
    STRIPE_SECRET,
    Argv,
    Fact,
    Look,
    Options,
    Step,
    build_command,
    build_plan,
    fill,
    shell_line,
)

RECORD_DIR = Path(".checkout-setup")
_ABSENT = re.compile(r"NOT_FOUND|not found|does not exist|Cannot find", re.IGNORECASE)
GCLOUD_TIMEOUT_SECONDS = 3600  # the first build runs the tests, then three source deploys


class Stop(CheckoutError):
    """Setup cannot go on; the message says where, what gcloud said and the fix."""


@dataclasses.dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


# Runs an operator command (python -m checkout ...): argv, extra environment -> exit status.
Operator = Callable[[Argv, dict[str, str]], int]


class Runner:
    """Runs gcloud and the operator commands; prints one progress line per step."""

    def __init__(self, out: IO[str], operator: Operator | None = None) -> None:
        self.out = out
        self.operator = operator or _run_operator
        self.facts: dict[str, str] = {}

    def gcloud(self, argv: Argv, stdin: str | None = None, *, stream: bool = False) -> Done:
        executable = shutil.which("gcloud")
        if executable is None:
            raise Stop("gcloud is not on PATH: install the Google Cloud CLI")
        done = subprocess.run(
            [executable, *argv[1:]],
            input=stdin if stdin is not None else "",
            stdout=None if stream else subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=GCLOUD_TIMEOUT_SECONDS,
            check=False,
            env={**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"},
        )
        return Done(done.returncode, done.stdout or "", done.stderr or "")

    def fact(self, fact: Fact) -> str:
        if fact.name not in self.facts:
            done = self.gcloud(fill(fact.argv, self.facts))
            value = done.stdout.strip()
            if done.returncode != 0 or not value:
                raise Stop(
                    f"could not read {fact.name}\n  command: {shell_line(fact)}\n"
                    f"  gcloud said: {_said(done)}"
                )
            self.facts[fact.name] = value
        return self.facts[fact.name]

    def looks_done(self, step: Step) -> tuple[bool, str]:
        """(done, the look's output); Stop when it exists but differs and is the user's."""
        if step.look is None:
            return False, ""
        done = self.gcloud(fill(step.look.argv, self.facts))
        if done.returncode != 0:
            if _ABSENT.search(done.stderr):
                return False, ""
            raise Stop(_failure(step, step.look.argv, done, "the look-up failed"))
        look = step.look
        if look.binding is not None:  # its member may name a fact (the Pub/Sub agent)
            role, member = look.binding
            look = dataclasses.replace(look, binding=(role, fill((member,), self.facts)[0]))
        verdict = judge(look, done.stdout)
        if verdict is None:
            return True, done.stdout
        if step.look.differs == "stop" and verdict:
            raise Stop(
                f"{step.title}: it exists but differs ({verdict}). Setup does not replace "
                f"what exists. Fix: {step.fix}"
            )
        return False, done.stdout


def judge(look: Look, output: str) -> str | None:
    """None when the look's output says the step is done, else what is missing or differs."""
    lines = [line.strip() for line in output.strip().splitlines()] or [""]
    if look.binding is not None:
        role, member = look.binding
        policy = json.loads(output or "{}")
        for binding in policy.get("bindings", []):
            if binding.get("role") == role and member in binding.get("members", []):
                return None
        return f"{member} lacks {role}"
    missing = [value for value in look.lines if value not in lines]
    if missing:
        return f"missing {', '.join(missing)}"
    present = [value or "(empty)" for value in look.not_lines if value in lines]
    if present:
        return f"found {', '.join(present)}"
    if look.fields:
        data = json.loads(output or "{}")
        differ = []
        for path, expected in look.fields:
            actual: Any = data
            for part in path.split("."):
                actual = actual.get(part) if isinstance(actual, dict) else None
            if str(actual) != expected:
                differ.append(f"{path} is {actual}, not {expected}")
        if differ:
            return "; ".join(differ)
    return None


def _said(done: Done) -> str:
    text = (done.stderr or done.stdout).strip()
    return "\n    ".join(text.splitlines()[-6:]) or f"(nothing; exit {done.returncode})"


def _failure(step: Step, argv: Argv, done: Done, what: str = "failed") -> str:
    command = shell_line(dataclasses.replace(step, argv=argv, env=(), stdin_key=False))
    fix = step.fix or "what gcloud says"
    return (
        f"{step.title}: {what}\n  command: {command}\n  gcloud said: {_said(done)}\n"
        f"  fix: {fix}; then run the same setup command again: it continues from here"
    )


def _run_operator(argv: Argv, env: dict[str, str]) -> int:
    command = [sys.executable, *argv[1:]]
    return subprocess.run(command, env={**os.environ, **env}, check=False).returncode


# --- setup ---


def run_setup(
    options: Options,
    *,
    read_key: Callable[[], str],
    dry_run: bool = False,
    out: IO[str] = sys.stdout,
    operator: Operator | None = None,
) -> int:
    plan = build_plan(options)
    if dry_run:
        print(f"# setup for {options.project} would run, in order:", file=out)
        for item in plan.items:
            print(shell_line(item), file=out)
        return 0
    runner = Runner(out, operator)
    try:
        key = preconditions(runner, options, read_key)
    except Stop as stop:
        print(f"setup: a precondition failed, nothing was changed.\n{stop}", file=out)
        return 2
    record = Record.load(options.project)
    record.data["options"] = dataclasses.asdict(options)
    record.save()
    steps = list(plan.steps())
    current = "the preconditions"
    try:
        for item in plan.items:
            if isinstance(item, Fact):
                runner.fact(item)
                continue
            number, current = steps.index(item) + 1, item.title
            if item.argv[0] == "python" or item.argv[1:3] == ("builds", "submit"):
                # Their own output follows: say first which step it belongs to.
                print(f"[{number}/{len(steps)}] {item.title}: running", file=out, flush=True)
            status = _setup_step(runner, item, key, record)
            print(f"[{number}/{len(steps)}] {item.title}: {status}", file=out, flush=True)
            if status.startswith("FAIL"):
                return 1
    except Stop as stop:
        print(f"setup stopped.\n{stop}", file=out)
        return 1
    except KeyboardInterrupt:
        print(
            f"\nsetup interrupted during: {current}. Run the same command again: it looks at "
            "each step first and continues from there.",
            file=out,
        )
        return 130
    print(f"done. Later deploys: python -m checkout deploy --project {options.project}", file=out)
    return 0


def _setup_step(runner: Runner, step: Step, key: str | None, record: Record) -> str:
    if step.argv[0] == "python":
        argv = fill(step.argv, runner.facts)
        runner.out.flush()
        code = runner.operator(argv, dict(step.env))
        if code == 0:
            return "ok"
        if step.argv[3] == "doctor":
            return f"FAIL (exit {code}): {step.fix}"
        raise Stop(
            f"{step.title}: failed (exit {code})\n  command: {shell_line(step)}\n  fix: {step.fix}"
        )
    if step.look is not None and runner.looks_done(step)[0]:
        return "exists"
    argv = fill(step.argv, runner.facts)
    stdin = None
    if step.stdin_key:
        if key is None:
            raise Stop(f"{step.title}: no Stripe key was read")
        stdin = key
    streaming = argv[1:3] == ("builds", "submit")
    runner.out.flush()
    done = runner.gcloud(argv, stdin, stream=streaming)
    if done.returncode != 0:
        raise Stop(_failure(step, argv, done))
    record.made(step.title)
    return "done"


def preconditions_commands(options: Options) -> list[Argv]:
    """The read-only gcloud commands the preconditions run, in order."""
    return [
        ("gcloud", "auth", "list", "--filter=status:ACTIVE", "--format=value(account)"),
        ("gcloud", "auth", "application-default", "print-access-token"),
        (
            "gcloud",
            "billing",
            "projects",
            "describe",
            options.project,
            "--format=value(billingEnabled)",
        ),
        ("gcloud", "secrets", "describe", STRIPE_SECRET, f"--project={options.project}"),
    ]


def preconditions(runner: Runner, options: Options, read_key: Callable[[], str]) -> str | None:
    """Check what setup needs before it changes anything; the Stripe key when it must store it."""
    if shutil.which("gcloud") is None:
        raise Stop("gcloud is not on PATH: install the Google Cloud CLI (cloud.google.com/sdk)")
    if not Path("cloudbuild.yaml").is_file():
        raise Stop("cloudbuild.yaml is not here: run setup from the repository's root")
    account_list, print_token, billing_describe, secret_describe = preconditions_commands(options)
    account = runner.gcloud(account_list)
    if account.returncode != 0 or not account.stdout.strip():
        raise Stop("gcloud has no active account. Fix: gcloud auth login")
    adc = runner.gcloud(print_token)
    if adc.returncode != 0:  # its output, a token, is never printed
        raise Stop(
            "no application-default credentials (register-webhook and doctor read Secret "
            "Manager with them). Fix: gcloud auth application-default login"
        )
    plan = build_plan(options)
    project_number = next(i for i in plan.items if isinstance(i, Fact))
    try:
        runner.fact(project_number)
    except Stop as stop:
        raise Stop(f"cannot read the project {options.project}: {stop}") from None
    billing = runner.gcloud(billing_describe)
    if billing.stdout.strip() != "True":
        raise Stop(
            f"billing is not enabled on {options.project} ({_said(billing)}). Fix: gcloud "
            f"billing projects link {options.project} --billing-account=ACCOUNT_ID"
        )
    secret = runner.gcloud(secret_describe)
    if secret.returncode == 0:
        print(f"the secret {STRIPE_SECRET} exists: its key is kept, none is read", file=runner.out)
        return None
    try:
        key = check_stripe_key_shape(read_key())
    except SecretConfigError as error:
        raise Stop(f"the Stripe key: {error}") from None
    live = is_live_key(key)
    if live and not options.frontend_url.startswith("https://"):
        raise Stop("a live key needs an https --frontend-url (Stripe returns customers there)")
    print(f"the Stripe key: {'live' if live else 'test'} mode", file=runner.out)
    return key


# --- the record ---


class Record:
    """What setup made in a project, and with which options: `.checkout-setup/PROJECT.json`."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    @classmethod
    def load(cls, project: str) -> Record:
        path = RECORD_DIR / f"{project}.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        return cls(path, {"made": [], **data})

    def made(self, title: str) -> None:
        if title not in self.data["made"]:
            self.data["made"].append(title)
            self.save()

    def save(self) -> None:
        self.path.parent.mkdir(exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1) + "\n")

    def options(self) -> Options | None:
        saved = self.data.get("options")
        return Options(**saved) if saved else None


# --- teardown ---


def run_teardown(
    options: Options,
    *,
    yes: bool,
    delete_data: bool,
    out: IO[str] = sys.stdout,
    confirm: Callable[[str], str] = input,
    operator: Operator | None = None,
) -> int:
    record = Record.load(options.project)
    options = record.options() or options
    plan = build_plan(options)
    runner = Runner(out, operator)
    if not yes:
        kept = "kept" if not delete_data else "DELETED"
        answer = confirm(
            f"Delete checkout's services, job, trigger, schedule, alerts, topics, secrets, "
            f"service accounts and their roles in {options.project}, and the Stripe webhook "
            f"endpoint? The order ledger and dead letters are {kept}. [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing was deleted", file=out)
            return 1
    facts = {item.name: item for item in plan.items if isinstance(item, Fact)}
    failed = 0
    for item in reversed(plan.items):
        if isinstance(item, Fact):
            continue
        try:
            status = _teardown_step(runner, item, facts, record, delete_data)
        except Stop as stop:
            status, failed = f"FAILED\n{stop}", failed + 1
        if status:
            print(f"{item.title}: {status}", file=out, flush=True)
    if failed:
        print(f"{failed} steps failed; run teardown again once fixed", file=out)
        return 1
    record.data["made"] = []
    record.save()
    return 0


def _teardown_step(  # noqa: PLR0911 (one return per reason to leave a step)
    runner: Runner, step: Step, facts: dict[str, Fact], record: Record, delete_data: bool
) -> str:
    needed = re.findall(r"\$\{([A-Z_]+)\}", " ".join((*step.argv, *(step.delete or ()))))
    for name in needed:
        if name != "FOUND":
            try:
                runner.fact(facts[name])
            except Stop:
                return ""  # what it names is gone already
    if step.argv[:4] == ("python", "-m", "checkout", "register-webhook"):
        url = fill(step.argv, runner.facts)[4].split("=", 1)[1]
        code = runner.operator(
            ("python", "-m", "checkout.ops.setup", "delete-webhook", url), dict(step.env)
        )
        return "Stripe endpoint deleted" if code == 0 else f"FAILED (exit {code})"
    if step.delete is None or step.look is None:
        return ""
    if step.data and not delete_data:
        return "kept (--delete-data deletes it)"
    if step.shared and step.title not in record.data["made"]:
        return "kept (setup did not make it)"
    if step.look.differs == "stop":
        try:
            exists, output = runner.looks_done(step)
        except Stop:
            return "kept (it is not as setup makes it: someone else's)"
    else:
        exists, output = runner.looks_done(step)
    if not exists:
        return ""
    found = output.strip().splitlines()[0] if output.strip() else ""
    argv = fill(step.delete, {**runner.facts, "FOUND": found})
    done = runner.gcloud(argv)
    if done.returncode != 0 and not _ABSENT.search(done.stderr):
        raise Stop(_failure(step, argv, done))
    return "removed"


def delete_webhook(url: str) -> int:
    """Delete every Stripe endpoint for `url` (teardown), with the deployment's key."""
    from checkout.config import load_settings
    from checkout.ops.command import run
    from checkout.runtime import Runtime

    async def delete(runtime: Runtime) -> int:
        for endpoint in await runtime.gateway.webhook_endpoints():
            if endpoint.get("url") == url:
                await runtime.gateway.delete_webhook_endpoint(endpoint["id"])
                print(f"deleted the Stripe webhook endpoint {endpoint['id']} for {url}")
        return 0

    return run(Runtime.from_settings(load_settings()), delete)


# --- deploy ---


def run_deploy(project: str | None, out: IO[str] = sys.stdout) -> int:
    """The README's build command with the options setup recorded."""
    records = (
        sorted(RECORD_DIR.glob("*.json")) if project is None else [RECORD_DIR / f"{project}.json"]
    )
    if len(records) != 1 or not records[0].exists():
        print(
            f"deploy: no single setup record in {RECORD_DIR}/ ({len(records)} found): pass "
            "--project, or run setup first (or the README's gcloud builds submit command)",
            file=out,
        )
        return 2
    options = Record.load(records[0].stem).options()
    if options is None:
        print(f"deploy: {records[0]} holds no options; run setup again", file=out)
        return 2
    argv = build_command(options)
    print(shell_line(Step("deploy", argv, None)), file=out, flush=True)
    return Runner(out).gcloud(argv, stream=True).returncode


# --- the command line ---


def add_commands(commands: Any) -> None:
    """Add setup, teardown and deploy to `python -m checkout`'s subcommands."""
    setup = commands.add_parser(
        "setup",
        help="the whole first deploy, idempotent (docs/deploy.md)",
        description=(
            "Make everything the deployment needs, in order, with your gcloud credentials: "
            "APIs, Firestore, topics, service accounts and roles, the Stripe key in Secret "
            "Manager, the webhook, the first build, the trigger, the schedule and the alerts; "
            "then doctor. Run it again to continue or to check: it never replaces what exists."
        ),
    )
    _where(setup)
    setup.add_argument("--frontend-url", required=True, help="where the frontend is served")
    setup.add_argument("--allowed-origins", default="", help="more CORS origins, comma-separated")
    setup.add_argument(
        "--key-file",
        default="-",
        help="a file holding the Stripe secret key, or - for standard input (the default; "
        "hidden when typed). Never an argument.",
    )
    setup.add_argument(
        "--key-source",
        choices=("set-secrets", "secret-manager"),
        default="set-secrets",
        help="how the services read the key",
    )
    setup.add_argument("--database", default="(default)", help="a named Firestore database")
    price = setup.add_mutually_exclusive_group()
    price.add_argument("--price-amount", default="", help="PRICE_AMOUNT, in minor units")
    price.add_argument("--price-id", default="", help="STRIPE_PRICE_ID (price_...)")
    setup.add_argument("--service", default="checkout-api", help="the API's service name")
    setup.add_argument("--worker-service", default="checkout-worker")
    setup.add_argument("--reconcile-job", default="checkout-reconcile")
    setup.add_argument("--deployment-id", default="", help="DEPLOYMENT_ID (default: --service)")
    setup.add_argument(
        "--notification-channel",
        default="",
        help="projects/P/notificationChannels/N for the alerts",
    )
    setup.add_argument("--dry-run", action="store_true", help="print every command, run none")
    teardown = commands.add_parser("teardown", help="remove what setup made")
    _where(teardown)
    teardown.add_argument("--yes", action="store_true", help="do not ask")
    teardown.add_argument(
        "--delete-data",
        action="store_true",
        help="also delete the order ledger and the dead letters",
    )
    deploy = commands.add_parser("deploy", help="build and deploy with setup's recorded options")
    deploy.add_argument("--project", help="the project (needed if setup ran for several)")


def _where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", required=True, help="the Google Cloud project id")
    parser.add_argument("--region", required=True, help="e.g. us-central1")


def options_from(arguments: argparse.Namespace) -> Options:
    fields = {f.name for f in dataclasses.fields(Options)}
    return Options(**{k: v for k, v in vars(arguments).items() if k in fields and v is not None})


def key_reader(path: str) -> Callable[[], str]:
    def read() -> str:
        if path != "-":
            return Path(path).read_text()
        if sys.stdin.isatty():
            return getpass.getpass("Stripe secret key (sk_… or rk_…, not echoed): ")
        return sys.stdin.read()

    return read


def main(arguments: argparse.Namespace) -> int:
    if arguments.command == "deploy":
        return run_deploy(arguments.project)
    if arguments.command == "teardown":
        options = Options(arguments.project, arguments.region, frontend_url="")
        return run_teardown(options, yes=arguments.yes, delete_data=arguments.delete_data)
    return run_setup(
        options_from(arguments), read_key=key_reader(arguments.key_file), dry_run=arguments.dry_run
    )


def _internal(argv: Sequence[str]) -> int:
    # `python -m checkout.ops.setup delete-webhook URL`: teardown's Stripe step, in its own process
    # with the deployment's environment, like register-webhook.
    if len(argv) != 2 or argv[0] != "delete-webhook":
        print("usage: python -m checkout.ops.setup delete-webhook URL", file=sys.stderr)
        return 2
    return delete_webhook(argv[1])


if __name__ == "__main__":
    sys.exit(_internal(sys.argv[1:]))
