"""Logs and response hygiene of a full live run: successes, every error, every fault.

One functions-framework server serves a scripted run (module fixture `run`); the tests then read
what it wrote. stdout must be JSON lines only, one `checkout.request` line per request, carrying
the request's id, its Stripe request id and its trace. stderr is gunicorn's (functions-framework
sets its log level to `error`) and must stay empty in a clean run. Neither may contain the Stripe
key, the webhook secret or any client_secret.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devtools.stripe_emulator import StripeEmulator, sign_payload
from tests.support import (
    CREATE,
    FRONTEND,
    JSON,
    ROOT,
    STATUS,
    TEST_KEY,
    WEBHOOK,
    Answer,
    LiveServer,
    send,
)

WEBHOOK_SECRET = "whsec_testLogsOnlyFake"
PROJECT = "demo-project"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLOUD_TRACE_ID = "105445aa7843bc8bf206b12000100000"
TIMEOUT_SECONDS = 0.5


@dataclass
class Run:
    """What the scripted run sent, got back and left in the server's output."""

    answers: list[tuple[str, Answer]] = field(default_factory=list)  # (what, answer)
    client_secrets: list[str] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines()]

    def request_lines(self) -> dict[str, dict]:
        lines = [line for line in self.lines() if line.get("logger") == "checkout.request"]
        by_id = {line["request_id"]: line for line in lines}
        assert len(by_id) == len(lines), "two request lines share an id"
        return by_id


def emulator_session(emulator: StripeEmulator, session_id: str) -> dict[str, Any]:
    session = emulator.get_session(session_id)
    assert session is not None
    return session


def signed_event(session: dict, secret: str = WEBHOOK_SECRET) -> tuple[bytes, str]:
    event = {
        "id": f"evt_logs_{session['id'][-12:]}",
        "object": "event",
        "type": "checkout.session.completed",
        "data": {"object": session},
    }
    payload = json.dumps(event).encode()
    return payload, sign_payload(payload, secret)


def script(server: LiveServer, emulator: StripeEmulator, run: Run) -> None:
    """Every kind of answer the service gives, each recorded with a label."""

    def do(what: str, method: str, target: str, headers=(), body: bytes = b"") -> Answer:
        answer = send(server, method, target, headers, body)
        run.answers.append((what, answer))
        if what.startswith("create") and answer.status == 200:
            run.client_secrets.append(answer.json()["client_secret"])
        return answer

    def create(what: str, headers=(), body: bytes = b"{}") -> Answer:
        return do(what, "POST", CREATE, [("Content-Type", JSON), *headers], body)

    def status(what: str, session_id: str, headers=()) -> Answer:
        return do(what, "GET", f"{STATUS}?session_id={session_id}", headers)

    def faulty(mode: str, action: Callable[[], Answer]) -> None:
        emulator.set_faults(mode=mode, hang_seconds=5)
        try:
            action()
        finally:
            emulator.set_faults(mode="none")

    origin = [("Origin", FRONTEND)]
    traced = [("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01")]
    cloud_traced = [("X-Cloud-Trace-Context", f"{CLOUD_TRACE_ID}/1;o=1")]

    # Successes, with the browser's headers and a trace.
    first = create("create traced", [*origin, *traced, ("Idempotency-Key", "order-1")])
    create("create replayed", [("Idempotency-Key", "order-1")])
    session_id = create("create cloud-traced", cloud_traced, b'{"imageId": "img_1"}').json()[
        "session_id"
    ]
    status("status open", session_id, origin)
    do("preflight", "OPTIONS", CREATE, [*origin, ("Access-Control-Request-Method", "POST")])
    emulator.complete_session(session_id)
    status("status complete", session_id)
    payload, signature = signed_event(emulator_session(emulator, session_id))
    do(
        "webhook",
        "POST",
        WEBHOOK,
        [("Content-Type", JSON), ("Stripe-Signature", signature)],
        payload,
    )

    # Every error the client can cause.
    create("invalid_json", body=b"{nope")
    create("invalid_body", body=b"[]")
    create("invalid_image_id", body=b'{"imageId": 5}')
    create("invalid_idempotency_key", [("Idempotency-Key", "k" * 256)])
    status("invalid_session_id", "pi_123")
    create("origin_not_allowed", [("Origin", "https://evil.example")])
    do("not_found", "GET", "/robots.txt")
    do("method_not_allowed", "DELETE", STATUS)
    status("session_not_found", "cs_test_doesNotExist1")
    create("idempotency_conflict", [("Idempotency-Key", "order-1")], b'{"imageId": "other"}')
    create("payload_too_large", body=b" " * (64 * 1024 + 1))
    do("unsupported_media_type", "POST", CREATE, [("Content-Type", "text/plain")], b"{}")
    _, bad_signature = signed_event(emulator_session(emulator, session_id), "whsec_wrong")
    do("invalid_signature", "POST", WEBHOOK, [("Stripe-Signature", bad_signature)], payload)

    # Every fault.
    faulty("error_500", lambda: create("payment_provider_error"))
    faulty("rate_limit_429", lambda: status("payment_provider_busy", first.json()["session_id"]))
    faulty("hang", lambda: create("payment_provider_unreachable"))
    emulator.set_valid_keys(["sk_test_someOtherKeyThanTheServers"])
    try:
        create("payment_configuration_error")
    finally:
        emulator.set_valid_keys(None)


