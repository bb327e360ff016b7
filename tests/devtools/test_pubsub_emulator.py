"""The Pub/Sub test infrastructure against Google's real emulator: the emulator and its helpers,
the `pubsub` fixture, and devtools/eventarc_push.py's CloudEvents, which functions-framework's
CloudEvent functions (sync and async) must accept as they accept Eventarc's."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from google.cloud.pubsub_v1 import PublisherClient  # type: ignore[import-untyped]
from google.cloud.pubsub_v1.types import PublisherOptions  # type: ignore[import-untyped]

from devtools.eventarc_push import EVENT_TYPE, EventarcPush, cloud_event_request
from devtools.pubsub_emulator import PubSubApi, PubSubEmulator, PubSubError, decode_data
from tests.pubsub_emulator import PubSub
from tests.support import ROOT, free_port, stop_process

# "Does not hang" bounds: generous, because the machine is shared; nothing here is timed.
WAIT = 30.0


def wait_for_messages(
    api: PubSubApi, project: str, subscription: str, seconds: float = WAIT
) -> list[dict[str, Any]]:
    """The next pull that returns anything (not acknowledged), or [] after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = api.pull(project, subscription)
        if found:
            return found
        time.sleep(0.05)
    return []


# --- the emulator, the REST helpers and the fixture ---


def test_publisher_client_with_ordering_reaches_the_subscription_in_key_order(
    pubsub: PubSub,
) -> None:
    # google-cloud-pubsub finds the emulator through PUBSUB_EMULATOR_HOST (set by the fixture).
    publisher = PublisherClient(publisher_options=PublisherOptions(enable_message_ordering=True))
    try:
        futures = [
            publisher.publish(
                pubsub.topic,
                json.dumps({"n": n}).encode(),
                ordering_key="cs_test_one",
                type="order.paid",
                change_id=f"cs_test_one:{n}",
            )
            for n in range(5)
        ]
        ids = [future.result(timeout=WAIT) for future in futures]
    finally:
        publisher.stop()

    messages = pubsub.messages(timeout=WAIT, count=5)
    assert [m.data for m in messages] == [{"n": n} for n in range(5)]
    assert [m.message_id for m in messages] == ids
    assert {m.ordering_key for m in messages} == {"cs_test_one"}
    assert messages[2].attributes == {"type": "order.paid", "change_id": "cs_test_one:2"}
    assert all(m.publish_time.endswith("Z") for m in messages)


def test_fixture_gives_each_test_an_ordered_subscription_and_an_env_without_a_project(
    pubsub: PubSub,
) -> None:
    subscription = pubsub.api.get_subscription(pubsub.project, pubsub.subscription_id)
    assert subscription["topic"] == f"projects/{pubsub.project}/topics/checkout-orders"
    assert subscription["enableMessageOrdering"] is True
    assert pubsub.env() == {
        "PUBSUB_EMULATOR_HOST": pubsub.host,
        "ORDER_EVENTS_TOPIC": f"projects/{pubsub.project}/topics/checkout-orders",
    }


def test_received_acknowledges_what_it_returns(pubsub: PubSub) -> None:
    first = pubsub.api.publish(pubsub.project, "checkout-orders", b'{"a": 1}', {"k": "v"}, "key")
    second = pubsub.api.publish(pubsub.project, "checkout-orders", b'{"a": 2}')
    received = pubsub.received(timeout=WAIT, count=2)
    assert [r["message"]["messageId"] for r in received] == [first, second]
    assert "orderingKey" not in received[1]["message"]  # empty fields are left out, as in prod
    # A nack of an acknowledged message is ignored; one of an outstanding message would bring it
    # straight back, so an empty pull afterwards proves both were acknowledged.
    pubsub.api.nack(pubsub.project, pubsub.subscription_id, [r["ackId"] for r in received])
    assert pubsub.received(timeout=0.5) == []


def dead_letter_setup(pubsub: PubSub, *, ordering: bool) -> str:
    """A `worker` subscription with a 5-attempt dead-letter policy; its message nacked 5 times."""
    api, project = pubsub.api, pubsub.project
    api.create_topic(project, "dead-letters")
    api.create_subscription(project, "dead-letters-sub", "dead-letters", ordering=False)
    api.create_subscription(
        project,
        "worker",
        "checkout-orders",
        ordering=ordering,
        dead_letter_topic="dead-letters",
        max_delivery_attempts=5,  # Pub/Sub's minimum
    )
    message_id = api.publish(project, "checkout-orders", b'{"x": 1}', {"type": "t"}, "cs_test_dl")
    attempts = []
    for _ in range(5):
        (received,) = wait_for_messages(api, project, "worker")
        assert received["message"]["messageId"] == message_id
        attempts.append(received["deliveryAttempt"])
        api.nack(project, "worker", [received["ackId"]])
    assert attempts == [1, 2, 3, 4, 5]
    return message_id


