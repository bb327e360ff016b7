"""Stripe secrets (API key, webhook signing secret): from the environment or Secret Manager, cached.

Google's libraries load only for Secret Manager; no client crosses a fork: docs/operations.md."""

# Google's libraries are imported inside the functions that use them, on purpose (see above).
# ruff: noqa: PLC0415

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from checkout.config import ConfigError, Settings
from checkout.errors import CheckoutError, RetryLater
from checkout.once import SingleFlight

if TYPE_CHECKING:
    from google.cloud.secretmanager_v1 import SecretManagerServiceClient

log = logging.getLogger("checkout.keys")

# An outage must be answered in a few seconds, not after the client's default minute of retries:
# transient errors are retried within _RETRY_BUDGET_S, and each attempt waits at most
# _ATTEMPT_TIMEOUT_S, so the worst case is about the sum of the two.
_RETRY_BUDGET_S = 2.0
_ATTEMPT_TIMEOUT_S = 1.5
# How long a coroutine waits for a shared read before it answers "unavailable" itself: the read's
# own worst case, plus room for the worker thread to be scheduled on a busy machine.
_ASYNC_WAIT_S = _RETRY_BUDGET_S + _ATTEMPT_TIMEOUT_S + 1.0
# The read at start is one attempt, no retries: its failure only warns (the first request reads
# again with the full budget), and a revision should not wait long to find that out.
_START_TIMEOUT_S = 2.0
# A value read at start is used by a process forked within this many seconds instead of reading it
# again; a worker gunicorn starts later (after a crash) reads afresh, as the value may have rolled.
_READ_AT_START_TTL_S = 60.0

_STRIPE_KEY = re.compile(r"^(sk|rk)_(test|live)_[A-Za-z0-9]+$")
_WEBHOOK_SECRET = re.compile(r"^whsec_[A-Za-z0-9+/=]+$")

# What a value is, told by its prefix alone: never show more of a secret than this.
_KINDS = (
    ("sk_", "a secret API key (sk_…)"),
    ("rk_", "a restricted API key (rk_…)"),
    ("pk_", "a publishable key (pk_…)"),
    ("whsec_", "a webhook signing secret (whsec_…)"),
)

# Project ids, numbers and domain-scoped ids ("example.com:p"); secret ids; versions or aliases.
_PROJECT, _ID, _VERSION = r"[A-Za-z0-9.:_-]+", r"[A-Za-z0-9_-]{1,255}", r"[A-Za-z0-9_-]+"
_FULL_NAME = re.compile(rf"^projects/{_PROJECT}/secrets/{_ID}/versions/{_VERSION}$")
SECRET_NAME = re.compile(rf"^projects/{_PROJECT}/secrets/{_ID}$")
SECRET_ID = re.compile(rf"^{_ID}$")


# Values read and checked at start, by resource name, for the processes forked after it:
# (the reading process's id, time.monotonic() of the read, text, version).
_checked_at_start: dict[str, tuple[int, float, str, str]] = {}


class SecretError(CheckoutError):
    """The secret cannot be had: one of the two below."""


class SecretUnavailable(SecretError, RetryLater):
    """Secret Manager could not hand over the secret just now (unreachable, denied, corrupt)."""


class SecretConfigError(SecretError):
    """The secret is missing or misconfigured; retrying will not help until an operator acts."""


def check_stripe_key_shape(value: str) -> str:
    """Return the key without surrounding whitespace, or refuse anything but sk_/rk_ keys."""
    key = value.strip()
    if _STRIPE_KEY.match(key):
        return key
    if key.startswith(("sk_", "rk_")):
        raise SecretConfigError(
            f"the value starts like {_kind_of(key)} but is malformed: expected {key[:3]}test_… or "
            f"{key[:3]}live_… followed by letters and digits only"
        )
    raise SecretConfigError(
        f"the value is {_kind_of(key)}, not a secret key (sk_test_…, sk_live_… or rk_…)"
    )


def check_webhook_secret_shape(value: str) -> str:
    """Return the signing secret without surrounding whitespace, or refuse anything but whsec_."""
    secret = value.strip()
    if _WEBHOOK_SECRET.match(secret):
        return secret
    if secret.startswith("whsec_"):
        raise SecretConfigError(
            "the value starts like a webhook signing secret (whsec_…) but is malformed: expected "
            "whsec_ followed by letters, digits, +, / or = only"
        )
    raise SecretConfigError(
        f"the value is {_kind_of(secret)}, not a webhook signing secret (whsec_…)"
    )


