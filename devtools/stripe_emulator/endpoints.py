"""Webhook endpoints (/v1/webhook_endpoints): where events go, which ones, in which API version.

Parameters arrive checked (params.py, rules.py); an endpoint's API version never changes."""

from __future__ import annotations

import threading
import time
from typing import Any, NamedTuple

import stripe

from devtools.stripe_emulator import shapes
from devtools.stripe_emulator.state import _metadata, _no_such, _random_id


class Target(NamedTuple):
    """Where one event goes: an endpoint (`we_…`), set_webhook's target, or a one-off URL."""

    key: str
    endpoint: str | None
    url: str
    secret: str | list[str] | None
    api_version: str | None  # None: the account's default version


class WebhookEndpoints:
    """The account's webhook endpoints; each keeps the signing secret it was created with."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: dict[str, dict[str, Any]] = {}
        self._secrets: dict[str, str] = {}

    def clear(self) -> None:
        with self._lock:
            self._endpoints.clear()
            self._secrets.clear()

    def create(self, params: dict[str, Any], livemode: bool) -> dict[str, Any]:
        """POST /v1/webhook_endpoints; only this answer carries the `secret`."""
        endpoint = shapes.build(
            stripe.WebhookEndpoint,
            {
                "id": _random_id("we_"),
                "object": "webhook_endpoint",
                "api_version": params.get("api_version"),
                "created": int(time.time()),
                "description": params.get("description") or None,
                "enabled_events": list(dict.fromkeys(params["enabled_events"])),
                "livemode": livemode,
                "metadata": _metadata(params.get("metadata")),
                "status": "enabled",
                "url": params["url"],
            },
        )
        secret = _random_id("whsec_", 32)
        with self._lock:
            self._endpoints[endpoint["id"]] = endpoint
            self._secrets[endpoint["id"]] = secret
        return {**endpoint, "secret": secret}

    def retrieve(self, endpoint_id: str, livemode: bool) -> dict[str, Any]:
        with self._lock:
            return dict(self._visible(endpoint_id, livemode))

    def update(self, endpoint_id: str, params: dict[str, Any], livemode: bool) -> dict[str, Any]:
        """POST /v1/webhook_endpoints/{id}: url, enabled_events, description, metadata, disabled."""
        changes: dict[str, Any] = {}
        if "url" in params:
            changes["url"] = params["url"]
        if "enabled_events" in params:
            changes["enabled_events"] = list(dict.fromkeys(params["enabled_events"]))
        if "description" in params:
            changes["description"] = params["description"] or None
        if "disabled" in params:
            changes["status"] = "disabled" if params["disabled"] == "true" else "enabled"
        with self._lock:
            endpoint = self._visible(endpoint_id, livemode)
            if "metadata" in params:
                # Stripe merges metadata on update; an empty value removes its key, and an empty
                # string for the whole hash removes every key.
                raw = params["metadata"]
                merged = {**endpoint["metadata"], **raw} if isinstance(raw, dict) else {}
                changes["metadata"] = _metadata(merged)
            endpoint.update(changes)
            return dict(endpoint)

    def delete(self, endpoint_id: str, livemode: bool) -> dict[str, Any]:
        with self._lock:
            self._visible(endpoint_id, livemode)
            del self._endpoints[endpoint_id]
            del self._secrets[endpoint_id]
        return {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True}

    def newest_first(self, livemode: bool) -> list[dict[str, Any]]:
        with self._lock:
            found = [dict(e) for e in self._endpoints.values() if e["livemode"] == livemode]
        return found[::-1]  # created in insertion order

    def targets_for(self, event_type: str, livemode: bool) -> list[Target]:
        """The enabled endpoints of this mode that subscribe to `event_type`."""
        with self._lock:
            return [
                self._target(endpoint)
                for endpoint in self._endpoints.values()
                if endpoint["livemode"] == livemode
                and endpoint["status"] == "enabled"
                and ("*" in endpoint["enabled_events"] or event_type in endpoint["enabled_events"])
            ]

    def still_enabled(self, endpoint_id: str) -> Target | None:
        """The endpoint as it is now, if it still takes events: a retry goes to its current URL."""
        with self._lock:
            endpoint = self._endpoints.get(endpoint_id)
            if endpoint is None or endpoint["status"] != "enabled":
                return None
            return self._target(endpoint)

    def _target(self, endpoint: dict[str, Any]) -> Target:
        return Target(
            endpoint["id"],
            endpoint["id"],
            endpoint["url"],
            self._secrets[endpoint["id"]],
            endpoint["api_version"],
        )

    def _visible(self, endpoint_id: str, livemode: bool) -> dict[str, Any]:
        endpoint = self._endpoints.get(endpoint_id)
        if endpoint is None or endpoint["livemode"] != livemode:
            raise _no_such("webhook endpoint", endpoint_id)
        return endpoint
