"""The operator's commands: `python -m checkout reconcile | register-webhook | doctor`, and
`setup | teardown | deploy` (gcloud, no settings). Each builds the runtime's parts from the
deployment's settings, nothing of its own: docs/operations.md, docs/deploy.md."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from checkout.config import ConfigError, load_settings
from checkout.errors import StripeFailure
from checkout.keys import SecretError
from checkout.logs import setup_logging
from checkout.ops.command import run
from checkout.ops.doctor import DoctorParts, doctor
from checkout.ops.local_operator import DOCTOR_HELP, local_checks, reconcile_warning
from checkout.ops.reconcile import DEFAULT_DAYS, MAX_DAYS, ReconcileParts, reconcile
from checkout.ops.register_webhook import SetupError, register_webhook
from checkout.ops.setup import add_commands as setup_commands
from checkout.ops.setup import main as setup_main
from checkout.runtime import Runtime


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    if arguments.command in ("setup", "teardown", "deploy"):
        return setup_main(arguments)  # gcloud's commands: no settings, no service
    setup_logging()
    try:
        runtime = Runtime.from_settings(load_settings())
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    return run(runtime, lambda runtime: _run(arguments, runtime))


async def _run(arguments: argparse.Namespace, runtime: Runtime) -> int:
    if arguments.command == "reconcile":
        warning = reconcile_warning(runtime.ledger, runtime.settings)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        summary = await reconcile(ReconcileParts.from_runtime(runtime), arguments.days)
        print(json.dumps(summary.record()), flush=True)
        return 0 if summary.ok else 1
    if arguments.command == "register-webhook":
        return await _register(runtime, arguments.url, arguments.secret)
    return await _doctor(DoctorParts.from_runtime(runtime), arguments.url, local=arguments.local)


async def _register(runtime: Runtime, url: str, secret: str | None) -> int:
    try:
        done = await register_webhook(runtime.gateway, runtime.settings, url, secret)
    except SetupError as error:
        print(f"register-webhook: {error}", file=sys.stderr)
        return 2
    except (StripeFailure, SecretError) as error:
        print(f"register-webhook failed: {error}", file=sys.stderr)
        return 1
    print(f"webhook endpoint {done.endpoint_id} {done.action} for {url}")
    if done.secret_version:
        print(f"signing secret stored as {done.secret_version}")
    elif done.secret:
        print(f"signing secret (shown once; set it as STRIPE_WEBHOOK_SECRET): {done.secret}")
    return 0


async def _doctor(parts: DoctorParts, url: str, *, local: bool) -> int:
    checks = await doctor(parts, url)
    if local:
        checks = local_checks(checks, url)
    for check in checks:
        print(check.line())
    return 0 if all(check.ok for check in checks) else 1


def _days(raw: str) -> int:
    days = int(raw)
    if not 1 <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"--days must be 1 to {MAX_DAYS}")
    return days


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m checkout", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    recon = commands.add_parser("reconcile", help="apply missed payments and events, once")
    recon.add_argument("--days", type=_days, default=DEFAULT_DAYS, help="window (1-30, default 3)")
    register = commands.add_parser("register-webhook", help="create or update the endpoint")
    register.add_argument("--url", required=True, help="https://…/api/checkout/webhook")
    register.add_argument("--secret", help="Secret Manager secret for the signing secret")
    check = commands.add_parser(
        "doctor",
        help="check the deployment's configuration",
        description=DOCTOR_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("--url", required=True, help="the webhook URL Stripe should call")
    check.add_argument(
        "--local",
        action="store_true",
        help="beside `make run` (make doctor): check its emulator setup, not a Stripe endpoint",
    )
    setup_commands(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