@dataclass(frozen=True)
class SecretSetting:
    """One secret: its name in messages, the variables that give it, and its shape."""

    label: str
    value_var: str  # the variable holding the value itself
    name_var: str  # the one naming a Secret Manager secret instead
    validate: Callable[[str], str]  # the value without surrounding white space, or refused


STRIPE_KEY = SecretSetting(
    "Stripe key", "STRIPE_SECRET_KEY", "STRIPE_SECRET_NAME", check_stripe_key_shape
)
WEBHOOK_SECRET = SecretSetting(
    "Stripe webhook signing secret",
    "STRIPE_WEBHOOK_SECRET",
    "STRIPE_WEBHOOK_SECRET_NAME",
    check_webhook_secret_shape,
)


def check_secret_shapes(settings: Settings) -> None:
    """A key or signing secret given in the environment must look like one (the shapes above).

    Cloud Run's --set-secrets puts a Secret Manager value here too, so this checks it before the
    revision takes traffic. One named by STRIPE_SECRET_NAME or STRIPE_WEBHOOK_SECRET_NAME is read
    by check_named_secrets.
    """
    for secret, value in (
        (STRIPE_KEY, settings.stripe_secret_key),
        (WEBHOOK_SECRET, settings.stripe_webhook_secret),
    ):
        if value is None:
            continue
        try:
            secret.validate(value)
        except SecretConfigError as error:  # its message names the kind, never the value
            raise ConfigError(f"{secret.value_var} is not usable: {error}") from None


def check_named_secrets(settings: Settings) -> None:
    """Read each secret named by STRIPE_SECRET_NAME or STRIPE_WEBHOOK_SECRET_NAME (and not given
    in the environment) once, now, and refuse one that cannot work: ConfigError for a value of
    the wrong shape, a missing secret or a malformed name.

    For Cloud Run, before the server listens and forks. Secret Manager unreachable, denying or slow
    is only a warning: a revision is not refused for an outage, its requests answer 503 until the
    secret can be read. The client is closed before returning, so no socket outlives this.
    """
    for source in (stripe_api_key_source(settings), webhook_secret_source(settings)):
        source.check_at_start()


def _kind_of(value: str) -> str:
    if not value:
        return "empty"
    if value[0] in "\"'":
        return "quoted (remove the quotes around it)"
    for prefix, kind in _KINDS:
        if value.startswith(prefix):
            return kind
    return "not recognisable as a Stripe key"


def _fresh(error: BaseException) -> BaseException:
    """A waiter's own copy of a shared read's error (one instance raised in many threads or tasks
    tangles their tracebacks)."""
    if isinstance(error, SecretConfigError | SecretUnavailable):
        return type(error)(*error.args)
    return error


def _fresh_or_interrupted(error: BaseException) -> BaseException:
    fresh = _fresh(error)
    if fresh is error:  # the reading thread's own failure (an interrupt): it raises that itself
        return SecretUnavailable("reading the secret was interrupted; retry")
    return fresh


