"""Google's Pub/Sub emulator (`gcloud beta emulators pubsub start`) on loopback, with REST helpers.

`python -m devtools.pubsub_emulator --port 8087` runs one with docs/pubsub.md's topics."""

from __future__ import annotations

import argparse
import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from devtools.gcloud_emulator import GcloudEmulator

READY_LINE = b"Server started, listening on"

# What `make pubsub-emulator` creates (docs/pubsub.md); unordered, because the emulator cannot
# dead-letter from an ordered subscription (tests/devtools/test_pubsub_emulator.py pins that).
LOCAL_PROJECT = "local-project"
LOCAL_TOPIC = "checkout-orders"
LOCAL_SUBSCRIPTION = "checkout-orders-worker"
LOCAL_DEAD_LETTER_TOPIC = "checkout-orders-dead-letter"
LOCAL_DEAD_LETTER_SUBSCRIPTION = "checkout-orders-dead-letter-sub"
LOCAL_MAX_DELIVERY_ATTEMPTS = 5  # Pub/Sub's minimum; the deploy uses 10


class PubSubError(RuntimeError):
    """The emulator answered a REST call with an error (or could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Pub/Sub emulator: {status} {message}")
        self.status = status
        self.message = message


class PubSubApi:
    """The emulator's REST API (`/v1/projects/P/...`) over urllib: no client library needed."""

    def __init__(self, host: str, timeout: float = 30.0) -> None:
        self.host = host
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://{self.host}/v1/{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raise PubSubError(error.code, _error_message(error.read())) from None
        except (OSError, TimeoutError) as error:
            raise PubSubError(0, f"unreachable at {self.host}: {error}") from None
        return json.loads(raw) if raw.strip() else {}

    def create_topic(self, project: str, topic: str) -> dict[str, Any]:
        return self.call("PUT", topic_path(project, topic), {})

    def create_subscription(
        self,
        project: str,
        subscription: str,
        topic: str,
        *,
        ordering: bool = True,
        dead_letter_topic: str | None = None,
        max_delivery_attempts: int | None = None,
        ack_deadline: int = 10,
    ) -> dict[str, Any]:
        """A pull subscription on `topic` (an id in `project`, or a full `projects/P/topics/T`)."""
        body: dict[str, Any] = {
            "topic": _full(project, "topics", topic),
            "ackDeadlineSeconds": ack_deadline,
            "enableMessageOrdering": ordering,
        }
        if dead_letter_topic is not None:
            dead_letters = _full(project, "topics", dead_letter_topic)
            policy: dict[str, Any] = {"deadLetterTopic": dead_letters}
            if max_delivery_attempts is not None:
                policy["maxDeliveryAttempts"] = max_delivery_attempts
            body["deadLetterPolicy"] = policy
        return self.call("PUT", subscription_path(project, subscription), body)

    def get_subscription(self, project: str, subscription: str) -> dict[str, Any]:
        return self.call("GET", subscription_path(project, subscription))

    def publish(
        self,
        project: str,
        topic: str,
        data: bytes,
        attributes: dict[str, str] | None = None,
        ordering_key: str | None = None,
    ) -> str:
        """Publish one message; its messageId."""
        message: dict[str, Any] = {"data": base64.b64encode(data).decode()}
        if attributes:
            message["attributes"] = attributes
        if ordering_key:
            message["orderingKey"] = ordering_key
        answer = self.call("POST", f"{topic_path(project, topic)}:publish", {"messages": [message]})
        (message_id,) = answer["messageIds"]
        return str(message_id)

    def pull(
        self, project: str, subscription: str, max_messages: int = 100
    ) -> list[dict[str, Any]]:
        """The messages available now, as received messages (`ackId`, `message`, ...).

        Always `returnImmediately`: the emulator's waiting pull holds the request for about 90 s
        when there is nothing, and a client that gives up on it first can still be handed a
        message, which then stays outstanding (invisible) until its ack deadline passes.
        """
        answer = self.call(
            "POST",
            f"{subscription_path(project, subscription)}:pull",
            {"maxMessages": max_messages, "returnImmediately": True},
        )
        return list(answer.get("receivedMessages", []))

    def acknowledge(self, project: str, subscription: str, ack_ids: list[str]) -> None:
        if ack_ids:
            path = f"{subscription_path(project, subscription)}:acknowledge"
            self.call("POST", path, {"ackIds": ack_ids})

    def modify_ack_deadline(
        self, project: str, subscription: str, ack_ids: list[str], seconds: int
    ) -> None:
        """0 seconds is a nack: the message is redelivered at once (a delivery attempt spent)."""
        if ack_ids:
            path = f"{subscription_path(project, subscription)}:modifyAckDeadline"
            self.call("POST", path, {"ackIds": ack_ids, "ackDeadlineSeconds": seconds})

    def nack(self, project: str, subscription: str, ack_ids: list[str]) -> None:
        self.modify_ack_deadline(project, subscription, ack_ids, 0)


