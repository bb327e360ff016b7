"""The operator commands beside `make run`: what `doctor --local` checks, and `reconcile`'s warning.

There the emulator delivers events to the webhook: no endpoint to register (docs/deploy.md)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from checkout.config import Settings
from checkout.ops.doctor import Check
from checkout.orders.ledger import Ledger

# What `doctor --help` lists: every check, and the settings it reads (checkout/ops/doctor.py).
DOCTOR_HELP = """\
One line per check, `ok` or `FAIL` with what to do; exit 0 only when every check passes.

checks:
  stripe key            the key (STRIPE_SECRET_KEY, or STRIPE_SECRET_NAME in Secret Manager)
                        works, and its mode (test or live)
  webhook endpoint      Stripe has one enabled endpoint for --url (one endpoint, webhook enabled),
                        with every handled event (webhook events) and the SDK's API version
                        (webhook api version)
  webhook secret        a signing secret is configured
  cors                  FRONTEND_URL's origin is allowed
  return url            the return URL is https (or the key a test key)
  ledger                the order ledger answers (firestore on Cloud Run)
  order topic           the Pub/Sub topic answers (needed on Cloud Run)
  worker subscription   the topic has a push subscription (the Eventarc trigger to fulfil_order)
  dead-letter policy    that subscription dead-letters, to a topic that has a subscription
  ack deadline          that subscription's ack deadline is at least the worker's 600 s timeout
  undelivered changes   no published change undelivered past UNDELIVERED_GRACE_SECONDS
  dead letters          the dead-letter subscription's backlog (read, never consumed)
with --local, beside `make run` (make doctor), instead of the endpoint checks:
  local webhook         the function at --url answers and refuses an unsigned event (400)
                        (the emulator delivers events there itself: nothing to register)

settings read (the deployment's environment, as the service reads them):
  STRIPE_SECRET_KEY | STRIPE_SECRET_NAME, STRIPE_WEBHOOK_SECRET | STRIPE_WEBHOOK_SECRET_NAME,
  GOOGLE_CLOUD_PROJECT, SECRET_MANAGER_ENDPOINT, STRIPE_API_BASE, FRONTEND_URL, ALLOWED_ORIGINS,
  RETURN_PATH, ORDER_LEDGER, FIRESTORE_DATABASE, DEPLOYMENT_ID, ORDER_EVENTS_TOPIC,
  UNDELIVERED_GRACE_SECONDS, K_SERVICE (Cloud Run)
"""

# The checks that are about a Stripe Dashboard endpoint, which `make run` does not have.
_ENDPOINT_CHECKS = (
    "webhook endpoint",
    "one endpoint",
    "webhook enabled",
    "webhook events",
    "webhook api version",
)


def local_checks(checks: list[Check], url: str) -> list[Check]:
    """doctor's checks with the endpoint ones replaced by what `make run` sets up."""
    kept = [c for c in checks if c.name not in _ENDPOINT_CHECKS]
    at = next((i for i, c in enumerate(checks) if c.name in _ENDPOINT_CHECKS), len(kept))
    return [*kept[:at], _local_webhook(url), *kept[at:]]


def _local_webhook(url: str) -> Check:
    if urlsplit(url).scheme not in ("http", "https"):
        return Check("local webhook", False, f"--url must be http(s), not {url[:60]!r}")
    request = urllib.request.Request(  # noqa: S310 (http(s) only, checked above)
        url,
        data=b"{}",
        headers={"Content-Type": "application/json", "Stripe-Signature": "t=0,v1=unsigned"},
        method="POST",
    )
    start = "is `make run` running? start it, or pass its --url"
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (http(s) only)
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    except OSError as error:
        return Check("local webhook", False, f"{url} did not answer ({error}); {start}")
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        code = None
    if status == 400 and code == "invalid_signature":
        return Check(
            "local webhook",
            True,
            f"{url} verifies signatures; the emulator delivers events there (nothing to register)",
        )
    return Check(
        "local webhook", False, f"{url} answered {status} {code or ''}, not 400 invalid_signature"
    )


def reconcile_warning(ledger: Ledger, settings: Settings) -> str | None:
    """Why a local `reconcile` may find nothing the server recorded, or None."""
    if ledger.name != "memory" or settings.on_cloud_run:
        return None
    return (
        "reconcile: ORDER_LEDGER is memory, so this command has a ledger of its own, empty, and "
        "not the one of a running server (`make run`): it will re-apply what Stripe holds, and "
        "what it records is gone when it exits. To reconcile a server's ledger, run both with "
        "ORDER_LEDGER=firestore (make firestore-emulator, docs/ledger.md)."
    )
