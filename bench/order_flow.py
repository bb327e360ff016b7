"""The order flow: the webhook's latency while each delivery takes 10 s, and that every change is
delivered once, against Google's real Firestore and Pub/Sub emulators.

    python -m bench.order_flow        # about a minute; needs gcloud and Java (the emulators)

The stack, each part its own process as in production:
- the Stripe emulator, adding STRIPE_LATENCY_MS to every Stripe call, as `make bench` does;
- Google's Firestore and Pub/Sub emulators (gcloud), the order ledger and the order topic;
- `checkout_api` under functions-framework's production server (one uvicorn worker), with
  ORDER_LEDGER=firestore, ORDER_EVENTS_TOPIC and a webhook signing secret;
- `fulfil_order`, on the same ledger, whose DELIVER_ORDER (bench/delivery.py) takes
  DELIVERY_SECONDS for every change, behind devtools/eventarc_push.py (what Eventarc does: pull,
  POST a CloudEvent, ack on 2xx) with PUSH_CONCURRENCY POSTs in flight.

Paid sessions are created through the API and completed in the Stripe emulator. Each one's
`checkout.session.completed`, signed as Stripe signs it, is sent three times: the first delivery, a
duplicate sent at the same moment, and a duplicate after every session's first (Stripe's retries);
CONNECTIONS clients send them, a fresh connection each, as Stripe does. A few sessions first warm
the path up, unmeasured. Then the benchmark waits for the worker, and counts from the delivery sink
how often each change ran. Prints the figures; `make bench` (bench/run.py) runs it as one part.

    python -m bench.order_flow --faulty   # issue 28: deliveries fail, messages dead-letter

The faulty run: the worker's subscription has a dead-letter policy (5 attempts) and a short ack
deadline; DELIVER_ORDER (bench.delivery:flaky) fails FAULTY_FAIL_SHARE of its attempts at random,
and for FAULTY_DOWN_SHARE of the changes fails every attempt (their messages dead-letter). Once
every message is delivered or dead-lettered, the downstream recovers and `python -m checkout
reconcile` runs, as the hourly job would; then the run waits until every change is delivered. It
reports the paid orders, the successful runs per change (exactly 1 each), and the time from
payment (the webhook's answer) to the change's delivery.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.delivery import noted
from bench.servers import (
    BENCH_KEY,
    ROOT,
    FunctionServer,
    StripeEmulator,
    clean_env,
    http_json,
)
from devtools.eventarc_push import Delivery, EventarcPush
from devtools.firestore_emulator import FirestoreEmulator
from devtools.pubsub_emulator import PubSubEmulator, subscription_path, topic_path
from devtools.stripe_emulator.webhooks import sign_payload, snapshot_event

RESULTS = ROOT / "bench" / "results"
CREATE = "/api/checkout/embedded-session"
WEBHOOK = "/api/checkout/webhook"
STRIPE_LATENCY_MS = 100
DELIVERY_SECONDS = 10.0
SESSIONS = 100  # measured; each sends three webhooks
WARMUP_SESSIONS = 10
CONNECTIONS = 4
PUSH_CONCURRENCY = 128
WEBHOOK_SECRET = "whsec_benchOnly"  # not a real secret: signs loopback traffic only
PROJECT = "bench-orders"
TOPIC = "checkout-orders"
SUBSCRIPTION = "eventarc-fulfil"
# Longer than a delivery: a push subscription waits this long for the POST's answer before it
# redelivers (a redelivery of a change still running is queued behind it and acknowledged).
ACK_DEADLINE_S = 60
KINDS = ("first", "duplicate at once", "duplicate later")
# The faulty run (issue 28).
FAULTY_SESSIONS = 100
FAULTY_FAIL_SHARE = 0.3
FAULTY_DOWN_SHARE = 0.1
FAULTY_DELIVERY_SECONDS = 0.2
FAULTY_ATTEMPTS = 5  # Pub/Sub's minimum
DEAD_LETTER_TOPIC = "checkout-orders-dead-letter"
DEAD_LETTER_SUBSCRIPTION = "checkout-orders-dead-letter-sub"


@dataclass(frozen=True)
class Sent:
    """One webhook: which delivery it was, the answer, and its latency at the client."""

    kind: str
    session_id: str
    status: int
    ms: float
    answered_at: float  # unix time


@dataclass
class OrderFlow:
    sent: list[Sent]
    sessions: list[str]  # measured and warm-up sessions: every one's change must be delivered
    stripe_calls: int  # while the measured webhooks ran
    seconds: float  # the measured webhooks, first sent to last answered
    runs: list[tuple[str, str, float]]  # the delivery sink: (change id, start|done, unix time)
    pushes: list[Delivery]
    waited_s: float  # from the last answer until every change was delivered
    settings: dict[str, Any] = field(default_factory=dict)

    def latencies(self, kind: str | None = None) -> list[float]:
        return sorted(s.ms for s in self.sent if kind is None or s.kind == kind)

    def percentile(self, p: float, kind: str | None = None) -> float:
        values = self.latencies(kind)
        return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")

    def errors(self) -> int:
        return sum(1 for s in self.sent if s.status != 200)

    def counts(self, what: str) -> Counter[str]:
        """How many times each change's delivery started (or ended)."""
        return Counter(change for change, noted_what, _ in self.runs if noted_what == what)

    def delivered_once(self) -> bool:
        expected = {f"{session}:paid" for session in self.sessions}
        starts, dones = self.counts("start"), self.counts("done")
        return set(starts) == set(dones) == expected and set(starts.values()) == {1} == set(
            dones.values()
        )

    def most_running(self) -> int:
        """The most deliveries running at one moment."""
        steps = sorted((at, 1 if what == "start" else -1) for _, what, at in self.runs)
        running = most = 0
        for _, step in steps:
            running += step
            most = max(most, running)
        return most

    def answered_while_delivering(self) -> int:
        """Measured webhooks answered while at least one delivery was running."""
        spans = [(at, self._done_at(change)) for change, what, at in self.runs if what == "start"]
        return sum(
            1 for s in self.sent if any(start <= s.answered_at <= end for start, end in spans)
        )

    def _done_at(self, change: str) -> float:
        return next((at for c, what, at in self.runs if c == change and what == "done"), 1e18)

    def measured(self) -> dict[str, float]:
        """The figures `make bench` checks its targets against."""
        return {
            "webhook p50": self.percentile(0.50),
            "webhook p99": self.percentile(0.99),
            "webhook max": self.latencies()[-1],
            "webhook errors": self.errors(),
            "delivery ms": DELIVERY_SECONDS * 1000,
            "delivered once": float(self.delivered_once()),
        }

    def lines(self) -> list[str]:
        settings = self.settings
        delivery_ms = DELIVERY_SECONDS * 1000
        all_ms = self.latencies()
        rate = len(self.sent) / self.seconds if self.seconds else float("nan")
        statuses = Counter(s.status for s in self.sent)
        push_statuses = Counter(p.status for p in self.pushes)
        messages = {p.message_id for p in self.pushes}
        starts, dones = self.counts("start"), self.counts("done")
        lines = [
            f"Order flow: {len(self.sessions) - settings['warmup']} paid sessions (+"
            f"{settings['warmup']} unmeasured warm-up), 3 signed checkout.session.completed each, "
            f"{settings['connections']} clients; checkout_api ORDER_LEDGER=firestore with "
            f"ORDER_EVENTS_TOPIC (Google's Firestore and Pub/Sub emulators); fulfil_order's "
            f"DELIVER_ORDER takes {DELIVERY_SECONDS:g} s; Stripe emulator latency "
            f"{STRIPE_LATENCY_MS} ms.",
            "",
            "| webhooks | n | p50 ms | p99 ms | max ms | p99 / delivery | p99 / Stripe latency |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for kind in (*KINDS, None):
            values = self.latencies(kind)
            if not values:
                continue
            p99 = self.percentile(0.99, kind)
            lines.append(
                f"| {kind or 'all'} | {len(values)} | {self.percentile(0.5, kind):.1f} "
                f"| {p99:.1f} | {values[-1]:.0f} | {p99 / delivery_ms:.4f} "
                f"| {p99 / STRIPE_LATENCY_MS:.2f} |"
            )
        lines += [
            "",
            f"- answers: {dict(sorted(statuses.items()))}; {rate:.0f} webhooks/s; Stripe calls "
            f"per webhook {self.stripe_calls / max(1, len(self.sent)):.3f}; max over the "
            f"{DELIVERY_SECONDS:g} s delivery {all_ms[-1] / delivery_ms:.4f}",
            f"- {self.answered_while_delivering()} of {len(self.sent)} answers came while a "
            f"delivery was running; at most {self.most_running()} deliveries ran at once",
            f"- worker: {len(messages)} messages for {len(self.sessions)} changes, "
            f"{len(self.pushes)} POSTs ({dict(sorted(push_statuses.items()))}); deliveries "
            f"started {sum(starts.values())}, ended {sum(dones.values())}, changes delivered "
            f"more than once {sum(1 for n in starts.values() if n > 1)}, never "
            f"{len({f'{s}:paid' for s in self.sessions} - set(dones))}; all delivered "
            f"{self.waited_s:.1f} s after the last answer",
            f"- each change delivered exactly once: {'yes' if self.delivered_once() else 'NO'}",
        ]
        return lines


def missing() -> str | None:
    """Why the order flow cannot run here (no gcloud or Java for the emulators), or None."""
    return FirestoreEmulator.missing() or PubSubEmulator.missing()


@contextlib.contextmanager
def _stack(
    log_dir: Path, name: str
) -> Iterator[tuple[FirestoreEmulator, PubSubEmulator, StripeEmulator, IO[bytes], IO[bytes]]]:
    """The three emulators, and the logs `name`-api.log and `name`-worker.log."""
    firestore, pubsub = FirestoreEmulator(), PubSubEmulator()
    try:
        with ThreadPoolExecutor(2) as starting:  # each takes seconds to start: together
            for started in [starting.submit(firestore.start), starting.submit(pubsub.start)]:
                started.result()
    except BaseException:
        firestore.close()
        pubsub.close()
        raise
    with (
        firestore,
        pubsub,
        StripeEmulator(STRIPE_LATENCY_MS) as stripe,
        (log_dir / f"{name}-api.log").open("wb") as api_log,
        (log_dir / f"{name}-worker.log").open("wb") as worker_log,
    ):
        yield firestore, pubsub, stripe, api_log, worker_log


@contextlib.contextmanager
def _functions(
    api_env: dict[str, str], api_log: IO[bytes], worker_env: dict[str, str], worker_log: IO[bytes]
) -> Iterator[tuple[FunctionServer, FunctionServer]]:
    """checkout_api and fulfil_order, each in its own functions-framework, both serving."""
    with (
        FunctionServer(api_env, api_log) as api,
        FunctionServer(
            worker_env, worker_log, target="fulfil_order", signature_type="cloudevent"
        ) as worker,
    ):
        api.wait_ready("/")
        worker.wait_ready("/")
        yield api, worker


def measure(
    sessions: int = SESSIONS,
    connections: int = CONNECTIONS,
    warmup: int = WARMUP_SESSIONS,
    log_dir: Path = RESULTS,
) -> OrderFlow:
    log_dir.mkdir(parents=True, exist_ok=True)
    sink = log_dir / "order-flow-deliveries.txt"
    sink.unlink(missing_ok=True)
    with _stack(log_dir, "order-flow") as (firestore, pubsub, stripe, api_log, worker_log):
        pubsub.api.create_topic(PROJECT, TOPIC)
        pubsub.api.create_subscription(
            PROJECT, SUBSCRIPTION, TOPIC, ordering=False, ack_deadline=ACK_DEADLINE_S
        )
        ledger = {
            "ORDER_LEDGER": "firestore",
            "FIRESTORE_EMULATOR_HOST": firestore.host,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
        }
        api_env = {
            **ledger,
            "STRIPE_SECRET_KEY": BENCH_KEY,
            "STRIPE_API_BASE": stripe.url,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "ORDER_EVENTS_TOPIC": topic_path(PROJECT, TOPIC),
            "PUBSUB_EMULATOR_HOST": pubsub.host,
        }
        worker_env = {
            **ledger,
            "DELIVER_ORDER": "bench.delivery:hold",
            "BENCH_DELIVERY_SECONDS": str(DELIVERY_SECONDS),
            "BENCH_DELIVERY_SINK": str(sink),
        }
        with _functions(api_env, api_log, worker_env, worker_log) as (api, worker):
            push = EventarcPush(
                pubsub.host,
                subscription_path(PROJECT, SUBSCRIPTION),
                worker.url,
                concurrency=PUSH_CONCURRENCY,
            )
            with push:
                print(f"Creating {sessions + warmup} paid sessions ...", flush=True)
                paid = _paid_sessions(api.url, stripe, sessions + warmup)
                warm, measured_sessions = paid[:warmup], paid[warmup:]
                _send_all(api.port, warm, connections)  # unmeasured: connections, JIT
                print(f"Sending {3 * sessions} webhooks ({connections} clients) ...", flush=True)
                calls = stripe.calls()
                began = time.perf_counter()
                sent = _send_all(api.port, measured_sessions, connections)
                seconds = time.perf_counter() - began
                stripe_calls = stripe.calls() - calls
                ids = [session["id"] for session in paid]
                print("Waiting for the worker's deliveries ...", flush=True)
                waited = _wait_for_deliveries(sink, len(ids), max(s.answered_at for s in sent))
            pushes = list(push.deliveries)
    return OrderFlow(
        sent=sent,
        sessions=ids,
        stripe_calls=stripe_calls,
        seconds=seconds,
        runs=noted(sink),
        pushes=pushes,
        waited_s=waited,
        settings={"warmup": warmup, "connections": connections},
    )


def _paid_sessions(api_url: str, stripe: StripeEmulator, count: int) -> list[dict[str, Any]]:
    """Sessions created through the API (so they carry its marker), then paid in the emulator."""

    def paid(_: int) -> dict[str, Any]:
        created = http_json(api_url + CREATE, {"imageId": "bench-image"}, timeout=30)
        session_id = created["session_id"]
        url = f"{stripe.url}/_emulator/sessions/{session_id}/complete"
        session: dict[str, Any] = http_json(url, {"payment_status": "paid"}, timeout=30)
        return session

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(paid, range(count)))


