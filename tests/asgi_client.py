"""A test client for the ASGI app, shaped like Flask's, so the HTTP-level tests read as before.

The app runs on one event loop in a background thread for the whole session, as it runs on one
loop per gunicorn worker: the Stripe connection pool lives on that loop and is reused across
requests. Any number of test threads may send requests at once; they are served concurrently.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote, urlencode


class Headers:
    """Response headers as werkzeug's: looked up in any case, iterated as (Name, value) pairs.

    ASGI servers send names in lower case; iteration gives them in the usual Title-Case, so a
    test that scans the names for a prefix reads the same as with Flask's client.
    """

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._items = [(_title(n.decode("latin-1")), v.decode("latin-1")) for n, v in raw]

    def get_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self._items if key.lower() == wanted]

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.get_all(name)
        return values[0] if values else default

    def __getitem__(self, name: str) -> str:
        values = self.get_all(name)
        if not values:
            raise KeyError(name)
        return values[0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.get_all(name))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)


def _title(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


class Answer:
    """A response, with the Flask test response's accessors that the tests use."""

    def __init__(self, status: int, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status_code = status
        self.headers = Headers(raw=raw_headers)
        self._body = body

    def get_data(self, as_text: bool = False) -> bytes | str:
        return self._body.decode("utf-8", "replace") if as_text else self._body

    def get_json(self) -> Any:
        return json.loads(self._body)

    @property
    def json(self) -> Any:
        return self.get_json()


class AsgiApp:
    """ASGI apps served on one event loop thread; `test_client()` makes clients for the app
    `serve` was last given."""

    def __init__(self) -> None:
        self.app: Any = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="asgi-app", daemon=True)
        self._thread.start()

    def serve(self, app: Any) -> None:
        self.app = app

    def test_client(self) -> Client:
        return Client(self)

    def request(self, scope: dict[str, Any], body: bytes, timeout: float = 60) -> Answer:
        future = asyncio.run_coroutine_threadsafe(self._serve(scope, body), self.loop)
        return future.result(timeout)

    def close(self) -> None:
        # The tasks still on the loop (closing a Stripe pool, a delivery after its answer) end
        # before it stops. Generous bound: a hang, not a time.
        try:
            asyncio.run_coroutine_threadsafe(_others_done(), self.loop).result(60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()

    async def _serve(self, scope: dict[str, Any], body: bytes) -> Answer:
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        finished = asyncio.Event()
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop()
            await finished.wait()  # as a server does: the client leaves once it has the answer
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    finished.set()

        await self.app(scope, receive, send)
        finished.set()
        body_out = b"" if scope["method"] == "HEAD" else b"".join(chunks)
        return Answer(start["status"], list(start.get("headers", [])), body_out)


async def _others_done() -> None:
    """Return once every other task on this loop is done, and any task those started."""
    this = asyncio.current_task()
    # A pool closed from another thread (close_soon) is closed by a callback queued before
    # this task was: its task is in all_tasks() by the time this one runs.
    while others := asyncio.all_tasks() - {this}:
        await asyncio.wait(others)


class Client:
    """`get`, `post`, `options`, `open` with Flask's keyword arguments (query_string, data, json,
    content_type, headers)."""

    def __init__(self, app: AsgiApp) -> None:
        self._app = app

    def open(
        self,
        path: str,
        method: str = "GET",
        *,
        query_string: Mapping[str, str] | str | None = None,
        data: bytes | str | None = None,
        json: Any = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        path, _, query = path.partition("?")
        if query_string is not None:
            query = query_string if isinstance(query_string, str) else urlencode(query_string)
        if json is not None:
            data = _dumps(json)
            content_type = content_type or "application/json"
        body = data.encode() if isinstance(data, str) else data or b""
        sent = [("host", "localhost")]
        if content_type is not None:
            sent.append(("content-type", content_type))
        if data is not None or method in ("POST", "PUT", "PATCH"):
            sent.append(("content-length", str(len(body))))
        sent += [(name.lower(), value) for name, value in (headers or {}).items()]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": unquote(path),
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(n.encode("latin-1"), v.encode("latin-1")) for n, v in sent],
            "client": ("127.0.0.1", 40000),
            "server": ("localhost", 80),
            "state": {},
        }
        return self._app.request(scope, body)

    def get(self, path: str, **kwargs: Any) -> Answer:
        return self.open(path, "GET", **kwargs)

    def post(self, path: str, **kwargs: Any) -> Answer:
        return self.open(path, "POST", **kwargs)

    def options(self, path: str, **kwargs: Any) -> Answer:
        return self.open(path, "OPTIONS", **kwargs)


def _dumps(value: Any) -> str:
    return json.dumps(value)