def test_dead_letter_topic_takes_a_message_after_the_maximum_delivery_attempts(
    pubsub: PubSub,
) -> None:
    api, project = pubsub.api, pubsub.project
    dead_letter_setup(pubsub, ordering=False)

    # The emulator forwards a dead letter when the subscription is next pulled: the worker's own
    # pulls (Eventarc's pushes) do that. Pull both until the dead letter arrives.
    dead_letters: list[dict[str, Any]] = []
    deadline = time.monotonic() + WAIT
    while not dead_letters and time.monotonic() < deadline:
        assert api.pull(project, "worker") == []  # never a sixth delivery
        dead_letters = api.pull(project, "dead-letters-sub")
    (dead,) = dead_letters
    assert decode_data(dead["message"]) == b'{"x": 1}'
    attributes = dead["message"]["attributes"]
    assert attributes["type"] == "t"
    assert attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert attributes["CloudPubSubDeadLetterSourceSubscription"] == "worker"
    assert api.pull(project, "worker") == []


def test_the_emulator_cannot_dead_letter_from_an_ordered_subscription(pubsub: PubSub) -> None:
    # A limitation of the emulator (0.8.20, gcloud 528), not of Pub/Sub, pinned here because
    # docs/pubsub.md relies on it: once an ordered subscription's message has used its attempts,
    # every pull of that subscription answers 500 and the dead-letter topic never gets it. So the
    # local worker subscription (`make pubsub-emulator`) is unordered.
    dead_letter_setup(pubsub, ordering=True)
    with pytest.raises(PubSubError) as broken:
        wait_for_messages(pubsub.api, pubsub.project, "worker")  # raises at the first 500
    assert broken.value.status == 500
    assert pubsub.api.pull(pubsub.project, "dead-letters-sub") == []


def test_rest_errors_name_the_problem(pubsub: PubSub) -> None:
    with pytest.raises(PubSubError) as missing:
        pubsub.api.pull(pubsub.project, "no-such-subscription")
    assert missing.value.status == 404
    with pytest.raises(PubSubError) as short:
        pubsub.api.create_topic(pubsub.project, "ab")  # ids need three characters or more
    assert short.value.status == 400