def completed_event(session: dict[str, Any]) -> bytes:
    """`checkout.session.completed` as Stripe sends it: a snapshot of the session."""
    return snapshot_event(
        session, "checkout.session.completed", f"evt_bench{uuid.uuid4().hex[:20]}"
    )


def _send_all(port: int, sessions: list[dict[str, Any]], connections: int) -> list[Sent]:
    """Each session's event three times: first and a duplicate together, a duplicate later."""
    events = [(session["id"], completed_event(session)) for session in sessions]
    jobs = [(kind, sid, payload) for sid, payload in events for kind in KINDS[:2]]
    jobs += [(KINDS[2], sid, payload) for sid, payload in events]
    with ThreadPoolExecutor(connections) as pool:
        return list(pool.map(lambda job: _post(port, *job), jobs))


def _post(port: int, kind: str, session_id: str, payload: bytes) -> Sent:
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        "Stripe-Signature": sign_payload(payload, WEBHOOK_SECRET),
    }
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        started = time.perf_counter()
        connection.request("POST", WEBHOOK, body=payload, headers=headers)
        response = connection.getresponse()
        response.read()
        ms = (time.perf_counter() - started) * 1000
    finally:
        connection.close()
    return Sent(kind, session_id, response.status, ms, time.time())


def _wait_for_deliveries(sink: Path, changes: int, last_answer: float) -> float:
    """Until every change's delivery has ended (bounded), and a moment more for any second run;
    seconds from the last webhook answer until the last delivery ended."""
    deadline = time.monotonic() + 3 * DELIVERY_SECONDS + 120
    while time.monotonic() < deadline:
        if len({c for c, what, _ in noted(sink) if what == "done"}) >= changes:
            break
        threading.Event().wait(0.2)
    threading.Event().wait(2.0)  # a redelivery that would run a change twice starts by now
    ends = [at for _, what, at in noted(sink) if what == "done"]
    return max(ends) - last_answer if ends else float("nan")


