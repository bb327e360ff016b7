"""Webhook delivery: events signed and posted the way Stripe sends them."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

_WEBHOOK_USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
# Deliveries go to loopback; an http_proxy in the environment must not intercept them.
_webhook_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _Event(Protocol):
    """An event to deliver (events.LoggedEvent); an empty payload means there is none."""

    payload: bytes


class _NoEvent:
    payload = b""


_NO_EVENT: _Event = _NoEvent()


def _post_event(url: str, secret: str | Sequence[str] | None, payload: bytes) -> tuple[int, str]:
    """POST a signed event as Stripe does; errors come back as (0, text), never raised."""
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": _WEBHOOK_USER_AGENT,
    }
    if secret:  # without a secret the event goes unsigned, to test that it is refused
        headers["Stripe-Signature"] = sign_payload(payload, secret)
    request = urllib.request.Request(url, data=payload, headers=headers, method="POST")
    try:
        with _webhook_opener.open(request, timeout=10) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")
    except (OSError, ValueError) as err:
        return 0, f"{type(err).__name__}: {err}"


def snapshot_event(session: dict[str, Any], kind: str, event_id: str | None = None) -> bytes:
    """A snapshot event as Stripe sends it around `session`, to sign and post by hand."""
    event = {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(time.time()),
        "data": {"object": session},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
    }
    return json.dumps(event, indent=2).encode()


def sign_payload(payload: bytes, secret: str | Sequence[str], timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header value for `payload`, exactly as Stripe computes it.

    While an endpoint's secret is being rolled, Stripe signs with every active secret: one
    `v1=` per secret, in one header. Pass a list of secrets for that.
    """
    timestamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{timestamp}.".encode() + payload
    secrets = [secret] if isinstance(secret, str) else list(secret)
    signatures = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets]
    return ",".join([f"t={timestamp}", *(f"v1={signature}" for signature in signatures)])