class SecretSource:
    """One secret value, from the environment or Secret Manager, validated and cached."""

    def __init__(
        self,
        secret: SecretSetting,
        value: str | None,
        name: str | None,
        settings: Settings,
        async_wait_seconds: float = _ASYNC_WAIT_S,
    ) -> None:
        """`value` as given, else the secret `name` in Secret Manager (the project and endpoint
        of `settings`); a coroutine waits at most `async_wait_seconds` for a read."""
        self._secret = secret
        self._direct, self._name = value, name
        self._project = settings.google_cloud_project
        self._endpoint = settings.secret_manager_endpoint
        self._async_wait = async_wait_seconds
        self._cached: str | None = None
        # One read at a time, shared by the threads that ask meanwhile, whatever value is stale.
        self._reads: SingleFlight[str] = SingleFlight(_fresh_or_interrupted)
        self._resource: str | None = None
        self._client: SecretManagerServiceClient | None = None
        self._client_pid: int | None = None
        # One read in a worker thread per stale value, awaited by every coroutine that asks.
        self._async_reads: SingleFlight[str] = SingleFlight(_fresh)
        self._last_reread = -math.inf  # time.monotonic() of the last reread_async read

    @property
    def configured(self) -> bool:
        return bool(self._direct or self._name)

    def get(self) -> str:
        """The secret, read once and then served from memory."""
        cached = self._cached
        if cached is not None:
            return cached
        return self._load(stale=None)

    def refresh(self, stale: str) -> str:
        """Re-read the secret if `stale` is still what we hold; return the current value."""
        return self._load(stale=stale)

    async def get_async(self) -> str:
        """get() for coroutines: a Secret Manager read runs in a worker thread, not on the loop."""
        cached = self._cached
        if cached is not None:
            return cached
        return await self._load_async(stale=None)

    async def refresh_async(self, stale: str) -> str:
        """refresh() for coroutines."""
        return await self._load_async(stale=stale)

    async def reread_async(self, rejected: str, min_interval: float) -> str | None:
        """A new value when `rejected` failed (a rolled secret); None if there is none to be had.

        Only a secret from Secret Manager can change under a running process, and it is re-read
        at most once per `min_interval` seconds, whoever asks: a caller who cannot prove the
        value wrong (a forged webhook) must not be able to make us read it on every request.
        Callers who ask while a re-read is running share it.
        """
        if self._name is None or self._direct is not None:
            return None
        cached = self._cached
        if cached is not None and cached != rejected:
            return cached  # another request re-read it already
        now = time.monotonic()
        running = rejected in self._async_reads
        if not running and now - self._last_reread < min_interval:
            return None
        if not running:
            self._last_reread = now
        fresh = await self._load_async(stale=rejected)
        return fresh if fresh != rejected else None

    def check_at_start(self) -> None:
        """Read a named secret once and check its shape (see check_named_secrets)."""
        if self._direct is not None or self._name is None:
            return
        var = self._secret.name_var
        try:
            resource = self._resource_name()
            text, version = self._access(resource, retry=False, timeout=_START_TIMEOUT_S)
            self._checked(text, f"secret {version} ({var})")
        except SecretConfigError as error:  # its message names the kind, never the value
            message = str(error)
            raise ConfigError(message if var in message else f"{var}: {message}") from None
        except SecretUnavailable as error:
            log.warning(
                "%s: the %s could not be checked before starting (%s); starting anyway, and "
                "requests that need it answer 503 until it can be read",
                var,
                self._secret.label,
                error,
            )
            return
        finally:
            self._close_client()
        _checked_at_start[resource] = (os.getpid(), time.monotonic(), text, version)
        log.info("checked the %s from %s before starting", self._secret.label, version)

    def warm(self) -> None:
        """Read the secret now so the first request does not wait; a failure is retried later."""
        if not self.configured:
            return
        # A failure was logged where it happened, and the next get() tries again.
        with contextlib.suppress(SecretError):
            self.get()

    # -- one read at a time ----------------------------------------------------------------

    async def _load_async(self, stale: str | None) -> str:
        if self._name is None or self._direct is not None:
            return self._load(stale)  # the environment's value: validation only, no I/O
        cached = self._cached
        if cached is not None and cached != stale:
            return cached
        # Joined now, not when awaited: reread_async's callers tell a running read by its key.
        read = self._async_reads.join(stale, lambda: asyncio.to_thread(self._load, stale))
        try:
            # A waiter that gives up (or is cancelled) leaves the read to the others.
            return await asyncio.wait_for(read, self._async_wait)
        except TimeoutError:
            raise SecretUnavailable(
                f"the {self._secret.label} was not read within {self._async_wait:g} s; retry"
            ) from None

    def _load(self, stale: str | None) -> str:
        if not self.configured:
            secret = self._secret
            raise SecretConfigError(
                f"no {secret.label} configured: set {secret.value_var} or {secret.name_var}"
            )
        cached = self._cached
        if cached is not None and cached != stale:
            return cached
        return self._reads.run_blocking(None, lambda: self._read_and_keep(stale))

    def _read_and_keep(self, stale: str | None) -> str:
        cached = self._cached  # a read that ended as this one was starting
        if cached is not None and cached != stale:
            return cached
        try:
            value = self._read(stale)
        except SecretError as error:
            # Failures are never cached: the next caller starts a new read.
            log.error("%s", error)  # The messages are written to be safe to log.
            raise
        self._cached = value
        return value

    def _read(self, stale: str | None) -> str:
        if self._direct is not None:
            return self._checked(self._direct, self._secret.value_var)
        resource = self._resource_name()
        if stale is not None:
            log.info(
                "re-reading the %s from %s: the cached value was rejected",
                self._secret.label,
                resource,
            )
        inherited = self._inherited(resource) if stale is None else None
        text, version = inherited or self._access(resource)
        value = self._checked(text, f"secret {version} ({self._secret.name_var})")
        if stale is None:
            log.info("loaded the %s from %s", self._secret.label, version)
        elif value == stale:
            log.warning("the %s from %s is unchanged after a re-read", self._secret.label, version)
        else:
            log.info("the %s changed: now using %s", self._secret.label, version)
        return value

    def _checked(self, value: str, origin: str) -> str:
        try:
            return self._secret.validate(value)
        except SecretConfigError as error:
            label = self._secret.label
            raise SecretConfigError(f"{origin} is not a usable {label}: {error}") from None

    # -- Secret Manager --------------------------------------------------------------------

    def _resource_name(self) -> str:
        if self._resource is not None:
            return self._resource
        name = self._name or ""
        var = self._secret.name_var
        for prefix, kind in _KINDS:
            if name.startswith(prefix):
                # Someone put the secret itself here: refuse before it reaches a URL or a log.
                raise SecretConfigError(
                    f"{var} holds {kind}, not a secret name: put the value in "
                    f"{self._secret.value_var}, or store it in Secret Manager and name the secret "
                    "here"
                )
        if _FULL_NAME.match(name):
            resource = name
        elif SECRET_NAME.match(name):
            resource = f"{name}/versions/latest"
        elif SECRET_ID.match(name):
            project = self._project or default_project(var)
            resource = f"projects/{project}/secrets/{name}/versions/latest"
        elif "/locations/" in name:
            raise SecretConfigError(
                f"{var} names a regional secret (projects/P/locations/L/...); only global "
                "secrets are supported"
            )
        else:
            # The malformed value is not repeated: it might be a secret pasted in the wrong place.
            raise SecretConfigError(
                f"{var} is not a Secret Manager secret name: expected "
                "projects/PROJECT/secrets/SECRET/versions/VERSION, projects/PROJECT/secrets/SECRET "
                "or a bare SECRET id"
            )
        self._resource = resource
        return resource

    def _access(
        self, resource: str, *, retry: bool = True, timeout: float = _ATTEMPT_TIMEOUT_S
    ) -> tuple[str, str]:
        """Read one version; return (text, the version's full name). `retry` False: one attempt."""
        import google_crc32c
        import requests
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth

        try:
            client = self._client_for_this_process()
            response = client.access_secret_version(
                request={"name": resource},
                retry=secret_manager_retry() if retry else None,
                timeout=timeout,
            )
        except api.NotFound:
            raise SecretConfigError(
                f"Secret Manager has no {resource}: create the secret (with an enabled version) "
                f"or fix {self._secret.name_var}"
            ) from None
        except api.Forbidden:
            raise SecretUnavailable(
                f"Secret Manager denied access to {resource}: grant "
                "roles/secretmanager.secretAccessor on the secret to the runtime service account"
            ) from None
        except api.Unauthorized:
            raise SecretUnavailable(
                f"Secret Manager rejected the runtime's credentials while reading {resource}"
            ) from None
        except api.BadRequest as error:
            raise SecretConfigError(
                f"Secret Manager refused {resource}: {describe_error(error)}; enable the version "
                f"or fix {self._secret.name_var}"
            ) from None
        except api.RetryError as error:
            raise SecretUnavailable(
                f"Secret Manager is unavailable for {resource}: still failing after retrying "
                f"for up to {_RETRY_BUDGET_S:g} s (last error: {describe_error(error.cause)})"
            ) from None
        except requests.Timeout:
            raise SecretUnavailable(
                f"Secret Manager did not answer for {resource} within {timeout:g} s"
            ) from None
        except auth.DefaultCredentialsError:
            raise SecretConfigError(
                f"no Google credentials to read {resource}: run on Cloud Run with a service "
                "account, `gcloud auth application-default login`, or set SECRET_MANAGER_ENDPOINT "
                "to a local emulator"
            ) from None
        except Exception as error:  # anything else is an outage, not a value to show
            raise SecretUnavailable(
                f"reading {resource} from Secret Manager failed: {describe_error(error)}"
            ) from None

        version = response.name or resource
        payload = response.payload
        if "data_crc32c" not in payload or google_crc32c.value(payload.data) != int(
            payload.data_crc32c
        ):
            # Google's access sample: a corrupt payload is an unavailable secret, never a value.
            raise SecretUnavailable(
                f"the payload of {version} failed its CRC32C integrity check; not using it"
            )
        try:
            return payload.data.decode("utf-8"), version
        except UnicodeDecodeError:
            raise SecretConfigError(f"secret {version} is not UTF-8 text") from None

    def _client_for_this_process(self) -> SecretManagerServiceClient:
        # Only the single reader in flight gets here, so no lock. A client inherited across a
        # fork shares pooled sockets with the parent: each process makes its own.
        pid = os.getpid()
        if self._client is None or self._client_pid != pid:
            self._client = secret_manager_client(self._endpoint)
            self._client_pid = pid
        return self._client

    def _inherited(self, resource: str) -> tuple[str, str] | None:
        """(text, version) as the server's first process read it just before forking this one."""
        seen = _checked_at_start.pop(resource, None)
        if seen is None:
            return None
        pid, when, text, version = seen
        if pid == os.getpid() or time.monotonic() - when > _READ_AT_START_TTL_S:
            return None  # not a forked process (a test), or a worker started long after
        return text, version

    def _close_client(self) -> None:
        # The REST client pools its connection in a requests session: close it, so that no socket
        # is inherited by the processes gunicorn forks.
        client, self._client, self._client_pid = self._client, None, None
        if client is not None:
            client.transport.close()  # type: ignore[no-untyped-call]  # (untyped in the library)


