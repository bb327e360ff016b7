"""What we change in functions-framework, uvicorn, logging and the process, in one call: install().

main.py makes it first; each private symbol is checked before it is touched (docs/abuse.md)."""

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
from checkout.logs import setup_logging

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
    setup_logging()  # the process's log lines: JSON on stdout (checkout/logs.py)
    _import_stripe_without_default_clients()
    _answer_the_frameworks_errors_as_the_function()
    _bound_the_worker_and_trust_no_proxy()


def _import_stripe_without_default_clients() -> None:
    """Import the Stripe SDK first, with the HTTP libraries it picks a default client from hidden:
    we use our own transport, and they cost cold start (docs/performance.md "Cold start")."""
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
    """Send the HTTP errors functions-framework's ASGI app answers itself (/robots.txt, TRACE...)
    to the function, for the contract's JSON: the app has no errorhandler hook to do it with."""
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
    """Who the client is stays our decision (TRUSTED_PROXY_HOPS): uvicorn's proxy headers off,
    under gunicorn and in --debug's bare uvicorn alike (docs/abuse.md)."""
    uvicorn_worker.UvicornWorker.CONFIG_KWARGS = {
        **uvicorn_worker.UvicornWorker.CONFIG_KWARGS,
        "proxy_headers": False,
        # Bounded connections, and JSON for what the parser refuses (api/server.py): uvicorn's
        # own protocol waits forever for a request's head or body, and takes a head of any size.
        "http": server.protocol(),
    }
    os.environ["FORWARDED_ALLOW_IPS"] = ""
