"""Cloud Run / functions-framework entry points: the checkout API, and the order worker."""

import os
from collections.abc import Awaitable, Callable
from typing import Any

import functions_framework.aio
import uvicorn_worker
from cloudevents.http import CloudEvent
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from checkout import server
from checkout.app import CheckoutApi, FulfilApi, exit_if_misconfigured

exit_if_misconfigured()

# This process's API and worker: each builds the service on first use, never at import.
api = CheckoutApi()
worker = FulfilApi()


@functions_framework.aio.http
async def checkout_api(request: Request) -> Response:
    """Dispatch to the checkout package (see checkout/routes.py for the endpoints)."""
    return await api.handle(request)


@functions_framework.aio.cloud_event
async def fulfil_order(cloud_event: CloudEvent) -> None:
    """Deliver one order change from the order topic (Eventarc; see checkout/worker.py)."""
    await worker.handle(cloud_event["id"], cloud_event.data)


# functions-framework's ASGI app answers a few requests itself, in plain text: GET /robots.txt and
# /favicon.ico (404), and methods outside its list, such as TRACE (405). Unlike its Flask app it
# has no errorhandler hook, so wrap the private function that builds the app (after importing this
# module) and send its HTTP errors to the function it serves too: they get the contract's JSON
# 404/405, as any other path and method do. tests/test_bad_input.py checks each of them.
_build_asgi_app: Callable[..., Starlette] = functions_framework.aio._create_asgi_app_with_function


def _asgi_app_answering_everything(
    function: Callable[[Request], Awaitable[Response]],
    signature_type: str,
    *args: Any,
    **kwargs: Any,
) -> Starlette:
    async def answer_as_the_function(request: Request, _error: Exception) -> Response:
        return await function(request)

    app = _build_asgi_app(function, signature_type, *args, **kwargs)
    if signature_type == "http":  # fulfil_order's (cloudevent) errors are its own statuses
        app.add_exception_handler(HTTPException, answer_as_the_function)
    return app


functions_framework.aio._create_asgi_app_with_function = _asgi_app_answering_everything

# Who the client is stays our decision (TRUSTED_PROXY_HOPS, checkout/limits.py): uvicorn's proxy
# headers handling would replace the socket peer with X-Forwarded-For whenever the peer is listed
# in FORWARDED_ALLOW_IPS, loopback by default, which any local client or ingress sidecar is. It is
# turned off in the worker class that functions-framework's gunicorn runs, whatever the
# environment says; the worker reads this when gunicorn builds it, after this module is imported.
uvicorn_worker.UvicornWorker.CONFIG_KWARGS = {
    **uvicorn_worker.UvicornWorker.CONFIG_KWARGS,
    "proxy_headers": False,
    # Bounded connections, and JSON for what the parser refuses (checkout/server.py): uvicorn's
    # own protocol waits forever for a request's head or body, and takes a head of any size.
    "http": server.protocol(),
}
# functions-framework's --debug mode (or DEBUG set) serves with bare `uvicorn.run` instead, whose
# settings read FORWARDED_ALLOW_IPS when it starts, after this import: there, trust no proxy.
os.environ["FORWARDED_ALLOW_IPS"] = ""
