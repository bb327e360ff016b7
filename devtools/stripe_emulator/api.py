"""The emulator itself: sessions in memory, Stripe's /v1 API, and the /_emulator/ test helpers."""

from __future__ import annotations

import base64
import hmac
import json
import random
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from email.message import Message
from typing import Any, NamedTuple
from urllib.parse import unquote

from devtools.loopback import Running
from devtools.stripe_emulator import browser, expansions, params, resources, rules, shapes
from devtools.stripe_emulator.endpoints import Target
from devtools.stripe_emulator.events import EventBus, LoggedEvent, check_schedule, retry_schedule
from devtools.stripe_emulator.idempotency import IdempotencyStore
from devtools.stripe_emulator.payments import Change, Payments
from devtools.stripe_emulator.server import _Server
from devtools.stripe_emulator.state import (
    DEFAULT_FAULTS,
    EVENT_TYPES,
    FAULT_MODES,
    IDEMPOTENCY_KEY_MAX_LENGTH,
    LATEST_API_VERSION,
    PAYMENT_STATUSES,
    RENAMED_UI_MODES_SINCE,
    SECRET_KEY_PREFIXES,
    StripeEmulatorError,
    _apply_event,
    _build_session,
    _completed_fields,
    _invalid,
    _no_such,
    _random_id,
    _Response,
    _Session,
    _to_json,
    decode_form,
    settle_delayed_payment,
)
from devtools.stripe_emulator.webhooks import _NO_EVENT, _Event