@dataclass
class FaultyRun:
    """The faulty run's record: who paid when, every attempt, what dead-lettered, reconcile."""

    paid_at: dict[str, float]  # change id -> when its webhook was answered (unix time)
    runs: list[tuple[str, str, float]]  # the delivery sink: (change id, start|done|fail, time)
    dead_lettered: int  # messages in the dead-letter subscription before reconcile
    reconcile: dict[str, Any]  # its one JSON line
    reconcile_exit: int
    seconds: float  # from the first payment until the last delivery

    def lines(self) -> list[str]:
        done = Counter(c for c, what, _ in self.runs if what == "done")
        failed = Counter(c for c, what, _ in self.runs if what == "fail")
        last = {c: at for c, what, at in self.runs if what == "done"}
        waits = sorted(last[c] - self.paid_at[c] for c in self.paid_at if c in last)
        exact = set(done) == set(self.paid_at) and set(done.values()) == {1}

        def pct(p: float) -> float:
            return waits[min(len(waits) - 1, int(len(waits) * p))] if waits else float("nan")

        summary = self.reconcile
        return [
            f"Faulty order flow: {len(self.paid_at)} paid orders; DELIVER_ORDER fails "
            f"{FAULTY_FAIL_SHARE:.0%} of attempts at random and every attempt of "
            f"{FAULTY_DOWN_SHARE:.0%} of the changes until the downstream recovers; "
            f"{FAULTY_ATTEMPTS} delivery attempts, then the dead-letter topic.",
            "",
            f"- failed attempts {sum(failed.values())} (changes with one or more: {len(failed)}); "
            f"messages dead-lettered {self.dead_lettered}",
            f"- reconcile (exit {self.reconcile_exit}): changes_undelivered "
            f"{summary.get('changes_undelivered')}, changes_redelivered "
            f"{summary.get('changes_redelivered')}, dead_letters {summary.get('dead_letters')}",
            f"- successful runs per change: {dict(sorted(Counter(done.values()).items()))} "
            f"(runs: changes); never delivered {len(set(self.paid_at) - set(done))}; exactly "
            f"once each: {'yes' if exact else 'NO'}",
            f"- payment to delivery: p50 {pct(0.5):.1f} s, p90 {pct(0.9):.1f} s, max "
            f"{waits[-1] if waits else float('nan'):.1f} s (the dead-lettered ones wait for "
            f"reconcile); first payment to last delivery {self.seconds:.1f} s",
        ]

    def ok(self) -> bool:
        done = Counter(c for c, what, _ in self.runs if what == "done")
        return set(done) == set(self.paid_at) and set(done.values()) == {1}


