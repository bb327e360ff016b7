"""Every event the emulator emits: kept, listed (GET /v1/events), delivered, and retried.

As Stripe does, with the retry delays in seconds (Stripe's take hours): docs/emulator.md."""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from devtools.stripe_emulator.endpoints import Target, WebhookEndpoints
from devtools.stripe_emulator.listing import page, parse_created
from devtools.stripe_emulator.state import (
    LATEST_API_VERSION,
    RENAMED_UI_MODES_SINCE,
    UI_MODE_NEW_TO_OLD,
    StripeEmulatorError,
    _invalid,
    _random_id,
    _to_json,
)
from devtools.stripe_emulator.webhooks import _post_event

# Stripe does not publish its intervals: "up to 3 days with exponential backoff" in live mode,
# "three times over a few hours" in a sandbox. These are the emulator's reading of that, in
# seconds; `retry_schedule(factor)` divides them, so 3600 turns hours into seconds.
STRIPE_TEST_MODE_RETRIES: tuple[float, ...] = (3600, 2 * 3600, 4 * 3600)
STRIPE_LIVE_MODE_RETRIES: tuple[float, ...] = (
    300, 1800, 3600, 2 * 3600, 5 * 3600, 10 * 3600, 12 * 3600, 12 * 3600, 12 * 3600, 12 * 3600,
)  # fmt: skip
EVENT_LOG_LIMIT = 10_000  # Stripe keeps 30 days; a long benchmark must not grow without bound
DELIVERY_LOG_LIMIT = 1000
SET_WEBHOOK_KEY = "set_webhook"  # the target of set_webhook(), which takes every event


def retry_schedule(factor: float, *, livemode: bool = False) -> tuple[float, ...]:
    """Stripe's retry delays (test or live mode) divided by `factor`: 3600 makes hours seconds."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
        raise _invalid("factor must be a number > 0", "factor")
    schedule = STRIPE_LIVE_MODE_RETRIES if livemode else STRIPE_TEST_MODE_RETRIES
    return tuple(delay / factor for delay in schedule)


def check_schedule(schedule: Any) -> tuple[float, ...]:
    if not isinstance(schedule, (list, tuple)) or not all(
        isinstance(d, (int, float)) and not isinstance(d, bool) and d >= 0 for d in schedule
    ):
        raise _invalid("schedule must be a list of delays in seconds, each >= 0", "schedule")
    return tuple(float(d) for d in schedule)


class LoggedEvent:
    """One event: its JSON as first rendered, its targets, and every delivery attempt."""

    __slots__ = (
        "attempts", "created", "given_up", "id", "livemode", "object_id", "payload",
        "payloads", "session_id", "succeeded", "targets", "type",
    )  # fmt: skip

    def __init__(self, event: dict[str, Any], session_id: str | None) -> None:
        self.id: str = event["id"]
        self.type: str = event["type"]
        self.created: int = event["created"]
        self.livemode: bool = event["livemode"]
        self.object_id: str = event["data"]["object"]["id"]
        self.session_id = session_id
        self.payload = _to_json(event)
        self.payloads: dict[str | None, bytes] = {}  # by API version, so retries resend bytes
        self.targets: dict[str, Target] = {}
        self.succeeded: set[str] = set()
        self.given_up: set[str] = set()
        self.attempts: list[dict[str, Any]] = []

    def delivered(self) -> bool:
        """Stripe's `delivery_success`: no target still pending or failed."""
        return self.succeeded >= set(self.targets)

    def render(self) -> dict[str, Any]:
        event = json.loads(self.payload)
        event["pending_webhooks"] = len(set(self.targets) - self.succeeded)
        return event

    def payload_for(self, target: Target) -> bytes:
        """The event in the target's API version (the account's when it has none)."""
        version = target.api_version or LATEST_API_VERSION
        if version == LATEST_API_VERSION:
            return self.payload
        if version not in self.payloads:
            event = json.loads(self.payload)
            event["api_version"] = version
            shown = event["data"]["object"]
            if version[:10] < RENAMED_UI_MODES_SINCE and shown.get("object") == "checkout.session":
                shown["ui_mode"] = UI_MODE_NEW_TO_OLD.get(shown["ui_mode"], shown["ui_mode"])
            self.payloads[version] = _to_json(event)
        return self.payloads[version]


