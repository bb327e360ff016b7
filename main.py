"""Cloud Run / functions-framework entry points: the checkout API, and the order worker."""

import functions_framework.aio
from cloudevents.http import CloudEvent
from starlette.requests import Request
from starlette.responses import Response

from checkout import framework

# First, before anything imports stripe; then the framework's adjustments (checkout/framework.py).
framework.install()

from checkout.api.app import CheckoutApi  # noqa: E402
from checkout.api.fulfil import FulfilApi  # noqa: E402
from checkout.startup import exit_if_misconfigured  # noqa: E402

exit_if_misconfigured()

# This process's API and worker: each builds its parts on first use, never at import.
api = CheckoutApi()
worker = FulfilApi()


@functions_framework.aio.http
async def checkout_api(request: Request) -> Response:
    """Dispatch to the checkout package (see checkout/api/routes.py for the endpoints)."""
    return await api.handle(request)


@functions_framework.aio.cloud_event
async def fulfil_order(cloud_event: CloudEvent) -> None:
    """Deliver one order change from the order topic (Eventarc; see checkout/orders/delivery.py)."""
    await worker.handle(cloud_event["id"], cloud_event.data)