class StripeEmulator(Running):
    """Stripe's Checkout Sessions API in memory, served over HTTP from a background thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_ms: float = 0,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        checkout_api: str = "http://127.0.0.1:8080",
        retry_schedule: Sequence[float] = (),
    ) -> None:
        self.host = host
        self.checkout_api = checkout_api  # where the /demo page sends its API calls
        self.port = port
        self._base_latency_ms = float(latency_ms)
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._release_hangs = threading.Event()
        self._prices: dict[str, dict[str, Any]] = {}
        # Every event is kept and listed; failed deliveries are retried after these delays
        # (seconds; none by default, so a test sees exactly the deliveries it caused).
        self._bus = EventBus(retry_schedule)
        self._bus.set_webhook(webhook_url, webhook_secret)
        self._clear_state()

    def _clear_state(self) -> None:
        self._sessions: dict[str, _Session] = {}
        self._products: dict[str, dict[str, Any]] = {}  # the line items' products, by id
        self._idempotency = IdempotencyStore(self._lock)
        self._calls = dict.fromkeys(
            ("total", "create_session", "retrieve_session", "expire_session", "other"), 0
        )
        self._calls.update(dict.fromkeys(resources.ENDPOINTS, 0))
        self._sessions_created = 0
        self._connections_opened = 0
        self._faults = {**DEFAULT_FAULTS, "latency_ms": self._base_latency_ms}
        self._rng = random.Random()
        self._valid_keys: frozenset[str] | None = None
        self._payments = Payments()
        self._bus.clear()

    # --- lifecycle ---

    def start(self) -> StripeEmulator:
        self._bus.retries.reopen()
        # Reading the SDK's types takes a moment: before listening, not in the first request.
        params.warm()
        shapes.warm()
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = self._server.serve_in_thread("stripe-emulator")
        return self

    def stop(self) -> None:
        self._bus.retries.close()  # pending retries are dropped, as the process would drop them
        if self._server is None:
            return
        self._release_hangs.set()
        self._server.stop(self._thread)
        self._server = self._thread = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    # --- Python helpers (the /_emulator/ endpoints call these) ---

    def reset(self) -> None:
        """Forget sessions and their payments, idempotency keys, counters, faults, events,
        webhook endpoints, pending retries and the key allowlist.

        Prices, set_webhook()'s target and the constructor's latency and retry schedule are
        configuration, and stay.
        """
        self._idempotency.release()  # held requests answer now
        with self._lock:
            self._clear_state()
            self._release_hangs.set()  # requests hanging from the last test answer now
            self._release_hangs = threading.Event()

    def calls(self) -> dict[str, int]:
        """Requests that reached /v1 by endpoint, plus `sessions_created` (replays excluded).

        The session endpoints and `other` are always there; the others (`list_sessions`,
        `create_refund`, `list_events`, … as resources.ROUTES names them) once called.
        """
        with self._lock:
            calls = {
                name: count
                for name, count in self._calls.items()
                if count or name not in resources.ENDPOINTS
            }
            return {**calls, "sessions_created": self._sessions_created}

    def connections_opened(self) -> int:
        """TCP connections accepted since the last reset: shows whether clients keep them alive."""
        with self._lock:
            return self._connections_opened

    def _count_connection(self) -> None:
        with self._lock:
            self._connections_opened += 1

    def faults(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._faults)

    def idempotency_keys(self) -> list[str]:
        """The Idempotency-Key values Stripe has stored, in the order it first saw them."""
        return self._idempotency.keys()

    def executing_keys(self) -> list[str]:
        """Keys whose first request is executing now (see `hold_executions`)."""
        return self._idempotency.executing()

    def hold_executions(self) -> None:
        """Keyed POSTs stop mid-execution until `release_executions`: a duplicate then gets 409."""
        self._idempotency.hold()

    def release_executions(self) -> None:
        self._idempotency.release()

    def set_faults(self, **fields: Any) -> dict[str, Any]:
        """Update the given fault fields (the others keep their values); return the result."""
        unknown = set(fields) - set(DEFAULT_FAULTS)
        if unknown:
            raise _invalid(f"Unknown fault fields: {', '.join(sorted(unknown))}")
        faults = {**self.faults(), **fields}
        if faults["mode"] not in FAULT_MODES:
            raise _invalid(f"mode must be one of {', '.join(FAULT_MODES)}", "mode")
        for name in ("latency_ms", "probability", "hang_seconds"):
            value = faults[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise _invalid(f"{name} must be a number >= 0", name)
            faults[name] = float(value)
        if faults["probability"] > 1:
            raise _invalid("probability must be between 0 and 1", "probability")
        for name in ("remaining", "seed"):
            value = faults[name]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise _invalid(f"{name} must be an integer or null", name)
        if faults["remaining"] is not None and faults["remaining"] < 0:
            raise _invalid("remaining must be >= 0", "remaining")
        with self._lock:
            self._faults = faults
            if "seed" in fields and faults["seed"] is not None:
                self._rng = random.Random(faults["seed"])
            if faults["remaining"] == 0:
                self._faults = {**DEFAULT_FAULTS, "latency_ms": self._base_latency_ms}
            return dict(self._faults)

    def set_valid_keys(self, keys: list[str] | None) -> None:
        """Accept only these API keys from now on (None accepts any well-formed key)."""
        if keys is not None and not all(isinstance(key, str) for key in keys):
            raise _invalid("valid must be a list of strings or null", "valid")
        with self._lock:
            self._valid_keys = None if keys is None else frozenset(keys)

    def add_price(
        self,
        price_id: str,
        unit_amount: int,
        currency: str = "usd",
        product_name: str = "Emulator product",
    ) -> dict[str, Any]:
        """Register a Dashboard-style price that line items can refer to with `price`."""
        if not isinstance(price_id, str) or not price_id:
            raise _invalid("id must be a non-empty string", "id")
        if isinstance(unit_amount, bool) or not isinstance(unit_amount, int) or unit_amount < 0:
            raise _invalid("unit_amount must be an integer >= 0", "unit_amount")
        if currency not in rules.CURRENCIES:
            raise _invalid(f"Invalid currency: {currency}.", "currency")
        price = {
            "id": price_id,
            "object": "price",
            "active": True,
            "currency": currency,
            "product": _random_id("prod_", 14),
            "type": "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": str(unit_amount),
            "product_name": product_name,
        }
        with self._lock:
            self._prices[price_id] = price
        return dict(price)

    def set_webhook(self, url: str | None, secret: str | list[str] | None = None) -> None:
        """Deliver events for completions and expirations to `url` (None turns delivery off).

        A list of secrets signs each event with every one of them, as Stripe does while an
        endpoint's secret is being rolled (old and new both valid until the old one expires).
        """
        if isinstance(secret, list) and not all(isinstance(item, str) for item in secret):
            raise _invalid("secret must be a string or a list of strings", "secret")
        self._bus.set_webhook(url, secret)

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        with self._lock:
            session = self._sessions.get(session_id)
            return None if session is None else json.loads(session.render())

    def complete_session(
        self, session_id: str, payment_status: str = "paid", *, email: str | None = None
    ) -> dict[str, Any]:
        """Pay an open session, as a customer would; deliver checkout.session.completed."""
        if payment_status not in PAYMENT_STATUSES:
            raise _invalid(
                f"payment_status must be one of {', '.join(PAYMENT_STATUSES)}", "payment_status"
            )
        with self._lock:
            session = self._open_session(session_id, "completed")
            fields = _completed_fields(session.data, payment_status)
            if email:
                fields["customer_details"]["email"] = email
            session.update(**fields)
            self._sync_payment(session)
            data, event = session.data, self._auto_event(session, "checkout.session.completed")
        self._deliver_auto_event(event)
        return json.loads(_to_json(data))

    def settle_payment(self, session_id: str, result: str = "succeeded") -> dict[str, Any]:
        """Settle a delayed payment (a session completed `unpaid`), as a bank would, days later.

        `succeeded` pays it and delivers checkout.session.async_payment_succeeded; `failed`
        leaves it unpaid for good (its PaymentIntent back at `requires_payment_method`) and
        delivers checkout.session.async_payment_failed.
        """
        if result not in ("succeeded", "failed"):
            raise _invalid("result must be succeeded or failed", "result")
        with self._lock:
            session = self._session_for(session_id)
            event_type = settle_delayed_payment(session, result == "succeeded")
            self._sync_payment(session)
            data, event = session.data, self._auto_event(session, event_type)
        self._deliver_auto_event(event)
        return json.loads(_to_json(data))

    def find_by_client_secret(self, client_secret: str) -> dict[str, Any] | None:
        """The session a client_secret opens (what Stripe.js looks up), with its line items."""
        session_id = client_secret.partition("_secret_")[0]
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or not hmac.compare_digest(
                (session.data["client_secret"] or "").encode(), client_secret.encode()
            ):
                return None
            found = json.loads(session.render())
            found["line_items"] = [dict(item) for item in session.line_items]
            return found

    def expire_session(self, session_id: str) -> dict[str, Any]:
        """Expire an open session; deliver checkout.session.expired."""
        with self._lock:
            session = self._open_session(session_id, "expired")
            session.update(status="expired")
            data, event = session.data, self._auto_event(session, "checkout.session.expired")
        self._deliver_auto_event(event)
        return json.loads(_to_json(data))

    def deliver_event(
        self,
        session_id: str,
        event_type: str,
        *,
        url: str | None = None,
        secret: str | list[str] | None = None,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        """Send one signed event now; an `event_id` seen before redelivers that same event.

        A new event is about a session (a checkout.session.* type) and goes to `url` only. A
        redelivery may be of any event the emulator emitted (charge.refunded too); when `url`
        is one of that event's endpoints, a 2xx answer counts as its delivery.
        """
        stored = self._bus.get(event_id) if event_id else None
        if stored is None and event_type not in EVENT_TYPES:
            raise _invalid(f"type must be one of {', '.join(EVENT_TYPES)}", "type")
        webhook = self._bus.webhook
        url = url or (webhook.url if webhook else None)
        secret = secret or (webhook.secret if webhook else None)
        if not url:
            raise _invalid("No webhook URL: pass `url` or configure one first.", "url")
        if stored is not None:
            if stored.type != event_type or session_id not in ("", None, stored.session_id):
                raise _invalid(f"Event {event_id} is for another session or type.", "event_id")
            event = stored
        else:
            with self._lock:
                session = self._session_for(session_id)
                _apply_event(session, event_type)
                self._sync_payment(session)
                target = Target(f"url:{url}", None, url, secret, None)
                event = self._bus.emit(
                    event_type,
                    session.data,
                    session_id=session_id,
                    event_id=event_id,
                    targets=[target],
                )
        status, body = self._bus.send_to(event, url, secret)
        return {"event": json.loads(event.payload), "status": status, "body": body}

    def deliveries(self) -> list[dict[str, Any]]:
        """Every webhook delivery attempt since the last reset, oldest first.

        Each: event_id, type, session_id (the session the object belongs to, if any),
        object_id, endpoint (`we_…`, or None for set_webhook's target and one-off sends),
        api_version (the payload's), url, attempt (1 for the first, 0 for deliver_event's),
        status (0: no answer), body, at.
        """
        return self._bus.deliveries()

    def event_deliveries(self, event_id: str) -> dict[str, Any]:
        """One event's targets and attempts: delivered, succeeded, failed, pending, attempts."""
        return self._bus.event_deliveries(event_id)

    def set_retry_schedule(
        self, schedule: Sequence[float] | None = None, *, factor: float | None = None
    ) -> tuple[float, ...]:
        """Retry failed deliveries after these delays (seconds), or after Stripe's test-mode
        schedule divided by `factor`, until the next reset; () turns retries off."""
        if (schedule is None) == (factor is None):
            raise _invalid("Give one of schedule or factor.", "schedule")
        delays = retry_schedule(factor) if factor is not None else check_schedule(schedule)
        return self._bus.set_retry_schedule(delays)

    def set_session_created(self, session_id: str, created: int) -> dict[str, Any]:
        """Move a session's `created` (and its expires_at with it), to place it in a time window."""
        if isinstance(created, bool) or not isinstance(created, int) or created < 0:
            raise _invalid("created must be a Unix timestamp", "created")
        with self._lock:
            session = self._session_for(session_id)
            shift = created - session.data["created"]
            session.update(created=created, expires_at=session.data["expires_at"] + shift)
            return json.loads(session.render())

    def open_dispute(self, payment: str, **options: Any) -> dict[str, Any]:
        """The cardholder disputes `payment` (`pi_…` or `ch_…`); `options`: amount, reason, inquiry.
        What it emits: docs/local-browser.md, as for the other helpers below."""
        return self._change_payments(lambda: self._payments.open_dispute(payment, **options))

    def close_dispute(self, dispute_id: str, status: str) -> dict[str, Any]:
        """The bank decides a dispute: `won` or `lost` (`warning_closed` ends an inquiry)."""
        return self._change_payments(lambda: self._payments.close_dispute(dispute_id, status))

    def fail_refund(self, refund_id: str, status: str = "failed") -> dict[str, Any]:
        """A succeeded refund fails (`failed`, as a closed card's bank does) or is `canceled`."""
        return self._change_payments(lambda: self._payments.fail_refund(refund_id, status))

    def _change_payments(
        self, change: Callable[[], tuple[dict[str, Any], list[Change]]]
    ) -> dict[str, Any]:
        """Make `change` under the lock, then deliver the events it caused; its object."""
        with self._lock:
            changed, changes = change()
            events = self._emit_changes(changes)
        self._deliver_auto_event(*events)
        return changed

    # --- events ---

    def _open_session(self, session_id: str, verb: str, livemode: bool | None = None) -> _Session:
        session = self._session_for(session_id, livemode)
        if session.data["status"] != "open":
            raise _invalid(f'Only Checkout Sessions with a status in ["open"] can be {verb}.')
        return session

    def _sync_payment(self, session: _Session) -> None:
        """The session's PaymentIntent and Charge follow its payment; the caller holds the lock."""
        self._payments.sync(session.data, session.intent_status, session.intent_data)

    def _auto_event(self, session: _Session, event_type: str) -> _Event:
        """Log the event Stripe would emit for this change; the caller then delivers it.

        Every event is kept (GET /v1/events); one that no endpoint takes is _NO_EVENT here.
        """
        event = self._bus.emit(event_type, session.data, session_id=session.data["id"])
        return event if event.targets else _NO_EVENT

    def _deliver_auto_event(self, *events: _Event) -> None:
        for event in events:
            if isinstance(event, LoggedEvent):
                self._bus.deliver(event)

    def _emit_changes(
        self, changes: list[Change], request: tuple[str | None, str | None] = (None, None)
    ) -> list[LoggedEvent]:
        """Log the events of a payment's changes; the caller holds the lock, then delivers."""
        return [
            self._bus.emit(
                change.type,
                change.object,
                session_id=self._payments.session_of_intent.get(
                    change.object.get("payment_intent") or ""
                ),
                previous_attributes=change.previous_attributes,
                request=request,
                livemode=change.livemode,
            )
            for change in changes
        ]

    # --- HTTP: /v1 ---

    def _handle(self, method: str, target: str, headers: Message, body: bytes) -> _Response | None:
        request_id = _random_id("req_", 14)
        path, _, query = target.partition("?")
        try:
            if path.startswith("/v1/"):
                return self._handle_api(method, path, query, headers, body, request_id)
            if path.startswith("/_emulator/"):
                return self._handle_helper(method, path, body, request_id)
            page = browser.route(method, path)
            if page is not None:
                return page(self, query, body)
            raise _unrecognized(method, path)
        except StripeEmulatorError as err:
            if path.startswith("/v1/"):
                return _error_response(err, request_id)
            return err.status, _to_json(err.error()), _headers(request_id, err.headers)
        except Exception:
            # A bug in the emulator: say so loudly, and answer like Stripe's own 500s.
            traceback.print_exc()
            return _error_response(_server_error(), request_id)

    def _handle_api(
        self, method: str, path: str, query: str, headers: Message, body: bytes, request_id: str
    ) -> _Response | None:
        endpoint, session_id = _route(method, path)
        other = resources.route(method, path) if endpoint == "other" else None
        if other is not None:
            endpoint, object_id = other
        with self._lock:
            self._calls["total"] += 1
            self._calls[endpoint] += 1
            latency_ms, fault, hang_seconds = self._take_fault()
            release = self._release_hangs
        if latency_ms:
            time.sleep(latency_ms / 1000)
        if fault == "hang":
            release.wait(hang_seconds)
            return None  # a hung upstream never answers: the client must time out
        if fault == "rate_limit_429":
            # Stripe's rate limiter answers before any endpoint runs: nothing is saved.
            raise StripeEmulatorError(
                429,
                "Too many requests hit the API too quickly. We recommend an exponential backoff "
                "of your requests.",
                code="rate_limit",
            )

        livemode = "_live_" in self._authenticate(headers.get("Authorization"))[:8]
        version = headers.get("Stripe-Version") or LATEST_API_VERSION
        version_date = _version_date(version)
        old_names = version_date < RENAMED_UI_MODES_SINCE
        response_headers = _headers(request_id, (("Stripe-Version", version),))
        if endpoint == "other":
            raise _unrecognized(method, path)
        # The parameters are checked before anything else: a request that fails validation is
        # not an execution, and its Idempotency-Key saves nothing.
        raw = body if method == "POST" else query.encode()
        form = decode_form(raw.decode("utf-8", "replace"))
        values = self._validated(endpoint, form, version_date, livemode)
        idempotency_key = headers.get("Idempotency-Key") or ""
        if len(idempotency_key) > IDEMPOTENCY_KEY_MAX_LENGTH:
            raise _invalid(
                f"Idempotency-Key must be no longer than {IDEMPOTENCY_KEY_MAX_LENGTH} characters."
            )
        if other is not None:
            expand = resources.expand_paths(endpoint, values)
            request = resources.Request(
                endpoint,
                object_id,
                values,
                expand,
                livemode,
                old_names,
                (request_id, idempotency_key or None),
            )
            run_resource = self._resource_handler(request, fault, response_headers)
            if endpoint.startswith(("list_", "retrieve_")) or not idempotency_key:
                return run_resource()
            return self._idempotency.run(
                (livemode, idempotency_key),
                (f"{endpoint}:{object_id}", raw),
                request_id,
                run_resource,
                lambda err: _error_response(err, request_id, response_headers),
            )
        expand = _expand(values)
        if endpoint == "retrieve_session":
            if fault == "error_500":
                raise _server_error()
            with self._lock:
                session = self._session_for(session_id, livemode)
                return 200, self._render(session, old_names, expand), response_headers

        call = _Call(values, session_id, livemode, old_names, expand)
        run = self._post_handlers()[endpoint]

        def execute() -> _Response:
            if fault == "error_500":
                raise _server_error()  # the endpoint failed while executing
            with self._lock:
                payload, event = run(call)
            if event.payload:
                # Stripe sends events asynchronously; the answer must not wait on the endpoint.
                thread = threading.Thread(target=self._deliver_auto_event, args=(event,))
                thread.daemon = True
                thread.start()
            return 200, payload, response_headers

        if not idempotency_key:
            return execute()
        # Stripe scopes keys to the account, and so does this: a rotated key still replays.
        return self._idempotency.run(
            (livemode, idempotency_key),
            (path, body),
            request_id,
            execute,
            lambda err: _error_response(err, request_id, response_headers),
        )

    def _post_handlers(self) -> dict[str, Callable[[_Call], tuple[bytes, _Event]]]:
        """Each POST endpoint's work, run under the lock once its parameters are valid."""
        return {"create_session": self._create_session, "expire_session": self._expire_session}

    def _create_session(self, call: _Call) -> tuple[bytes, _Event]:
        data, items, products = _build_session(
            call.params, livemode=call.livemode, prices=self._prices
        )
        session = _Session(data, items, call.params.get("payment_intent_data"))
        self._sessions[data["id"]] = session
        self._products.update(products)
        self._sessions_created += 1
        return self._render(session, call.old_names, call.expand), _NO_EVENT

    def _expire_session(self, call: _Call) -> tuple[bytes, _Event]:
        session = self._open_session(call.object_id, "expired", call.livemode)
        session.update(status="expired")
        event = self._auto_event(session, "checkout.session.expired")
        return self._render(session, call.old_names, call.expand), event

    def _render(self, session: _Session, old_names: bool, expand: list[str]) -> bytes:
        """The session's JSON with its expansions; the caller holds the lock."""
        shown = None
        if expand:
            objects = resources.objects(self)
            shown = expansions.expand(shapes.session_class(), session.data, expand, objects)
        return session.render(old_names=old_names, shown=shown)

    def _validated(
        self, endpoint: str, values: dict[str, Any], version_date: str, livemode: bool
    ) -> dict[str, Any]:
        """The parameters, once the SDK's types and the hand-written rules accept them."""
        rules.names_of_this_api_version(endpoint, values, version_date)
        params.validate(endpoint, values, version_date)
        with self._lock:
            prices = dict(self._prices)
        context = rules.Context(version_date, prices, int(time.time()), livemode)
        rules.check(endpoint, values, context)
        return values

    def _resource_handler(
        self, request: resources.Request, fault: str, response_headers: list[tuple[str, str]]
    ) -> Callable[[], _Response]:
        """A checked request of resources.ROUTES, to run now or inside the idempotency layer."""

        def execute() -> _Response:
            if fault == "error_500":
                raise _server_error()
            events: list[LoggedEvent] = []
            with self._lock:
                if request.endpoint.startswith(("list_", "retrieve_")):
                    result = resources.read(self, request)
                else:
                    result, events = resources.write(self, request)
                payload = _to_json(result)
            if any(event.targets for event in events):
                # As Stripe: events go out asynchronously, the answer does not wait for them.
                threading.Thread(target=self._deliver_auto_event, args=events, daemon=True).start()
            return 200, payload, response_headers

        return execute

    def _take_fault(self) -> tuple[float, str, float]:
        """Decide this request's latency and fault; the caller holds the lock."""
        faults = self._faults
        mode = faults["mode"]
        if mode == "random_500":
            mode = "error_500" if self._rng.random() < faults["probability"] else "none"
        decided = (faults["latency_ms"], mode, faults["hang_seconds"])
        if faults["remaining"] is not None:
            faults["remaining"] -= 1
            if faults["remaining"] <= 0:
                self._faults = {**DEFAULT_FAULTS, "latency_ms": self._base_latency_ms}
        return decided

    def _authenticate(self, authorization: str | None) -> str:
        if not authorization:
            raise StripeEmulatorError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
                headers=(("WWW-Authenticate", 'Basic realm="Stripe"'),),
            )
        scheme, _, credentials = authorization.partition(" ")
        key = credentials.strip()
        if scheme.lower() == "basic":  # curl -u sk_test_...:
            try:
                key = base64.b64decode(key).decode().partition(":")[0]
            except ValueError:
                key = ""
        elif scheme.lower() != "bearer":
            key = ""
        if key.startswith("pk_"):
            raise StripeEmulatorError(
                401,
                "This API call cannot be made with a publishable API key. Please use a secret API "
                "key. You can find a list of your API keys at "
                "https://dashboard.stripe.com/account/apikeys.",
            )
        valid_keys = self._valid_keys
        if not _looks_like_secret_key(key) or (valid_keys is not None and key not in valid_keys):
            raise StripeEmulatorError(
                401,
                f"Invalid API Key provided: {_redact(key)}",
                headers=(("WWW-Authenticate", 'Basic realm="Stripe"'),),
            )
        return key

    def _session_for(self, session_id: str, livemode: bool | None = None) -> _Session:
        """The session, as a key of the given mode may see it (helpers pass no mode)."""
        session = self._sessions.get(session_id)
        if session is None:
            raise _no_such("checkout.session", session_id, "session")
        if livemode is not None and session.data["livemode"] != livemode:
            used, other = ("live", "test") if livemode else ("test", "live")
            raise StripeEmulatorError(
                404,
                f"No such checkout.session: '{session_id}'; a similar object exists in {other} "
                f"mode, but a {used} mode key was used to make this request.",
                code="resource_missing",
                param="session",
            )
        return session

    # --- HTTP: /_emulator/ test helpers ---

    def _helper_routes(self) -> dict[tuple[str, str], Callable[[dict[str, Any]], Any]]:
        """The /_emulator/<name> endpoints other than sessions/: each takes the JSON body."""

        def reset(_: dict[str, Any]) -> dict[str, Any]:
            self.reset()
            return {"ok": True}

        def set_keys(body: dict[str, Any]) -> dict[str, Any]:
            self.set_valid_keys(body.get("valid"))
            return {"valid": body.get("valid")}

        def add_price(body: dict[str, Any]) -> dict[str, Any]:
            return self.add_price(
                body.get("id"),
                body.get("unit_amount"),
                body.get("currency", "usd"),
                body.get("product_name", "Emulator product"),
            )

        def set_webhook(body: dict[str, Any]) -> dict[str, Any]:
            self.set_webhook(body.get("url"), body.get("secret"))
            return self._webhook_target()

        def open_dispute(body: dict[str, Any]) -> dict[str, Any]:
            return self.open_dispute(
                body.get("payment_intent") or body.get("charge"),
                amount=body.get("amount"),
                reason=body.get("reason", "fraudulent"),
                inquiry=body.get("inquiry", False),
            )

        def set_retries(body: dict[str, Any]) -> dict[str, Any]:
            delays = self.set_retry_schedule(body.get("schedule"), factor=body.get("factor"))
            return {"schedule": list(delays)}

        def deliver(body: dict[str, Any]) -> dict[str, Any]:
            return self.deliver_event(
                body.get("session_id"),
                body.get("type"),
                url=body.get("url"),
                secret=body.get("secret"),
                event_id=body.get("event_id"),
            )

        return {
            ("GET", "health"): lambda _: {"ok": True},
            ("POST", "reset"): reset,
            ("GET", "calls"): lambda _: self.calls(),
            ("GET", "faults"): lambda _: self.faults(),
            ("POST", "faults"): lambda body: self.set_faults(**body),
            ("POST", "keys"): set_keys,
            ("POST", "prices"): add_price,
            ("GET", "webhooks"): lambda _: self._webhook_target(),
            ("POST", "webhooks"): set_webhook,
            ("POST", "events"): deliver,
            ("GET", "events"): lambda _: {"deliveries": self.deliveries()},
            ("POST", "disputes"): open_dispute,
            ("GET", "retries"): lambda _: {"schedule": list(self._bus.retry_delays)},
            ("POST", "retries"): set_retries,
        }

    def _object_helper(
        self, method: str, parts: list[str], payload: dict[str, Any], path: str
    ) -> dict[str, Any]:
        """/_emulator/disputes/{id}/close, /_emulator/refunds/{id}/fail and /_emulator/events/{id}
        (its deliveries)."""
        object_id = unquote(parts[1])
        action = parts[2] if len(parts) == 3 else ""
        if parts[0] == "disputes" and method == "POST" and action == "close":
            return self.close_dispute(object_id, payload.get("status"))
        if parts[0] == "refunds" and method == "POST" and action == "fail":
            return self.fail_refund(object_id, payload.get("status", "failed"))
        if parts[0] == "events" and method == "GET" and not action:
            return self.event_deliveries(object_id)
        raise _unrecognized(method, path)

    def _webhook_target(self) -> dict[str, Any]:
        with self._lock:
            webhook = self._bus.webhook
            return {"url": webhook and webhook.url, "secret_set": bool(webhook and webhook.secret)}

    def _handle_helper(self, method: str, path: str, body: bytes, request_id: str) -> _Response:
        payload = _json_object(body) if method == "POST" else {}
        parts = path[len("/_emulator/") :].strip("/").split("/")
        if parts[0] == "sessions" and len(parts) in (2, 3):
            session_id = unquote(parts[1])
            action = parts[2] if len(parts) == 3 else ""
            if method == "GET" and not action:
                result = self.get_session(session_id)
                if result is None:
                    raise _no_such("checkout.session", session_id, "session")
            elif method == "POST" and action == "complete":
                result = self.complete_session(session_id, payload.get("payment_status", "paid"))
            elif method == "POST" and action == "expire":
                result = self.expire_session(session_id)
            elif method == "POST" and action == "settle":
                result = self.settle_payment(session_id, payload.get("result", "succeeded"))
            elif method == "POST" and action == "created":
                result = self.set_session_created(session_id, payload.get("created"))
            else:
                raise _unrecognized(method, path)
        elif parts[0] in ("disputes", "events", "refunds") and len(parts) in (2, 3):
            result = self._object_helper(method, parts, payload, path)
        else:
            handler = self._helper_routes().get((method, "/".join(parts)))
            if handler is None:
                raise _unrecognized(method, path)
            try:
                result = handler(payload)
            except TypeError as err:  # wrong field types, e.g. a list where an id belongs
                raise _invalid(f"Invalid request body: {err}") from err
        return 200, _to_json(result), _headers(request_id)