class _RetryQueue:
    """Delayed calls on one background thread; clear() drops them, close() stops the thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._generation = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def schedule(self, delay: float, call: Callable[[], None]) -> None:
        with self._cond:
            if self._closed:
                return
            due = time.monotonic() + delay
            heapq.heappush(self._heap, (due, next(self._order), self._generation, call))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="stripe-emulator-retries", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def clear(self) -> None:
        with self._cond:
            self._heap.clear()
            self._generation += 1  # a retry already running will not schedule another
            self._cond.notify()

    def current(self, generation: int) -> bool:
        with self._cond:
            return generation == self._generation and not self._closed

    @property
    def generation(self) -> int:
        with self._cond:
            return self._generation

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._generation += 1
            thread, self._thread = self._thread, None
            self._cond.notify()
        if thread is not None:
            thread.join(timeout=15)  # at most one delivery (10 s timeout) is in flight

    def reopen(self) -> None:
        with self._cond:
            self._closed = False

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
                _, _, generation, call = heapq.heappop(self._heap)
                if generation != self._generation:
                    continue
            call()


class EventBus:
    """The event log, the targets each event goes to, deliveries and their retries."""

    def __init__(self, retry_schedule: Sequence[float] = ()) -> None:
        self._lock = threading.Lock()
        self._default_schedule = check_schedule(tuple(retry_schedule))
        self._schedule = self._default_schedule
        self._events: dict[str, LoggedEvent] = {}
        self._deliveries: list[dict[str, Any]] = []
        self.retries = _RetryQueue()
        self.endpoints = WebhookEndpoints()
        self.webhook: Target | None = None  # set_webhook()'s target

    # --- configuration and lifecycle ---

    def set_webhook(self, url: str | None, secret: str | list[str] | None) -> None:
        with self._lock:
            self.webhook = Target(SET_WEBHOOK_KEY, None, url, secret, None) if url else None

    def set_retry_schedule(self, schedule: Sequence[float]) -> tuple[float, ...]:
        checked = check_schedule(schedule)
        with self._lock:
            self._schedule = checked
        return checked

    @property
    def retry_delays(self) -> tuple[float, ...]:
        with self._lock:
            return self._schedule

    def clear(self) -> None:
        """Forget events, deliveries, endpoints and pending retries; set_webhook's target stays."""
        self.retries.clear()
        self.endpoints.clear()
        with self._lock:
            self._events.clear()
            self._deliveries.clear()
            self._schedule = self._default_schedule

    # --- events ---

    def emit(
        self,
        event_type: str,
        obj: dict[str, Any],
        *,
        session_id: str | None,
        previous_attributes: dict[str, Any] | None = None,
        request: tuple[str | None, str | None] = (None, None),
        event_id: str | None = None,
        targets: list[Target] | None = None,
        livemode: bool | None = None,
    ) -> LoggedEvent:
        """Log a new event; it goes to `targets`, by default every subscribed one."""
        livemode = bool(obj.get("livemode")) if livemode is None else livemode
        if targets is None:
            targets = self.endpoints.targets_for(event_type, livemode)
            with self._lock:
                if self.webhook is not None:
                    targets.insert(0, self.webhook)
        data: dict[str, Any] = {"object": obj}
        if previous_attributes is not None:
            data["previous_attributes"] = previous_attributes
        event = {
            "id": event_id or _random_id("evt_"),
            "object": "event",
            "api_version": LATEST_API_VERSION,
            "created": int(time.time()),
            "data": data,
            "livemode": livemode,
            "pending_webhooks": len(targets),
            "request": {"id": request[0], "idempotency_key": request[1]},
            "type": event_type,
        }
        logged = LoggedEvent(event, session_id)
        logged.targets = {target.key: target for target in targets}
        with self._lock:
            self._events[logged.id] = logged
            if len(self._events) > EVENT_LOG_LIMIT:
                del self._events[next(iter(self._events))]
        return logged

    def get(self, event_id: str) -> LoggedEvent | None:
        with self._lock:
            return self._events.get(event_id)

    def retrieve(self, event_id: str, livemode: bool) -> dict[str, Any]:
        with self._lock:
            event = self._events.get(event_id)
            if event is None or event.livemode != livemode:
                raise StripeEmulatorError(
                    404, f"No such event: '{event_id}'", code="resource_missing", param="id"
                )
            return event.render()

    def list_page(self, params: dict[str, Any], livemode: bool) -> dict[str, Any]:
        """GET /v1/events, its parameters checked: newest first, by type or types[], created and
        delivery_success."""
        created = parse_created(params.get("created"))
        success = params.get("delivery_success")
        delivered = None if success is None else success == "true"
        one_type, types = params.get("type"), params.get("types")
        wanted = None if one_type is None and types is None else [one_type] if one_type else types

        with self._lock:  # delivery threads update the events' states under this lock
            events = {e.id: e for e in reversed(self._events.values()) if e.livemode == livemode}

            def keep(item: dict[str, Any]) -> bool:
                event = events[item["id"]]
                return (
                    created(event.created)
                    and (delivered is None or event.delivered() == delivered)
                    and (wanted is None or any(_type_matches(event.type, w) for w in wanted))
                )

            listing = page([{"id": i} for i in events], keep, params, "/v1/events", "event")
            listing["data"] = [events[item["id"]].render() for item in listing["data"]]
        return listing

    # --- delivery ---

    def deliver(self, event: LoggedEvent) -> None:
        """First attempt to each of the event's targets, now; failures are retried later."""
        for key in list(event.targets):
            self._attempt(event, key, 1, self.retries.generation)

    def send_to(
        self, event: LoggedEvent, url: str, secret: str | list[str] | None
    ) -> tuple[int, str]:
        """A one-off (re)delivery to `url`; it counts for the target with that URL, if any."""
        target = next((t for t in event.targets.values() if t.url == url), None)
        target = target or Target(f"url:{url}", None, url, secret, None)
        status, body = _post_event(url, secret, event.payload_for(target))
        self._record(event, target._replace(secret=secret), status, body, attempt=0)
        return status, body

    def _attempt(self, event: LoggedEvent, key: str, attempt: int, generation: int) -> None:
        target = event.targets[key]
        if attempt > 1:
            # Stripe stops retrying for an endpoint that was disabled or deleted meanwhile.
            current = self._current_target(target)
            if current is None or not self.retries.current(generation):
                with self._lock:
                    event.given_up.add(key)
                return
            target = current
        status, body = _post_event(target.url, target.secret, event.payload_for(target))
        self._record(event, target, status, body, attempt)
        if 200 <= status < 300:
            return
        delays = self.retry_delays
        with self._lock:
            logged = self._events.get(event.id) is event
            if attempt > len(delays) or not logged:
                event.given_up.add(key)
                return
        self.retries.schedule(
            delays[attempt - 1], lambda: self._attempt(event, key, attempt + 1, generation)
        )

    def _current_target(self, target: Target) -> Target | None:
        if target.endpoint is not None:
            return self.endpoints.still_enabled(target.endpoint)
        if target.key == SET_WEBHOOK_KEY:
            with self._lock:
                return self.webhook
        return target

    def _record(
        self, event: LoggedEvent, target: Target, status: int, body: str, attempt: int
    ) -> None:
        record = {
            "event_id": event.id,
            "type": event.type,
            "session_id": event.session_id,
            "object_id": event.object_id,
            "endpoint": target.endpoint,
            "api_version": target.api_version or LATEST_API_VERSION,  # the payload's
            "url": target.url,
            "attempt": attempt,  # 0 for a one-off send through deliver_event()
            "status": status,
            "body": body[:1000],
            "at": time.time(),
        }
        with self._lock:
            if self._events.get(event.id) is not event:
                return  # reset() meanwhile: an attempt from before must not show up after it
            event.attempts.append(record)
            if 200 <= status < 300 and target.key in event.targets:
                event.succeeded.add(target.key)
            self._deliveries.append(record)
            del self._deliveries[:-DELIVERY_LOG_LIMIT]

    def deliveries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(record) for record in self._deliveries]

    def event_deliveries(self, event_id: str) -> dict[str, Any]:
        """An event's targets, attempts and state, for tests: `delivered`, `pending`, `failed`."""
        with self._lock:
            event = self._events.get(event_id)
            if event is None:
                raise StripeEmulatorError(
                    404, f"No such event: '{event_id}'", code="resource_missing", param="id"
                )
            pending = set(event.targets) - event.succeeded - event.given_up
            return {
                "id": event.id,
                "type": event.type,
                "delivered": event.delivered(),
                "targets": sorted(event.targets),
                "succeeded": sorted(event.succeeded),
                "failed": sorted(event.given_up - event.succeeded),
                "pending": sorted(pending),
                "attempts": [dict(a) for a in event.attempts],
            }


def _type_matches(event_type: str, wanted: str) -> bool:
    """`type` may end in `.*` (`charge.dispute.*`), as on Stripe."""
    if wanted.endswith(".*"):
        return event_type.startswith(wanted[:-1])
    return event_type == wanted
