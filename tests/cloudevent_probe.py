"""Throwaway CloudEvent functions for test_pubsub_emulator.py: each event they accept is
appended, as parsed by functions-framework, to the file CLOUDEVENT_PROBE_FILE names."""

from __future__ import annotations

import json
import os
from typing import Any

import functions_framework
import functions_framework.aio
from cloudevents.http import CloudEvent


def _record(event: CloudEvent) -> None:
    seen: dict[str, Any] = {
        "attributes": {key: str(value) for key, value in event.get_attributes().items()},
        "data": event.get_data(),
    }
    with open(os.environ["CLOUDEVENT_PROBE_FILE"], "a") as out:
        out.write(json.dumps(seen) + "\n")


@functions_framework.cloud_event
def record_event(event: CloudEvent) -> None:
    _record(event)


@functions_framework.aio.cloud_event
async def record_event_async(event: CloudEvent) -> None:
    _record(event)
