"""Cloud Run / functions-framework entry point: one HTTP function for the checkout API."""

import flask
import functions_framework
from flask import Request, Response
from werkzeug.exceptions import NotFound

from checkout.app import handle


@functions_framework.http
def checkout_api(request: Request) -> Response:
    """Dispatch to the checkout package (see checkout/routes.py for the endpoints)."""
    return handle(request)


@functions_framework.errorhandler(NotFound)
def framework_not_found(_error: NotFound) -> Response:
    """functions-framework answers /robots.txt and /favicon.ico itself: treat them as any path."""
    return handle(flask.request)
