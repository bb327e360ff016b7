"""One cold start in one process, for instruction counts (bench/cold_start.py --instructions).

    python first_create.py service   # in a deployed copy: import main, serve one create
    python first_create.py bare      # bench/hello_world_async.py: import it, serve one GET

Serves through functions-framework's own ASGI app, as its server would, with the Stripe emulator
at STRIPE_API_BASE; exits 1 unless the answer is 200. What gunicorn and uvicorn do to start is
the same for both, and left out; the worker class they import is in both.
"""

import asyncio
import sys

import functions_framework.aio
import uvicorn_worker  # noqa: F401  # gunicorn imports it before forking, for either function


async def serve_one(app, method: str, path: str, body: bytes) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client stays connected

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"]


def main() -> int:
    if sys.argv[1] == "service":
        app = functions_framework.aio.create_asgi_app("checkout_api", "main.py")
        status = asyncio.run(serve_one(app, "POST", "/api/checkout/embedded-session", b"{}"))
    else:
        app = functions_framework.aio.create_asgi_app("hello", "hello_world_async.py")
        status = asyncio.run(serve_one(app, "GET", "/", b""))
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