@pytest.fixture(scope="module")
def run(
    stripe_emulator_server: StripeEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    emulator = stripe_emulator_server
    emulator.reset()
    server = LiveServer(
        {
            "FRONTEND_URL": FRONTEND,
            "STRIPE_SECRET_KEY": TEST_KEY,
            "STRIPE_API_BASE": emulator.url,
            "STRIPE_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
            "STRIPE_MAX_RETRIES": "0",
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
        },
        Path(tmp_path_factory.mktemp("logs")) / "server.log",
    )
    result = Run()
    try:
        script(server, emulator, result)
    finally:
        server.stop()  # flushes and closes both streams: nothing more can be written
        emulator.reset()
    result.stdout = server.log_path.read_text(errors="replace")
    result.stderr = server.stderr_path.read_text(errors="replace")
    yield result


@pytest.mark.slow
def test_the_run_covered_every_outcome(run: Run):
    expected = {
        "create traced": 200,
        "status complete": 200,
        "preflight": 204,
        "webhook": 200,
        "not_found": 404,
        "method_not_allowed": 405,
        "idempotency_conflict": 409,
        "payload_too_large": 413,
        "unsupported_media_type": 415,
        "payment_configuration_error": 500,
        "payment_provider_error": 502,
        "payment_provider_busy": 503,
        "payment_provider_unreachable": 504,
    }
    got = {what: answer.status for what, answer in run.answers}
    assert {what: got[what] for what in expected} == expected
    for what, answer in run.answers:
        if answer.status >= 400:
            assert answer.json()["code"] == what
    assert len(run.client_secrets) == 3


def test_every_stdout_line_is_a_json_object_with_severity_and_message(run: Run):
    lines = run.stdout.splitlines()
    assert len(lines) >= len(run.answers)
    for line in lines:
        entry = json.loads(line)
        assert isinstance(entry, dict)
        assert entry["severity"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
        assert isinstance(entry["message"], str)
        assert entry["message"]


def test_stderr_is_empty_in_a_clean_run(run: Run):
    # gunicorn logs only errors there (functions-framework: loglevel=error); none happened.
    assert run.stderr == ""


def test_one_request_line_per_request_with_http_request_fields(run: Run):
    by_id = run.request_lines()
    assert len(by_id) == len(run.answers) + 1  # and LiveServer's readiness probe
    for what, answer in run.answers:
        line = by_id[answer.headers["X-Request-Id"]]
        http = line["httpRequest"]
        assert set(http) == {"requestMethod", "requestUrl", "status", "latency"}
        assert http["status"] == answer.status, what
        assert http["requestUrl"].startswith("/")
        assert "?" not in http["requestUrl"]
        assert re.fullmatch(r"\d+\.\d{6}s", http["latency"])
        expected = (
            "ERROR" if answer.status >= 500 else "WARNING" if answer.status >= 400 else "INFO"
        )
        assert line["severity"] == expected, what
        if answer.status >= 400:
            assert line["code"] == answer.json()["code"]
            assert line["request_id"] == answer.json()["request_id"]


def test_request_lines_carry_the_stripe_request_id_when_stripe_answered(run: Run):
    by_id = run.request_lines()
    stripe_answered = {
        "create traced",
        "create replayed",
        "create cloud-traced",
        "status open",
        "status complete",
        "session_not_found",
        "idempotency_conflict",
        "payment_provider_error",
        "payment_provider_busy",
        "payment_configuration_error",
    }
    for what, answer in run.answers:
        line = by_id[answer.headers["X-Request-Id"]]
        if what in stripe_answered:
            assert re.fullmatch(r"req_\w+", line["stripe_request_id"]), what
        else:
            assert "stripe_request_id" not in line, what


def test_trace_comes_from_traceparent_or_cloud_trace_context(run: Run):
    by_id = run.request_lines()
    traces = {
        what: by_id[answer.headers["X-Request-Id"]].get("logging.googleapis.com/trace")
        for what, answer in run.answers
    }
    assert traces.pop("create traced") == f"projects/{PROJECT}/traces/{TRACE_ID}"
    assert traces.pop("create cloud-traced") == f"projects/{PROJECT}/traces/{CLOUD_TRACE_ID}"
    assert set(traces.values()) == {None}
    assert len(traces) == len(run.answers) - 2


def test_no_key_secret_or_client_secret_in_any_output(run: Run):
    output = run.stdout + run.stderr
    secrets = [TEST_KEY, WEBHOOK_SECRET, *run.client_secrets]
    secrets += [secret.split("_secret_")[1] for secret in run.client_secrets]
    for secret in secrets:
        assert secret not in output
    # Nor any other key or secret, even redacted (Stripe names a bad key as sk_test_****cdef).
    assert not re.search(r"\b(sk|rk)_(test|live)_|whsec_[A-Za-z0-9+/=]", output)


def test_every_answer_has_hygiene_headers_and_a_request_id(run: Run):
    for what, answer in run.answers:
        assert answer.headers["Cache-Control"] == "no-store", what
        assert answer.headers["X-Content-Type-Options"] == "nosniff", what
        assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["X-Request-Id"]), what


def test_server_banner_reveals_no_version(run: Run):
    # uvicorn's workers send `Server: uvicorn`, with no version; nothing else names the stack.
    for _, answer in run.answers:
        assert answer.headers.get_all("Server") == ["uvicorn"]
        assert "X-Powered-By" not in answer.headers


def test_log_lines_are_written_as_the_request_finishes(run: Run):
    # The request line precedes the next request's: each is flushed, none is buffered.
    order = [line["request_id"] for line in run.lines() if line.get("logger") == "checkout.request"]
    assert order[1:] == [answer.headers["X-Request-Id"] for _, answer in run.answers]


# Many threads logging at once, with stdout a pipe as on Cloud Run: the handler writes each line
# with one unlocked write(2), so a line split or interleaved with another would show up here.
MANY_THREADS_LOGGING = """
import logging, threading
from checkout.logs import setup_logging
setup_logging()
log = logging.getLogger("checkout.test")
def write(thread):
    for n in range(200):
        log.info("thread %d line %d %s", thread, n, "x" * 1000)
threads = [threading.Thread(target=write, args=(t,)) for t in range(32)]
for t in threads: t.start()
for t in threads: t.join()
"""


def test_lines_stay_whole_when_many_threads_log_at_once():
    result = subprocess.run(
        [sys.executable, "-c", MANY_THREADS_LOGGING],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 32 * 200
    messages = {json.loads(line)["message"].rsplit(" ", 1)[0] for line in lines}
    assert messages == {f"thread {t} line {n}" for t in range(32) for n in range(200)}
    assert result.stderr == ""


def test_a_request_lines_detail_is_redacted_like_a_crash(live_server):
    # A detail can quote what the client sent (its forwarded address, its Origin): a secret pasted
    # there must be blanked as it is in a crash's message, not written to the log.
    secret = "sk_live_" + "Z9" * 20
    server = live_server(CREATE_LIMIT_PER_MINUTE="1", TRUSTED_PROXY_HOPS="1")
    forwarded = [("Content-Type", JSON), ("X-Forwarded-For", secret)]
    answers = [send(server, "POST", CREATE, forwarded, b"{}").status for _ in range(2)]
    origin = send(server, "POST", CREATE, [("Content-Type", JSON), ("Origin", f"https://{secret}")])
    assert (answers, origin.status) == ([200, 429], 403)
    records = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    details = [
        r["detail"] for r in records if r.get("code") in ("rate_limited", "origin_not_allowed")
    ]
    assert len(details) == 2
    assert all("sk_live_[redacted]" in detail for detail in details), details
    assert secret[10:] not in server.logs() + server.stderr()


def test_a_line_logged_under_a_request_context_carries_its_id_and_trace():
    import logging

    from checkout.logs import JsonFormatter
    from checkout.request_context import RequestContext, current_request

    record = logging.LogRecord("checkout.test", logging.INFO, __file__, 1, "hello", None, None)
    trace = f"projects/{PROJECT}/traces/{TRACE_ID}"
    token = current_request.set(RequestContext(request_id="r1", trace=trace))
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        current_request.reset(token)
    assert (line["request_id"], line["logging.googleapis.com/trace"]) == ("r1", trace)
    outside = json.loads(JsonFormatter().format(record))
    assert "request_id" not in outside and "logging.googleapis.com/trace" not in outside