def measure_faulty(sessions: int = FAULTY_SESSIONS, log_dir: Path = RESULTS) -> FaultyRun:
    log_dir.mkdir(parents=True, exist_ok=True)
    sink = log_dir / "order-flow-faulty-deliveries.txt"
    recovered = log_dir / "order-flow-faulty-recovered"
    sink.unlink(missing_ok=True)
    recovered.unlink(missing_ok=True)
    with _stack(log_dir, "order-flow-faulty") as (
        firestore,
        pubsub,
        stripe,
        api_log,
        worker_log,
    ):
        api_ = pubsub.api
        api_.create_topic(PROJECT, TOPIC)
        api_.create_topic(PROJECT, DEAD_LETTER_TOPIC)
        api_.create_subscription(
            PROJECT, DEAD_LETTER_SUBSCRIPTION, DEAD_LETTER_TOPIC, ordering=False
        )
        api_.create_subscription(
            PROJECT,
            SUBSCRIPTION,
            TOPIC,
            ordering=False,
            dead_letter_topic=DEAD_LETTER_TOPIC,
            max_delivery_attempts=FAULTY_ATTEMPTS,
            ack_deadline=10,
        )
        shared = {
            "ORDER_LEDGER": "firestore",
            "FIRESTORE_EMULATOR_HOST": firestore.host,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "ORDER_EVENTS_TOPIC": topic_path(PROJECT, TOPIC),
            "PUBSUB_EMULATOR_HOST": pubsub.host,
        }
        api_env = {
            **shared,
            "STRIPE_SECRET_KEY": BENCH_KEY,
            "STRIPE_API_BASE": stripe.url,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        worker_env = {
            **shared,
            "DELIVER_ORDER": "bench.delivery:flaky",
            "BENCH_DELIVERY_SECONDS": str(FAULTY_DELIVERY_SECONDS),
            "BENCH_DELIVERY_SINK": str(sink),
            "BENCH_FAIL_SHARE": str(FAULTY_FAIL_SHARE),
            "BENCH_DOWN_SHARE": str(FAULTY_DOWN_SHARE),
            "BENCH_RECOVERED": str(recovered),
        }
        with _functions(api_env, api_log, worker_env, worker_log) as (api, worker):
            push = EventarcPush(
                pubsub.host, subscription_path(PROJECT, SUBSCRIPTION), worker.url, concurrency=16
            )
            with push:
                print(f"Creating {sessions} paid sessions ...", flush=True)
                paid = _paid_sessions(api.url, stripe, sessions)
                print("Sending their webhooks ...", flush=True)
                events = [(s["id"], completed_event(s)) for s in paid]
                with ThreadPoolExecutor(CONNECTIONS) as pool:
                    sent = list(pool.map(lambda e: _post(api.port, KINDS[0], *e), events))
                paid_at = {f"{s.session_id}:paid": s.answered_at for s in sent if s.status == 200}
                print("Waiting until each change is delivered or dead-lettered ...", flush=True)
                dead = _wait_for_the_faults(pubsub, sink, set(paid_at))
                recovered.touch()  # the downstream recovers; then the hourly job runs
                print("Running python -m checkout reconcile ...", flush=True)
                result = subprocess.run(
                    [sys.executable, "-m", "checkout", "reconcile", "--days", "1"],
                    cwd=ROOT,
                    env=clean_env(**api_env, UNDELIVERED_GRACE_SECONDS="0", PYTHONPATH=str(ROOT)),
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=False,
                )
                line: dict[str, Any] = next(
                    (
                        json.loads(x)
                        for x in result.stdout.splitlines()
                        if "checkout_reconcile" in x
                    ),
                    {},
                )
                print("Waiting until every change is delivered ...", flush=True)
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    done = {c for c, what, _ in noted(sink) if what == "done"}
                    if done >= set(paid_at):
                        break
                    threading.Event().wait(0.2)
                threading.Event().wait(2.0)  # a second run, if any, would start by now
    runs = noted(sink)
    ends = [at for _, what, at in runs if what == "done"]
    return FaultyRun(
        paid_at=paid_at,
        runs=runs,
        dead_lettered=dead,
        reconcile=line,
        reconcile_exit=result.returncode,
        seconds=(max(ends) - min(paid_at.values())) if ends and paid_at else float("nan"),
    )


def _wait_for_the_faults(pubsub: PubSubEmulator, sink: Path, changes: set[str]) -> int:
    """Until every change is delivered or its message dead-lettered (bounded): how many were."""
    dead: set[str] = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for message in pubsub.api.pull(PROJECT, DEAD_LETTER_SUBSCRIPTION):
            dead.add(message["message"]["attributes"]["change_id"])
            # Put back: reconcile reads the backlog itself.
            pubsub.api.nack(PROJECT, DEAD_LETTER_SUBSCRIPTION, [message["ackId"]])
        done = {c for c, what, _ in noted(sink) if what == "done"}
        if done | dead >= changes:
            break
        threading.Event().wait(0.5)
    return len(dead)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.order_flow", description=__doc__)
    parser.add_argument("--sessions", type=int, default=SESSIONS)
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--faulty", action="store_true", help="the faulty run (issue 28)")
    args = parser.parse_args(argv)
    reason = missing()
    if reason:
        print(reason)
        return 2
    began, load = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()
    if args.faulty:
        faulty = measure_faulty(FAULTY_SESSIONS if args.sessions == SESSIONS else args.sessions)
        print(f"\n{began}, {os.cpu_count()} CPUs; load average at the start {load[0]:.2f}")
        print("\n".join(faulty.lines()))
        print(f"\n{'OK' if faulty.ok() else 'FAILED'}")
        return 0 if faulty.ok() else 1
    flow = measure(args.sessions, args.connections)
    print(
        f"\n{began}, {os.cpu_count()} CPUs; load average at the start {load[0]:.2f}, at the end "
        f"{os.getloadavg()[0]:.2f}"
    )
    print("\n".join(flow.lines()))
    ok = flow.errors() == 0 and flow.delivered_once()
    median = statistics.median(flow.latencies())
    print(f"\nMedian webhook {median:.1f} ms; {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
