"""Structured logging: one JSON object per line on stdout, the shape Cloud Logging reads."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sys
import threading
import traceback
from typing import Any

from checkout.request_context import current_request

_TRACE_KEY = "logging.googleapis.com/trace"

_configured = threading.Lock()
_done = False
# Built once: json.dumps(..., **options) would build a new encoder for every line.
_ENCODE = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":")).encode


# Shapes of secrets that an exception's message or traceback might quote: Stripe keys, webhook
# signing secrets, Checkout client secrets, bearer tokens and Google access tokens.
_SECRETS = re.compile(
    r"(?P<keep>(?:sk|rk|pk)_(?:test|live)_|whsec_|cs_(?:test|live)_[A-Za-z0-9]+_secret_"
    r"|Bearer\s+|ya29\.)[A-Za-z0-9+/=._-]+"
)
MAX_STACK_TRACE_CHARS = 16_000


def new_request_id() -> str:
    """A request's id (X-Request-Id, and its log line's `request_id`)."""
    # Unique, not secret, and cheaper than uuid4(), which makes a system call for os.urandom.
    return f"{random.getrandbits(128):032x}"


def redact(text: str) -> str:
    """`text` with every secret-shaped token blanked after its prefix."""
    return _SECRETS.sub(lambda match: match["keep"] + "[redacted]", text)


def crash_fields(error: BaseException) -> dict[str, str]:
    """An unhandled exception's type, message and traceback, for a request's log line.

    `stack_trace` is the field Cloud Error Reporting reads from a JSON log entry. Secret-shaped
    text is blanked (the message of a library's exception can quote what it was given).
    """
    # Redacted before it is cut, so that no cut can split a secret from its recognisable prefix.
    trace = redact("".join(traceback.format_exception(error)))
    if len(trace) > MAX_STACK_TRACE_CHARS:  # keep the end: the frame that raised, and the message
        trace = "…" + trace[-MAX_STACK_TRACE_CHARS:]
    return {
        "error_type": type(error).__name__,
        "error_message": redact(str(error))[:1000],
        "stack_trace": trace,
    }


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line; `extra={"fields": {...}}` adds structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname if record.levelname != "WARN" else "WARNING",
            "message": record.getMessage(),
            "logger": record.name,
        }
        request = current_request.get()
        if request is not None:
            entry["request_id"] = request.request_id
            if request.trace:
                entry[_TRACE_KEY] = request.trace
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The type and message only: a full traceback is noise in a request log.
            entry["error_type"] = record.exc_info[0].__name__
        return _ENCODE(entry)


class _StdoutHandler(logging.Handler):
    """Writes each record as one line to whatever sys.stdout is now (test runners swap it).

    Every request logs a line. logging's usual per-handler lock, held across the write, made the
    64 request threads queue behind one another: 8 more context switches and 0.07 ms more CPU per
    request (bench/run.py, README "Performance"). On the process's real stdout each line goes out
    in one write(2) instead, which needs no lock: the kernel keeps a write whole (on a pipe, up to
    PIPE_BUF = 4 KiB, far more than a log line).
    """

    def createLock(self) -> None:
        self.lock = None  # logging skips acquire/release when there is no lock
        self._capture_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            stream = sys.stdout
            if stream is sys.__stdout__ and stream is not None:
                data = memoryview(line.encode("utf-8", "backslashreplace"))
                descriptor = stream.fileno()
                while data:  # a signal can cut a write short
                    data = data[os.write(descriptor, data) :]
                return
            with self._capture_lock:  # a test's capture stream: Python code, so not atomic
                stream.write(line)
                stream.flush()
        except Exception:
            self.handleError(record)


def setup_logging() -> None:
    """Send the `checkout` loggers to stdout as JSON lines; safe to call more than once."""
    global _done
    with _configured:
        if _done:
            return
        handler = _StdoutHandler()
        handler.setFormatter(JsonFormatter())
        root = logging.getLogger("checkout")
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
        _done = True


def trace_of(headers: Any, project: str | None) -> str | None:
    """Cloud Logging's trace field, from W3C traceparent or X-Cloud-Trace-Context."""
    if not project:
        return None
    trace_id = None
    traceparent = headers.get("traceparent")
    if traceparent:
        parts = traceparent.split("-")
        if len(parts) == 4 and len(parts[1]) == 32 and parts[1].isalnum():
            trace_id = parts[1]
    if trace_id is None:
        cloud = headers.get("X-Cloud-Trace-Context")
        if cloud:
            candidate = cloud.split("/", 1)[0]
            if 0 < len(candidate) <= 64 and candidate.isalnum():
                trace_id = candidate
    return f"projects/{project}/traces/{trace_id}" if trace_id else None


def traceparent_of(headers: Any) -> str | None:
    """A W3C `traceparent` for the request's trace (from its own, or from X-Cloud-Trace-Context),
    to carry on the messages it publishes: the worker's records then join the same trace."""
    traceparent = headers.get("traceparent")
    if traceparent and _TRACEPARENT.fullmatch(traceparent.strip().lower()):
        return str(traceparent).strip().lower()
    cloud = _CLOUD_TRACE.fullmatch((headers.get("X-Cloud-Trace-Context") or "").strip())
    if cloud is None:
        return None
    span = int(cloud["span"] or "1") & 0xFFFFFFFFFFFFFFFF or 1
    return f"00-{cloud['trace'].lower()}-{span:016x}-01"


def current_traceparent() -> str | None:
    """The trace of the request (or delivery) this code runs for, if any."""
    request = current_request.get()
    return None if request is None else request.traceparent


_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_CLOUD_TRACE = re.compile(r"(?P<trace>[0-9a-fA-F]{32})(?:/(?P<span>[0-9]{1,20}))?(?:;o=[01])?")
