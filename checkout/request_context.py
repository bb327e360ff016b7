"""What the request (or delivery) being served carries for the code it calls: its ids, its lane
at Stripe, and what that code notes for its log line or leaves to run after the response."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestContext:
    """One request's, or one delivery's, state shared with the code it calls."""

    request_id: str
    # A fulfil_order delivery rather than an HTTP request: its changes are delivered at once.
    delivery: bool = False
    # A browser endpoint: its Stripe calls may not take the reserved part of the in-flight cap.
    public: bool = False
    trace: str | None = None  # Cloud Logging's trace field
    traceparent: str | None = None  # W3C, carried on the changes it publishes
    stripe_request_id: str | None = None  # Stripe's id of its last call, for the log line
    # In-process delivery (no topic, local only): run once the response is sent.
    after_response: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


# The request being served by this task or thread, so every record it logs carries its ids.
current_request: ContextVar[RequestContext | None] = ContextVar("current_request", default=None)