def secret_manager_client(endpoint: str | None) -> SecretManagerServiceClient:
    """A Secret Manager client over REST (to `endpoint`, an emulator, when given)."""
    # REST rather than gRPC: no channel and no gRPC threads, so nothing to break across a fork,
    # and one transport both in production and against the local emulator.
    from google.cloud.secretmanager_v1 import SecretManagerServiceClient

    if endpoint:
        from google.auth.credentials import AnonymousCredentials

        return SecretManagerServiceClient(
            transport="rest",
            client_options={"api_endpoint": endpoint},
            credentials=AnonymousCredentials(),
        )
    return SecretManagerServiceClient(transport="rest")


def secret_manager_retry() -> Any:
    """Retry transient Secret Manager errors within _RETRY_BUDGET_S."""
    import requests
    from google.api_core import exceptions as api
    from google.api_core import retry
    from google.auth import exceptions as auth

    return retry.Retry(
        predicate=retry.if_exception_type(
            api.ServerError,
            api.TooManyRequests,
            requests.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
            auth.TransportError,
        ),
        initial=0.2,
        maximum=1.0,
        multiplier=2.0,
        timeout=_RETRY_BUDGET_S,
    )


def default_project(variable: str) -> str:
    """The project of the runtime's default credentials (Cloud Run does not set one for us)."""
    import google.auth
    from google.auth import exceptions as auth

    try:
        _, project = google.auth.default()
    except auth.DefaultCredentialsError:
        project = None
    except auth.GoogleAuthError as error:
        raise SecretUnavailable(
            f"could not ask the default credentials for a project id ({type(error).__name__})"
        ) from None
    if not project:
        raise SecretConfigError(
            f"{variable} is a bare secret id and no project is known: set GOOGLE_CLOUD_PROJECT, "
            "or use projects/PROJECT/secrets/SECRET"
        )
    return project


