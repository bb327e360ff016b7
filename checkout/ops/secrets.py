"""Secret Manager writes, for the operator commands only: `register-webhook --secret` stores a
new signing secret as a version of an existing secret. The service only reads (checkout/keys.py)."""

# Google's libraries are imported inside the functions that use them, as in checkout/keys.py.
# ruff: noqa: PLC0415

from __future__ import annotations

import asyncio

from checkout.config import Settings
from checkout.keys import (
    SECRET_ID,
    SECRET_NAME,
    SecretConfigError,
    SecretUnavailable,
    default_project,
    describe_error,
    secret_manager_client,
    secret_manager_retry,
)


def _secret_parent(settings: Settings, name: str) -> str:
    """`projects/P/secrets/S` for --secret's S (in GOOGLE_CLOUD_PROJECT) or full name."""
    if SECRET_ID.match(name):
        project = settings.google_cloud_project or default_project("--secret")
        return f"projects/{project}/secrets/{name}"
    if SECRET_NAME.match(name):
        return name
    raise SecretConfigError(
        f"--secret must name a secret as S or projects/P/secrets/S, got {name[:80]!r}"
    )


async def secret_exists(settings: Settings, name: str) -> bool | None:
    """Whether the secret `name` exists, before `register-webhook` makes an endpoint whose signing
    secret must be stored in it: True; None when we may not tell (an account that may only add
    versions cannot read the secret itself); SecretConfigError when it does not exist, and
    SecretUnavailable when Secret Manager cannot be asked."""
    parent = _secret_parent(settings, name)

    def get() -> bool | None:
        from google.api_core import exceptions as api

        client = secret_manager_client(settings.secret_manager_endpoint)
        try:
            client.get_secret(name=parent, timeout=10.0, retry=secret_manager_retry())
        except api.NotFound:
            raise SecretConfigError(
                f"the secret {parent} does not exist: create it first (gcloud secrets create)"
            ) from None
        except api.Forbidden:  # PermissionDenied, or REST's 403
            return None
        except Exception as error:
            raise SecretUnavailable(
                f"Secret Manager could not say whether {parent} exists: {describe_error(error)}"
            ) from None
        return True

    return await asyncio.to_thread(get)


async def add_secret_version(settings: Settings, name: str, value: str) -> str:
    """Store `value` as a new version of the secret `name` (S or projects/P/secrets/S); the
    version's resource name. For `register-webhook`: never logged, never printed."""
    parent = _secret_parent(settings, name)
    import google_crc32c

    data = value.encode()

    def add() -> str:
        client = secret_manager_client(settings.secret_manager_endpoint)
        request = {
            "parent": parent,
            "payload": {"data": data, "data_crc32c": int(google_crc32c.value(data))},
        }
        try:
            version = client.add_secret_version(request=request, timeout=10.0)
        except Exception as error:
            raise SecretUnavailable(
                f"Secret Manager did not store a version of {parent}: {describe_error(error)}"
            ) from None
        return str(version.name)

    return await asyncio.to_thread(add)
