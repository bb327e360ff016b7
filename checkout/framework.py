"""What we change in functions-framework, uvicorn and the process, in one call: `install()`.

main.py makes it once, first. Each private symbol it relies on is checked before it is touched, so
that an upgrade which moves one fails the start, naming itself (docs/layout.md, docs/abuse.md).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import functions_framework.aio
import uvicorn.config
import uvicorn_worker
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from checkout.api import server
from checkout.errors import CheckoutError

_BUILDER = "_create_asgi_app_with_function"


class FrameworkChanged(RuntimeError, CheckoutError):
    """A pinned library no longer has what install() adjusts: an upgrade to review."""


def _changed(distribution: str, what: str) -> FrameworkChanged:
    version = importlib.metadata.version(distribution)
    return FrameworkChanged(
        f"{distribution} {version} no longer has {what}, which checkout/framework.py adjusts: "
        "review that module for this version, or keep the version requirements.txt pins"
    )


def check() -> None:
    """Raise FrameworkChanged, naming the library and version, if a symbol we adjust is gone."""
    builder = getattr(functions_framework.aio, _BUILDER, None)
    if builder is None or list(inspect.signature(builder).parameters)[:2] != [
        "function",
        "signature_type",
    ]:
        raise _changed("functions-framework", f"aio.{_BUILDER}(function, signature_type, ...)")
    worker = getattr(uvicorn_worker, "UvicornWorker", None)
    if not isinstance(getattr(worker, "CONFIG_KWARGS", None), dict):
        raise _changed("uvicorn-worker", "UvicornWorker.CONFIG_KWARGS (a dict)")
    config = inspect.signature(uvicorn.config.Config).parameters
    if not {"http", "proxy_headers"} <= set(config) or "FORWARDED_ALLOW_IPS" not in (
        inspect.getsource(uvicorn.config.Config.__init__)
    ):
        raise _changed("uvicorn", "Config(http=, proxy_headers=) reading FORWARDED_ALLOW_IPS")


def install() -> None:
    """Check, then make every adjustment below (once; a second call changes nothing)."""
    check()
    _import_stripe_without_default_clients()
    _answer_the_frameworks_errors_as_the_function()
    _bound_the_worker_and_trust_no_proxy()


def _import_stripe_without_default_clients() -> None:
    """Import the Stripe SDK first, with the HTTP libraries it picks a default client from hidden.

    stripe imports whichever of requests, httpx and aiohttp is installed as it is first imported.
    Every call of ours goes through our own transport (stripe_access/transport.py), so that only
    adds requests (about 45 ms) to every cold start. They stay importable for whoever needs them
    later (the Secret Manager client imports requests, with STRIPE_SECRET_NAME only).
    """
    if "stripe" in sys.modules:
        return
    hidden = [name for name in ("requests", "httpx", "aiohttp") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
    try:
        import stripe  # noqa: F401, PLC0415  # first, and only here, with the libraries hidden
    finally:
        for name in hidden:
            del sys.modules[name]


def _answer_the_frameworks_errors_as_the_function() -> None:
    """functions-framework's ASGI app answers a few requests itself, in plain text: GET /robots.txt
    and /favicon.ico (404), and methods outside its list, such as TRACE (405). Unlike its Flask app
    it has no errorhandler hook, so wrap the private function that builds the app and send its
    HTTP errors to the function it serves: they get the contract's JSON 404/405, as any other path
    and method do (tests/test_bad_input.py checks each of them).
    """
    build: Callable[..., Starlette] = getattr(functions_framework.aio, _BUILDER)
    if getattr(build, "answers_everything", False):
        return

    def answering_everything(
        function: Callable[[Request], Awaitable[Response]],
        signature_type: str,
        *args: Any,
        **kwargs: Any,
    ) -> Starlette:
        async def answer_as_the_function(request: Request, _error: Exception) -> Response:
            return await function(request)

        app = build(function, signature_type, *args, **kwargs)
        if signature_type == "http":  # fulfil_order's (cloudevent) errors are its own statuses
            app.add_exception_handler(HTTPException, answer_as_the_function)
        return app

    answering_everything.answers_everything = True  # type: ignore[attr-defined]
    setattr(functions_framework.aio, _BUILDER, answering_everything)


def _bound_the_worker_and_trust_no_proxy() -> None:
    """Who the client is stays our decision (TRUSTED_PROXY_HOPS, checkout/api/limits.py).

    uvicorn's proxy headers handling would replace the socket peer with X-Forwarded-For whenever
    the peer is in FORWARDED_ALLOW_IPS, loopback by default, which any local client or ingress
    sidecar is: off in the worker class functions-framework's gunicorn runs (read when gunicorn
    builds it, after main.py is imported), whatever the environment says. Its --debug mode serves
    with bare `uvicorn.run` instead, which reads FORWARDED_ALLOW_IPS as it starts: trust no proxy.
    """
    uvicorn_worker.UvicornWorker.CONFIG_KWARGS = {
        **uvicorn_worker.UvicornWorker.CONFIG_KWARGS,
        "proxy_headers": False,
        # Bounded connections, and JSON for what the parser refuses (api/server.py): uvicorn's
        # own protocol waits forever for a request's head or body, and takes a head of any size.
        "http": server.protocol(),
    }
    os.environ["FORWARDED_ALLOW_IPS"] = ""
