"""Cloud Run / functions-framework entry point: one HTTP function for the checkout API."""

import functions_framework
from flask import Request, Response

from checkout.app import handle


@functions_framework.http
def checkout_api(request: Request) -> Response:
    """Dispatch to the checkout package (see checkout/routes.py for the endpoints)."""
    return handle(request)