@pytest.mark.slow
def test_the_emulator_command_creates_the_documented_topics_and_stops_on_sigterm(
    pubsub_emulator_server: PubSubEmulator, tmp_path: Path
) -> None:
    # `make pubsub-emulator`, on a free port; the session's emulator only brings the skip rules.
    port = free_port()
    emulator = subprocess.Popen(
        [sys.executable, "-m", "devtools.pubsub_emulator", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        exports: dict[str, str] = {}
        while len(exports) < 2:
            line = emulator.stdout.readline()
            assert line, "the emulator command exited before printing its variables"
            if line.startswith("export "):
                name, value = line.removeprefix("export ").strip().split("=", 1)
                exports[name] = value
        assert exports == {
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{port}",
            "ORDER_EVENTS_TOPIC": "projects/local-project/topics/checkout-orders",
        }
        api = PubSubApi(exports["PUBSUB_EMULATOR_HOST"])
        worker = api.get_subscription("local-project", "checkout-orders-worker")
        assert worker["topic"] == exports["ORDER_EVENTS_TOPIC"]
        assert worker["deadLetterPolicy"] == {
            "deadLetterTopic": "projects/local-project/topics/checkout-orders-dead-letter",
            "maxDeliveryAttempts": 5,
        }
        api.publish("local-project", "checkout-orders", b"{}")
        assert wait_for_messages(api, "local-project", "checkout-orders-worker")
    finally:
        # SIGTERM: the command's own handler stops gcloud and its Java child (their own group,
        # which a kill of the command, if it hangs, would not reach).
        stop_process(emulator, WAIT * 2)
    assert emulator.returncode == 0
    with pytest.raises(PubSubError) as stopped:
        PubSubApi(f"127.0.0.1:{port}", timeout=5).get_subscription("local-project", "x-y-z")
    assert stopped.value.status == 0


@pytest.mark.slow
def test_stop_refuses_connections_and_a_restart_serves_again_empty(pubsub: PubSub) -> None:
    pubsub.emulator.stop()
    with pytest.raises(PubSubError) as down:
        pubsub.api.publish(pubsub.project, "checkout-orders", b"{}")
    assert down.value.status == 0  # unreachable, not an HTTP answer
    pubsub.emulator.start()
    with pytest.raises(PubSubError) as gone:
        pubsub.api.publish(pubsub.project, "checkout-orders", b"{}")
    assert gone.value.status == 404  # in memory only: the topic went with the old process
    pubsub.api.create_topic(pubsub.project, "checkout-orders")
    assert pubsub.api.publish(pubsub.project, "checkout-orders", b"{}")


# --- cloud_event_request: Eventarc's request for one message ---


def test_cloud_event_request_is_eventarcs_binary_mode_event() -> None:
    message = {
        "data": base64.b64encode(b'{"type": "order.paid"}').decode(),
        "attributes": {"type": "order.paid"},
        "messageId": "42",
        "publishTime": "2026-12-02T10:00:00.123Z",
        "orderingKey": "cs_test_a",
    }
    headers, body = cloud_event_request(
        {**message, "extra": "not passed on"},
        "projects/p1/topics/checkout-orders",
        "projects/p1/subscriptions/worker",
    )
    assert headers == {
        "ce-id": "42",
        "ce-source": "//pubsub.googleapis.com/projects/p1/topics/checkout-orders",
        "ce-specversion": "1.0",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "ce-time": "2026-12-02T10:00:00.123Z",
        "Content-Type": "application/json",
    }
    assert json.loads(body) == {
        "message": message,
        "subscription": "projects/p1/subscriptions/worker",
    }


@pytest.mark.parametrize(
    ("topic", "subscription"),
    [("checkout-orders", "projects/p/subscriptions/s1"), ("projects/p/topics/t1", "s1")],
)
def test_cloud_event_request_wants_full_paths(topic: str, subscription: str) -> None:
    message = {"data": "", "messageId": "1", "publishTime": "2026-12-02T10:00:00Z"}
    with pytest.raises(ValueError, match="projects/PROJECT/"):
        cloud_event_request(message, topic, subscription)


# --- eventarc_push, against a tiny local HTTP server ---


class Sink:
    """A local HTTP server that records each POST (header names in lower case) and answers the
    statuses it is given; while `hold` is set, it answers nothing until `release()`."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.statuses: list[int] = []  # answered in turn; 200 once they run out
        self.arrived = threading.Condition()
        self.hold = False
        self.released = threading.Event()
        self.in_flight: list[bytes] = []  # the bodies of the POSTs not yet answered
        self.in_flight_history: list[list[bytes]] = []  # in_flight, each time it grew
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {key.lower(): value for key, value in self.headers.items()}
                with sink.arrived:
                    sink.requests.append((self.path, headers, body))
                    status = sink.statuses.pop(0) if sink.statuses else 200
                    sink.in_flight.append(body)
                    sink.in_flight_history.append(list(sink.in_flight))
                    sink.arrived.notify_all()
                if sink.hold:
                    sink.released.wait(WAIT)
                with sink.arrived:
                    sink.in_flight.remove(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(
        self, count: int, seconds: float = WAIT
    ) -> list[tuple[str, dict[str, str], bytes]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.requests) >= count, seconds)
            return list(self.requests)

    def wait_in_flight(self, count: int, seconds: float = WAIT) -> list[bytes]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.in_flight) >= count, seconds)
            return list(self.in_flight)

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    yield server
    server.close()


def test_push_posts_the_exact_cloud_event_and_acknowledges_a_2xx(
    pubsub: PubSub, sink: Sink
) -> None:
    message_id = pubsub.api.publish(
        pubsub.project, "checkout-orders", b'{"change_id": "cs_test_b:paid"}', {"a": "b"}, "cs_b"
    )
    pusher = EventarcPush(pubsub.host, pubsub.subscription, sink.url)
    (delivery,) = wait_for_deliveries(pusher)
    assert (delivery.message_id, delivery.status, delivery.acked) == (message_id, 200, True)

    ((path, headers, body),) = sink.requests
    assert path == "/events"
    ce = {k: v for k, v in headers.items() if k.startswith("ce-")}
    published = json.loads(body)["message"]
    assert ce == {
        "ce-id": message_id,
        "ce-source": f"//pubsub.googleapis.com/projects/{pubsub.project}/topics/checkout-orders",
        "ce-specversion": "1.0",
        "ce-type": EVENT_TYPE,
        "ce-time": published["publishTime"],
    }
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "message": {
            "data": base64.b64encode(b'{"change_id": "cs_test_b:paid"}').decode(),
            "attributes": {"a": "b"},
            "messageId": message_id,
            "publishTime": published["publishTime"],
            "orderingKey": "cs_b",
        },
        "subscription": pubsub.subscription,
    }
    # Acknowledged: a nack now is ignored, where an outstanding message would come straight back.
    pubsub.api.nack(pubsub.project, pubsub.subscription_id, [delivery.ack_id])
    assert pubsub.received(timeout=0.5) == []


def wait_for_deliveries(pusher: EventarcPush, seconds: float = WAIT) -> list:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done = pusher.run_once()
        if done:
            return done
        time.sleep(0.05)
    return []


@pytest.mark.parametrize("failure", [500, 404, 429])
def test_push_nacks_a_non_2xx_and_the_redelivery_is_pushed_again(
    pubsub: PubSub, sink: Sink, failure: int
) -> None:
    message_id = pubsub.api.publish(pubsub.project, "checkout-orders", b"{}")
    sink.statuses = [failure]
    pusher = EventarcPush(pubsub.host, pubsub.subscription, sink.url)
    (first,) = wait_for_deliveries(pusher)
    assert (first.message_id, first.status, first.acked) == (message_id, failure, False)
    (second,) = wait_for_deliveries(pusher)  # back at once: nacked, not left outstanding
    assert (second.message_id, second.status, second.acked) == (message_id, 200, True)
    assert [headers["ce-id"] for _, headers, _ in sink.requests] == [message_id, message_id]
    assert pubsub.received(timeout=0.5) == []


def test_push_nacks_when_nothing_listens(pubsub: PubSub) -> None:
    message_id = pubsub.api.publish(pubsub.project, "checkout-orders", b"{}")
    pusher = EventarcPush(pubsub.host, pubsub.subscription, f"http://127.0.0.1:{free_port()}/")
    (delivery,) = wait_for_deliveries(pusher)
    assert (delivery.message_id, delivery.status, delivery.acked) == (message_id, 0, False)
    (again,) = pubsub.received(timeout=WAIT, count=1)
    assert again["message"]["messageId"] == message_id


def test_push_command_pushes_until_sigterm(pubsub: PubSub, sink: Sink) -> None:
    command = [sys.executable, "-m", "devtools.eventarc_push", "--subscription"]
    command += [pubsub.subscription, "--url", sink.url]
    env = {"PATH": str(Path(sys.executable).parent), "PUBSUB_EMULATOR_HOST": pubsub.host}
    pusher = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        message_id = pubsub.api.publish(pubsub.project, "checkout-orders", b"{}")
        (request,) = sink.wait_for(1)
        assert request[1]["ce-id"] == message_id
    finally:
        output, _ = stop_process(pusher, WAIT)
    assert pusher.returncode == 0, output
    assert f"message {message_id}: 200 ack" in output


def test_push_thread_delivers_in_order_and_stops_cleanly(pubsub: PubSub, sink: Sink) -> None:
    pusher = EventarcPush(pubsub.host, pubsub.subscription, sink.url)
    with pusher:
        for n in range(3):
            pubsub.api.publish(pubsub.project, "checkout-orders", b"%d" % n, None, "cs_order")
        posted = sink.wait_for(3)
    assert [base64.b64decode(json.loads(body)["message"]["data"]) for *_, body in posted] == [
        b"0",
        b"1",
        b"2",
    ]
    assert [d.acked for d in pusher.deliveries] == [True, True, True]
    # Stopped: a message published now stays on the subscription.
    late = pubsub.api.publish(pubsub.project, "checkout-orders", b"late")
    (waiting,) = pubsub.received(timeout=WAIT, count=1)
    assert waiting["message"]["messageId"] == late
    assert len(sink.requests) == 3


def test_push_with_concurrency_holds_several_keys_at_once_and_one_keys_messages_in_order(
    pubsub: PubSub, sink: Sink
) -> None:
    # The fixture's subscription is ordered: the emulator hands out a key's next message only
    # once the one before it is acknowledged, so a slow POST holds back its own key alone.
    for data, key in [(b"a0", "cs_a"), (b"b", "cs_b"), (b"a1", "cs_a"), (b"c", "cs_c")]:
        pubsub.api.publish(pubsub.project, "checkout-orders", data, None, key)
    pubsub.api.publish(pubsub.project, "checkout-orders", b"a2", None, "cs_a")
    sink.hold = True
    with EventarcPush(pubsub.host, pubsub.subscription, sink.url, concurrency=4) as pusher:
        held = sink.wait_in_flight(3)
        assert sorted(data_of(body) for body in held) == [b"a0", b"b", b"c"]
        sink.release()
        posted = sink.wait_for(5)
        for _ in range(int(WAIT / 0.05)):  # until the last answer's ack is recorded (bounded)
            if len(pusher.deliveries) == 5:
                break
            time.sleep(0.05)
    assert [data for data in map(data_of, (body for *_, body in posted)) if data[:1] == b"a"] == [
        b"a0",
        b"a1",
        b"a2",
    ]
    for in_flight in sink.in_flight_history:  # never two of one key's POSTs at once
        assert len([body for body in in_flight if data_of(body)[:1] == b"a"]) <= 1
    assert [d.acked for d in pusher.deliveries] == [True] * 5
    assert pubsub.received(timeout=0.5) == []


def data_of(body: bytes) -> bytes:
    return base64.b64decode(json.loads(body)["message"]["data"])


# --- functions-framework accepts what eventarc_push sends ---


class CloudEventServer:
    """`functions-framework --signature-type cloudevent` serving tests/cloudevent_probe.py."""

    def __init__(self, target: str, directory: Path) -> None:
        self.events = directory / "events.jsonl"
        self.events.touch()
        self.log = directory / "server.log"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        self._output = self.log.open("wb")
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "functions-framework"),
                "--source",
                str(ROOT / "tests" / "cloudevent_probe.py"),
                "--target",
                target,
                "--signature-type",
                "cloudevent",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=ROOT,
            env={
                "PATH": str(Path(sys.executable).parent),
                "CLOUDEVENT_PROBE_FILE": str(self.events),
                "PYTHONUNBUFFERED": "1",
            },
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"did not start: {self.log.read_text()}"
            try:
                urllib.request.urlopen(self.url, timeout=1)
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer (GET is not a CloudEvent) means it is serving
            except OSError:
                time.sleep(0.05)

    def accepted(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.events.read_text().splitlines()]

    def stop(self) -> None:
        stop_process(self.process, WAIT)
        self._output.close()


@pytest.fixture(params=["record_event", "record_event_async"])
def cloud_event_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[CloudEventServer]:
    server = CloudEventServer(request.param, tmp_path)
    yield server
    server.stop()


def test_functions_frameworks_cloud_event_function_accepts_the_pushed_event(
    pubsub: PubSub, cloud_event_server: CloudEventServer
) -> None:
    message_id = pubsub.api.publish(
        pubsub.project, "checkout-orders", b'{"type": "order.paid"}', {"type": "order.paid"}, "k1"
    )
    pusher = EventarcPush(pubsub.host, pubsub.subscription, cloud_event_server.url)
    (delivery,) = wait_for_deliveries(pusher)
    assert (delivery.status, delivery.acked) == (200, True), cloud_event_server.log.read_text()

    (event,) = cloud_event_server.accepted()
    attributes = event["attributes"]
    assert attributes["id"] == message_id
    assert attributes["type"] == EVENT_TYPE
    assert attributes["specversion"] == "1.0"
    assert attributes["source"] == (
        f"//pubsub.googleapis.com/projects/{pubsub.project}/topics/checkout-orders"
    )
    data = event["data"]
    assert data["subscription"] == pubsub.subscription
    assert data["message"]["messageId"] == message_id
    assert data["message"]["attributes"] == {"type": "order.paid"}
    assert data["message"]["orderingKey"] == "k1"
    assert base64.b64decode(data["message"]["data"]) == b'{"type": "order.paid"}'


@pytest.mark.slow
def test_functions_framework_refuses_a_request_that_is_not_a_cloud_event(
    cloud_event_server: CloudEventServer,
) -> None:
    # The same server, sent a body with no CloudEvent headers at all: so the acceptance above
    # depends on the headers cloud_event_request() writes.
    request = urllib.request.Request(
        cloud_event_server.url,
        data=b"not json",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=WAIT)
    assert 400 <= refused.value.code < 500  # 400 from the async variant, 415 from the sync one
    assert cloud_event_server.accepted() == []