class _Call(NamedTuple):
    """A /v1 POST that passed validation: what its handler needs."""

    params: dict[str, Any]
    object_id: str  # the id in the path, if any
    livemode: bool
    old_names: bool  # the API version predates the ui_mode rename
    expand: list[str]


# Each endpoint's parameters, checked against the pinned SDK's TypedDict (params.py); the other
# endpoints name theirs in resources.ROUTES.
params.register("create_session", "stripe.params.checkout.SessionCreateParams")
params.register("retrieve_session", "stripe.params.checkout.SessionRetrieveParams")
params.register("expire_session", "stripe.params.checkout.SessionExpireParams")
for _endpoint in resources.ENDPOINTS:
    params.register(_endpoint, resources.params_of(_endpoint))
# Removed from Checkout create in 2026-09-30.endive; older API versions still take it.
params.register_removed(
    "create_session", "payment_method_types", "2026-09-30", params.Array(params.Scalar("str"))
)


def _route(method: str, path: str) -> tuple[str, str]:
    """The /v1 endpoint a request is for (a calls() counter name), and its session id if any."""
    parts = path.split("/")  # "", "v1", "checkout", "sessions", id, "expire"
    if parts[1:4] != ["v1", "checkout", "sessions"]:
        return "other", ""
    session_id = unquote(parts[4]) if len(parts) > 4 else ""
    if len(parts) == 4 and method == "POST":
        return "create_session", ""
    if len(parts) == 5 and session_id and method == "GET":
        return "retrieve_session", session_id
    if len(parts) == 6 and session_id and parts[5] == "expire" and method == "POST":
        return "expire_session", session_id
    return "other", ""


