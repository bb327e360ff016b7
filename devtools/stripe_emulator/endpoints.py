"""Webhook endpoints (/v1/webhook_endpoints): where events go, which ones, in which API version."""

from __future__ import annotations

import re
import threading
import time
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from devtools.stripe_emulator.form_params import parse_bool, parse_metadata, reject_unknown
from devtools.stripe_emulator.state import StripeEmulatorError, _invalid, _missing, _random_id

CREATE_PARAMS = frozenset(
    {"api_version", "connect", "description", "enabled_events", "expand", "metadata", "url"}
)
# No api_version: Stripe renders an endpoint's events in one version for its whole life, so
# changing it means a new endpoint.
UPDATE_PARAMS = frozenset(
    {"description", "disabled", "enabled_events", "expand", "metadata", "url"}
)
_EVENT_TYPE = re.compile(r"[a-z_]+(\.[a-z0-9_]+)+")
_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(\.[a-z_]+)?")


class Target(NamedTuple):
    """Where one event goes: an endpoint (`we_…`), set_webhook's target, or a one-off URL."""

    key: str
    endpoint: str | None
    url: str
    secret: str | list[str] | None
    api_version: str | None  # None: the account's default version


def _no_such_endpoint(endpoint_id: str) -> StripeEmulatorError:
    return StripeEmulatorError(
        404,
        f"No such webhook endpoint: '{endpoint_id}'",
        code="resource_missing",
        param="id",
    )


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
        reject_unknown(params, CREATE_PARAMS)
        if params.get("url") is None:
            raise _missing("url")
        if params.get("enabled_events") is None:
            raise _missing("enabled_events")
        api_version = params.get("api_version")
        if api_version is not None and not (
            isinstance(api_version, str) and _API_VERSION.fullmatch(api_version)
        ):
            raise _invalid(f"Invalid api_version: {api_version}", "api_version")
        endpoint = {
            "id": _random_id("we_"),
            "object": "webhook_endpoint",
            "api_version": api_version,
            "application": None,
            "created": int(time.time()),
            "description": _description(params.get("description")),
            "enabled_events": _enabled_events(params["enabled_events"]),
            "livemode": livemode,
            "metadata": parse_metadata(params.get("metadata")),
            "status": "enabled",
            "url": _url(params["url"], livemode),
        }
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
        reject_unknown(params, UPDATE_PARAMS)
        changes: dict[str, Any] = {}
        if "url" in params:
            changes["url"] = _url(params["url"], livemode)
        if "enabled_events" in params:
            changes["enabled_events"] = _enabled_events(params["enabled_events"])
        if "description" in params:
            changes["description"] = _description(params["description"])
        if "disabled" in params:
            disabled = parse_bool(params["disabled"], "disabled")
            changes["status"] = "disabled" if disabled else "enabled"
        with self._lock:
            endpoint = self._visible(endpoint_id, livemode)
            if "metadata" in params:
                # Stripe merges metadata on update; an empty value removes its key.
                raw = params["metadata"]
                merged = {**endpoint["metadata"], **(raw if isinstance(raw, dict) else {})}
                changes["metadata"] = parse_metadata(merged if raw != "" else "")
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
            raise _no_such_endpoint(endpoint_id)
        return endpoint


def _url(value: Any, livemode: bool) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise _invalid(f"Invalid URL: {value}", "url", code="url_invalid")
    if livemode and parts.scheme != "https":
        raise _invalid("Invalid URL: live mode webhook endpoints must use https.", "url")
    return str(value)


def _enabled_events(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise _invalid("Invalid array", "enabled_events")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not (item == "*" or _EVENT_TYPE.fullmatch(item)):
            raise _invalid(
                f"Invalid enabled_events[{index}]: {item!r} is not an event type or '*'.",
                f"enabled_events[{index}]",
            )
    return list(dict.fromkeys(value))


def _description(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _invalid("Invalid string", "description")
    return value
