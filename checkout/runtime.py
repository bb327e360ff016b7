"""The parts one process shares (API, worker or command), each built once from the settings.
Nothing here speaks HTTP: the API builds its own parts from these (api/parts.py, docs/layout.md)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from checkout.config import ConfigError, Settings, load_settings
from checkout.keys import SecretSource, stripe_api_key_source, webhook_secret_source
from checkout.orders.catalogue import Catalogue
from checkout.orders.delivery import DeliverOrder, Worker, deliver_order_from_settings
from checkout.orders.intake import Intake
from checkout.orders.ledger import Ledger, ledger_from_settings
from checkout.orders.publisher import InProcessPublisher, Publisher, PubSubPublisher
from checkout.orders.recorder import Recorder
from checkout.stripe_access.gateway import StripeGateway

log = logging.getLogger("checkout")

T = TypeVar("T")


@dataclass(frozen=True)
class Runtime:
    """The process's shared parts, built once; each user is handed only the ones it uses."""

    settings: Settings
    api_key: SecretSource
    webhook_secret: SecretSource
    gateway: StripeGateway
    ledger: Ledger  # orders, events, deliveries: this process, or every instance (Firestore)
    catalogue: Catalogue  # what this deployment sells, and how its sessions are marked
    publisher: Publisher  # the order topic, or this process's worker (local)
    recorder: Recorder  # record a fact, then publish its changes: the one way orders change
    intake: Intake  # events and session reads made order facts: every caller's one path
    worker: Worker  # fulfil_order's: delivers each change once
    trace_project: str | None  # whose Cloud Trace a request's log lines join

    @classmethod
    def from_settings(cls, settings: Settings, deliver: DeliverOrder | None = None) -> Runtime:
        """Build every shared part once; `deliver` defaults to DELIVER_ORDER's function, or ours."""
        api_key = stripe_api_key_source(settings)
        gateway = StripeGateway(settings, api_key)
        ledger = ledger_from_settings(settings)
        catalogue = Catalogue.from_settings(settings)
        worker = Worker(
            ledger,
            deliver or deliver_order_from_settings(settings),
            settings.ledger_lease_seconds,
            settings.delivery_timeout_seconds,
        )
        publisher: Publisher = (
            PubSubPublisher(settings.order_events_topic)
            if settings.order_events_topic
            else InProcessPublisher(worker.deliver, ledger.mark_unpublished)
        )
        worker.redeliver = publisher.publish  # hands on what was queued behind a run
        recorder = Recorder(ledger, publisher)
        return cls(
            settings=settings,
            api_key=api_key,
            webhook_secret=webhook_secret_source(settings),
            gateway=gateway,
            ledger=ledger,
            catalogue=catalogue,
            publisher=publisher,
            recorder=recorder,
            intake=Intake(ledger, recorder, gateway, catalogue),
            worker=worker,
            trace_project=settings.google_cloud_project or _project_in(settings.stripe_secret_name),
        )

    def hand(self, parts: Callable[..., T], **own: Any) -> T:
        """`parts` (a dataclass) built from the runtime's parts of its fields' names, and `own`."""
        names = [field.name for field in fields(parts)]  # type: ignore[arg-type]
        return parts(**{name: own[name] if name in own else getattr(self, name) for name in names})

    def close(self) -> None:
        """Close the Stripe pool (on its own loop), the publisher and the worker's threads."""
        self.gateway.close()
        self.publisher.close()
        self.worker.close()


class OnFirstUse:
    """A process's Runtime, built on first use (after the server forks, never at import).

    A configuration error is logged once and kept: the environment cannot change under a
    running process. `announce` is told the settings once the runtime is built.
    """

    def __init__(
        self,
        deliver: DeliverOrder | None = None,
        load: Callable[[], Settings] = load_settings,
        announce: Callable[[Settings], None] | None = None,
    ) -> None:
        self._deliver = deliver
        self._load = load
        self._announce = announce
        self._built: Runtime | ConfigError | None = None  # the runtime, or why it cannot be
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        return isinstance(self._built, Runtime)

    def get(self) -> Runtime:
        """The Runtime, built on first use; ConfigError (the kept one) if the settings are wrong."""
        built = self._built
        if built is None:
            with self._lock:
                built = self._built
                if built is None:
                    built = self._built = self._build()
        if isinstance(built, ConfigError):
            raise built.with_traceback(None)  # the kept error, without the last raise's frames
        return built

    def close(self) -> None:
        """Close what the runtime opened, if it was built (when the process, or a test, is done)."""
        if isinstance(self._built, Runtime):
            self._built.close()

    def _build(self) -> Runtime | ConfigError:
        try:
            runtime = Runtime.from_settings(self._load(), self._deliver)
        except ConfigError as error:
            log.error("configuration error: %s", error)
            return error
        if self._announce is not None:
            self._announce(runtime.settings)
        return runtime


def _project_in(secret_name: str | None) -> str | None:
    if secret_name and secret_name.startswith("projects/"):
        return secret_name.split("/")[1] or None
    return None