def _expand(values: dict[str, Any]) -> list[str]:
    """The request's expand[] paths, once the Session's SDK class allows each of them."""
    paths: list[str] = values.get("expand") or []
    try:
        shapes.check_expand(shapes.session_class(), paths)
    except ValueError as err:
        raise _invalid(str(err), "expand") from None
    return paths


def _server_error() -> StripeEmulatorError:
    # Stripe marks its 500s so that SDKs do not retry: the result is saved under the request's
    # idempotency key, and a retry with that key would only replay it.
    return StripeEmulatorError(
        500,
        "An unknown error occurred",
        type="api_error",
        headers=(("Stripe-Should-Retry", "false"),),
    )


def _error_response(
    err: StripeEmulatorError, request_id: str, headers: list[tuple[str, str]] | None = None
) -> _Response:
    sent = [*(headers or _headers(request_id)), *err.headers]
    return err.status, _to_json(err.error(request_id)), sent


def _headers(request_id: str, extra: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, str]]:
    return [("Request-Id", request_id), *extra]


def _unrecognized(method: str, path: str) -> StripeEmulatorError:
    return StripeEmulatorError(
        404,
        f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we "
        "can help at https://support.stripe.com/.",
    )


def _version_date(version: str) -> str:
    """The date of a version Stripe has released; any other is refused, as Stripe refuses it."""
    if version not in params.api_versions():
        raise _invalid(f"Invalid Stripe API version: {version}")
    return version[:10]


def _looks_like_secret_key(key: str) -> bool:
    body = key[8:]
    return (
        key.startswith(SECRET_KEY_PREFIXES)
        and bool(body)
        and body.isascii()
        and body.replace("_", "").isalnum()
    )


def _redact(key: str) -> str:
    """Stripe's way of naming a bad key: keep its prefix and last four characters."""
    prefix = next((p for p in (*SECRET_KEY_PREFIXES, "sk_", "rk_") if key.startswith(p)), "")
    hidden = key[len(prefix) : -4] if len(key) - len(prefix) > 4 else key[len(prefix) :]
    visible = key[len(prefix) + len(hidden) :]
    return prefix + "*" * len(hidden) + visible


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError as err:
        raise _invalid(f"Invalid JSON body: {err}") from err
    if not isinstance(value, dict):
        raise _invalid("The JSON body must be an object.")
    return value