def topic_path(project: str, topic: str) -> str:
    return f"projects/{project}/topics/{topic}"


def subscription_path(project: str, subscription: str) -> str:
    return f"projects/{project}/subscriptions/{subscription}"


def split_path(path: str, kind: str) -> tuple[str, str]:
    """`projects/P/<kind>/NAME` -> (P, NAME); ValueError otherwise."""
    parts = path.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != kind or "" in parts:
        raise ValueError(f"expected projects/PROJECT/{kind}/NAME, not {path!r}")
    return parts[1], parts[3]


def decode_data(message: dict[str, Any]) -> bytes:
    return base64.b64decode(message.get("data", ""))


def _full(project: str, kind: str, name: str) -> str:
    return name if name.startswith("projects/") else f"projects/{project}/{kind}/{name}"


def _error_message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace")[:200]


class PubSubEmulator(GcloudEmulator):
    """One emulator process group; start, stop and restart it on the same port."""

    name = "Pub/Sub"
    command = ("beta", "emulators", "pubsub", "start")
    host_variable = "PUBSUB_EMULATOR_HOST"

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        super().__init__(port, log_path)
        self.api = PubSubApi(self.host)

    def _ready(self, log_offset: int) -> bool:
        with self.log_path.open("rb") as log:
            log.seek(log_offset)
            started = READY_LINE in log.read()
        return started and self.accepts_connections()


def create_local_topics(api: PubSubApi, project: str = LOCAL_PROJECT) -> None:
    """docs/pubsub.md's setup: the topic, the worker's subscription, and the dead-letter path."""
    api.create_topic(project, LOCAL_TOPIC)
    api.create_topic(project, LOCAL_DEAD_LETTER_TOPIC)
    api.create_subscription(
        project,
        LOCAL_SUBSCRIPTION,
        LOCAL_TOPIC,
        ordering=False,
        dead_letter_topic=LOCAL_DEAD_LETTER_TOPIC,
        max_delivery_attempts=LOCAL_MAX_DELIVERY_ATTEMPTS,
    )
    api.create_subscription(
        project, LOCAL_DEAD_LETTER_SUBSCRIPTION, LOCAL_DEAD_LETTER_TOPIC, ordering=False
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8087)
    parser.add_argument("--project", default=LOCAL_PROJECT)
    args = parser.parse_args()

    def ready(emulator: PubSubEmulator) -> list[str]:
        create_local_topics(emulator.api, args.project)
        return [
            f"export ORDER_EVENTS_TOPIC={topic_path(args.project, LOCAL_TOPIC)}",
            f"# worker subscription: {subscription_path(args.project, LOCAL_SUBSCRIPTION)}",
            f"# dead letters: {subscription_path(args.project, LOCAL_DEAD_LETTER_SUBSCRIPTION)}",
            f"# emulator log: {emulator.log_path}",
        ]

    PubSubEmulator.serve(args.port, ready)


if __name__ == "__main__":
    main()