def describe_error(error: BaseException | None) -> str:
    """What went wrong, safe to log: Google's status and sentence, or the type alone."""
    # Google's errors carry the service's own sentence (never the payload); for anything else the
    # type alone, since a library's message could quote what it failed to parse.
    from google.api_core import exceptions as api

    if isinstance(error, api.GoogleAPICallError):
        sentence = error.message
        if error.response is not None:
            # REST errors open with "GET https://…/versions/…:access?…: "; keep only the sentence.
            sentence = sentence.partition(": ")[2] or sentence
        return f"{error.code} {sentence}"
    return type(error).__name__ if error is not None else "unknown"


def stripe_api_key_source(
    settings: Settings, async_wait_seconds: float = _ASYNC_WAIT_S
) -> SecretSource:
    """The Stripe API key: STRIPE_SECRET_KEY, else the secret named by STRIPE_SECRET_NAME."""
    given = settings.stripe_secret_key, settings.stripe_secret_name
    return SecretSource(STRIPE_KEY, *given, settings, async_wait_seconds)


def webhook_secret_source(settings: Settings) -> SecretSource:
    """The webhook signing secret: STRIPE_WEBHOOK_SECRET, else STRIPE_WEBHOOK_SECRET_NAME."""
    given = settings.stripe_webhook_secret, settings.stripe_webhook_secret_name
    return SecretSource(WEBHOOK_SECRET, *given, settings)
