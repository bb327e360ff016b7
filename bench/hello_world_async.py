"""A bare async functions-framework function (Starlette on uvicorn): a cold-start yardstick."""

import functions_framework.aio


@functions_framework.aio.http
async def hello(_request: object) -> str:
    return "Hello, World!"
