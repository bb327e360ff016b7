"""What Eventarc does for a Pub/Sub trigger, locally: pull from a subscription on the emulator and
POST each message to a URL as a binary-mode CloudEvent; acknowledge on 2xx, nack otherwise.
How to run it and what differs from production: docs/pubsub.md."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from devtools.loopback import Running
from devtools.pubsub_emulator import PubSubApi, PubSubError, split_path

EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
# The message fields Eventarc passes on, as the pull gives them (empty ones are left out).
MESSAGE_FIELDS = ("data", "attributes", "messageId", "publishTime", "orderingKey")


def cloud_event_request(
    message: dict[str, Any], topic: str, subscription: str
) -> tuple[dict[str, str], bytes]:
    """The headers and body Eventarc POSTs for one Pub/Sub message (binary content mode).

    `message` is a received message's `message` (base64 `data`, `attributes`, `messageId`,
    `publishTime`, `orderingKey`); `topic` and `subscription` are full `projects/P/...` paths.
    """
    split_path(topic, "topics")
    split_path(subscription, "subscriptions")
    headers = {
        "ce-id": str(message["messageId"]),
        "ce-source": f"//pubsub.googleapis.com/{topic}",
        "ce-specversion": "1.0",
        "ce-type": EVENT_TYPE,
        "ce-time": str(message["publishTime"]),
        "Content-Type": "application/json",
    }
    body = {
        "message": {key: message[key] for key in MESSAGE_FIELDS if key in message},
        "subscription": subscription,
    }
    return headers, json.dumps(body).encode()


def _by_ordering_key(pulled: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Pulled messages grouped by ordering key, in pull order (no key: a group of its own)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for n, received in enumerate(pulled):
        key = received["message"].get("orderingKey") or f"#{n}"
        groups.setdefault(key, []).append(received)
    return list(groups.values())


@dataclass(frozen=True)
class Delivery:
    """One POST: the message, the answer's status (0: no answer), and whether it was acked."""

    message_id: str
    ack_id: str
    status: int
    acked: bool


class EventarcPush(Running):
    """Pull from `subscription`, push each message to `url`: `run_once()`, or `start()`/`stop()`."""

    def __init__(
        self,
        host: str,
        subscription: str,
        url: str,
        *,
        timeout: float = 60.0,
        poll_seconds: float = 0.1,
        concurrency: int = 1,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.project, self.subscription_id = split_path(subscription, "subscriptions")
        self.subscription = subscription
        self.url = url
        self.timeout = timeout
        self.poll_seconds = poll_seconds
        self.concurrency = concurrency
        self.api = PubSubApi(host)
        # ce-source names the topic: the subscription knows it.
        self.topic = str(self.api.get_subscription(self.project, self.subscription_id)["topic"])
        self.deliveries: list[Delivery] = []  # every POST so far, in order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> list[Delivery]:
        """Push every message available now; what happened to each.

        One after another, or with `concurrency` above 1 that many ordering keys at once (each
        key's messages in pull order).
        """
        pulled = self.api.pull(self.project, self.subscription_id)
        groups = _by_ordering_key(pulled)
        if self.concurrency == 1 or len(groups) < 2:
            return [self._push(received) for received in pulled]
        with ThreadPoolExecutor(min(self.concurrency, len(groups))) as pool:
            return [d for done in pool.map(self._push_all, groups) for d in done]

    def _push_all(self, group: list[dict[str, Any]]) -> list[Delivery]:
        return [self._push(received) for received in group]

    def _push(self, received: dict[str, Any]) -> Delivery:
        headers, body = cloud_event_request(received["message"], self.topic, self.subscription)
        request = urllib.request.Request(self.url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        except (OSError, TimeoutError):
            status = 0  # refused, reset or timed out: a failed delivery, as for Eventarc
        ack_id = received["ackId"]
        acked = 200 <= status < 300
        if acked:
            self.api.acknowledge(self.project, self.subscription_id, [ack_id])
        else:
            self.api.nack(self.project, self.subscription_id, [ack_id])
        delivery = Delivery(received["message"]["messageId"], ack_id, status, acked)
        self.deliveries.append(delivery)
        return delivery

    def start(self) -> None:
        """Push in a background thread until `stop()`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="eventarc-push", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        if self.concurrency > 1:
            self._pipelined_loop()
            return
        while not self._stop.is_set():
            try:
                pushed = self.run_once()
            except PubSubError as error:
                # The emulator stopped or restarted: keep trying, as Eventarc would.
                print(f"eventarc_push: {error}", file=sys.stderr, flush=True)
                pushed = []
            if not pushed:
                self._stop.wait(self.poll_seconds)

    def _pipelined_loop(self) -> None:
        """Up to `concurrency` ordering keys in flight; a free slot pulls at once, without
        waiting for the other POSTs (a slow delivery holds only its own slot)."""
        in_flight = 0
        lock = threading.Lock()

        def push_group(group: list[dict[str, Any]]) -> None:
            nonlocal in_flight
            try:
                self._push_all(group)
            except PubSubError as error:  # the ack or nack did not reach the emulator
                print(f"eventarc_push: {error}", file=sys.stderr, flush=True)
            finally:
                with lock:
                    in_flight -= 1

        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="eventarc-push") as pool:
            while not self._stop.is_set():
                with lock:
                    free = self.concurrency - in_flight
                if free == 0:
                    self._stop.wait(0.01)
                    continue
                try:
                    pulled = self.api.pull(self.project, self.subscription_id, max_messages=free)
                except PubSubError as error:
                    print(f"eventarc_push: {error}", file=sys.stderr, flush=True)
                    pulled = []
                groups = _by_ordering_key(pulled)
                with lock:
                    in_flight += len(groups)
                for group in groups:
                    pool.submit(push_group, group)
                if not pulled:
                    self._stop.wait(self.poll_seconds)

    def stop(self, seconds: float = 90.0) -> None:
        """Stop after the POST in flight, if any (bounded by `timeout`); joins the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(seconds)
        if thread.is_alive():
            raise RuntimeError(f"eventarc_push did not stop within {seconds} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscription", required=True, help="projects/P/subscriptions/S")
    parser.add_argument("--url", required=True, help="where the CloudEvent function listens")
    parser.add_argument(
        "--host",
        default=os.environ.get("PUBSUB_EMULATOR_HOST"),
        help="the emulator's host:port (default: PUBSUB_EMULATOR_HOST)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, help="POSTs in flight at once (default 1)"
    )
    args = parser.parse_args()
    if not args.host:
        raise SystemExit("set PUBSUB_EMULATOR_HOST or pass --host (the Pub/Sub emulator)")
    try:
        pusher = EventarcPush(args.host, args.subscription, args.url, concurrency=args.concurrency)
    except (ValueError, PubSubError) as error:
        raise SystemExit(str(error)) from None
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    print(f"pushing {args.subscription} ({pusher.topic}) to {args.url}", flush=True)
    seen = 0

    def report() -> None:
        nonlocal seen
        for delivery in pusher.deliveries[seen:]:
            outcome = "ack" if delivery.acked else "nack"
            print(f"message {delivery.message_id}: {delivery.status} {outcome}", flush=True)
            seen += 1

    with pusher, contextlib.suppress(KeyboardInterrupt):
        while not stopped.wait(0.2):
            report()
    report()  # the POST that was in flight when the signal came


if __name__ == "__main__":
    main()
