"""A bare functions-framework function (threaded Flask server): a cold-start yardstick."""

import functions_framework


@functions_framework.http
def hello(_request: object) -> str:
    return "Hello, World!"
