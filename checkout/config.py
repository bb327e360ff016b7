"""Settings: read once from the environment into a frozen object, with clear errors."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from checkout.errors import CheckoutError

DEFAULT_FRONTEND_URL = "http://localhost:5173"
DEFAULT_RETURN_PATH = "/hero-me?session_id={CHECKOUT_SESSION_ID}"
DEFAULT_PRODUCT_NAME = "Hero Me Feelings - Personalized AAC Board"
DEFAULT_PRODUCT_DESCRIPTION = "AI-powered personalized feelings board with 24+ custom images"

_CURRENCY = re.compile(r"^[a-z]{3}$")
_REDIRECT_MODES = ("always", "if_required")

# Cloud Run's default request timeout; the deploy sets its own and passes it as
# REQUEST_TIMEOUT_SECONDS, so that startup can check the budgets against what Cloud Run enforces.
DEFAULT_REQUEST_TIMEOUT_SECONDS = 300
# Worst case of a Secret Manager read (checkout/keys.py: retry budget + one attempt's timeout).
SECRET_MANAGER_BUDGET_SECONDS = 3.5
# Room left for everything else a request does (reading the body, the ledger, answering).
REQUEST_MARGIN_SECONDS = 5.0

# Stripe's minimum charge per currency, in minor units (docs.stripe.com/currencies, "Minimum and
# maximum charge amounts"). Stripe refuses a session below it; currencies not listed are checked
# by Stripe against the settlement currency, which only the account knows.
MINIMUM_CHARGE = {
    "usd": 50, "aed": 200, "aud": 50, "bgn": 100, "brl": 50, "cad": 50, "chf": 50, "czk": 1500,
    "dkk": 250, "eur": 50, "gbp": 30, "hkd": 400, "huf": 17500, "inr": 50, "jpy": 50, "mxn": 1000,
    "myr": 200, "nok": 300, "nzd": 50, "pln": 200, "ron": 200, "sek": 300, "sgd": 50, "thb": 1000,
}  # fmt: skip

# Reads one variable: its value stripped, or None when unset or blank.
Getter = Callable[[str], str | None]

_FUNCTION_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")
_DEPLOYMENT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


def stripe_budget_seconds(timeout: float, retries: int) -> float:
    """Worst case of one Stripe call: every attempt times out, every backoff is the longest
    (stripe/_http_client.py; docs/operations.md "Time budget of a Stripe call")."""
    return (retries + 1) * timeout + sum(min(0.5 * 2.0**n, 5.0) for n in range(retries))


# Every variable load_settings reads: tools that start the service from a clean slate use this.
ENVIRONMENT_VARIABLES = (
    "K_SERVICE",
    "FRONTEND_URL",
    "ALLOWED_ORIGINS",
    "RETURN_PATH",
    "REDIRECT_ON_COMPLETION",
    "PRODUCT_NAME",
    "PRODUCT_DESCRIPTION",
    "PRICE_AMOUNT",
    "PRICE_CURRENCY",
    "STRIPE_PRICE_ID",
    "STRIPE_SECRET_KEY",
    "STRIPE_SECRET_NAME",
    "GOOGLE_CLOUD_PROJECT",
    "SECRET_MANAGER_ENDPOINT",
    "STRIPE_API_BASE",
    "STRIPE_TIMEOUT_SECONDS",
    "STRIPE_MAX_RETRIES",
    "STRIPE_WEBHOOK_SECRET",
    "STRIPE_WEBHOOK_SECRET_NAME",
    "STATUS_CACHE_SIZE",
    "STATUS_OPEN_TTL_MS",
    "STATUS_PAID_TTL_SECONDS",
    "STATUS_RECHECK_SECONDS",
    "STATUS_RECHECK_PER_MINUTE",
    "WEBHOOK_DEDUPE_SIZE",
    "REQUEST_TIMEOUT_SECONDS",
    "DEPLOYMENT_ID",
    "CLOUD_RUN_JOB",
    "TRUSTED_PROXY_HOPS",
    "CREATE_LIMIT_PER_MINUTE",
    "STATUS_LIMIT_PER_MINUTE",
    "STRIPE_MAX_IN_FLIGHT",
    "STRIPE_IN_FLIGHT_RESERVE",
    "ORDER_LEDGER",
    "FIRESTORE_DATABASE",
    "FIRESTORE_EMULATOR_HOST",
    "LEDGER_LEASE_SECONDS",
    "DELIVERY_TIMEOUT_SECONDS",
    "UNDELIVERED_GRACE_SECONDS",
    "UNDELIVERED_ALERT_SECONDS",
    "DELIVER_ORDER",
    "ORDER_EVENTS_TOPIC",
    "PUBSUB_EMULATOR_HOST",
    "WEBHOOK_REQUIRED",
    "REQUEST_READ_TIMEOUT_SECONDS",
    "REQUEST_HEAD_MAX_BYTES",
)

ORDER_LEDGERS = ("memory", "firestore")
DEFAULT_FIRESTORE_DATABASE = "(default)"
# A Firestore database id: 4-63 of a-z, 0-9 and '-', starting with a letter; or "(default)".
_FIRESTORE_DATABASE = re.compile(r"^(\(default\)|[a-z][a-z0-9-]{2,61}[a-z0-9])$")


class ConfigError(ValueError, CheckoutError):
    """The environment describes a service that cannot run; the message says which variable."""


@dataclass(frozen=True)
class Settings:
    on_cloud_run: bool
    frontend_url: str
    allowed_origins: frozenset[str]
    allow_any_origin: bool
    return_url: str
    redirect_on_completion: str
    product_name: str
    product_description: str
    price_amount: int
    price_currency: str
    stripe_price_id: str | None
    stripe_secret_key: str | None
    stripe_secret_name: str | None
    google_cloud_project: str | None
    secret_manager_endpoint: str | None
    stripe_api_base: str | None
    stripe_timeout_seconds: float
    stripe_max_retries: int
    stripe_webhook_secret: str | None
    stripe_webhook_secret_name: str | None
    status_cache_size: int
    status_open_ttl_ms: int
    status_paid_ttl_seconds: float  # a paid answer is re-read from the ledger after this long
    status_recheck_seconds: float  # a polled paid order is read again from Stripe this often
    status_recheck_per_minute: int  # ... but no more of those reads than this, per instance
    webhook_dedupe_size: int
    request_timeout_seconds: float
    deployment_id: str
    trusted_proxy_hops: int
    create_limit_per_minute: int
    status_limit_per_minute: int
    stripe_max_in_flight: int
    stripe_in_flight_reserve: int  # places of the cap that public traffic may not take
    order_ledger: str  # "memory" (this process) or "firestore" (every instance)
    firestore_database: str
    firestore_emulator_host: str | None
    ledger_lease_seconds: float  # how long a fulfilment claim holds before another may take over
    deliver_order: str | None  # `module:function` that fulfil_order calls for each change
    # `projects/P/topics/T` for order changes, or None: delivered in this process (local only)
    order_events_topic: str | None
    pubsub_emulator_host: str | None
    webhook_required: bool  # on Cloud Run, refuse to start without a webhook signing secret
    # A delivery's time limit, below the worker's request timeout (and the ack deadline): past
    # it the run counts as failed, an `async def` is cancelled and its claim no longer renewed.
    delivery_timeout_seconds: float = 540.0
    # A published change undelivered this long is redelivered by reconcile; this long, an alert.
    undelivered_grace_seconds: float = 900.0
    undelivered_alert_seconds: float = 86400.0

    @property
    def stripe_key_configured(self) -> bool:
        return bool(self.stripe_secret_key or self.stripe_secret_name)

    @property
    def webhook_secret_configured(self) -> bool:
        return bool(self.stripe_webhook_secret or self.stripe_webhook_secret_name)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from `env` (default: os.environ); ConfigError names the bad variable."""
    env = os.environ if env is None else env

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    on_cloud_run = get("K_SERVICE") is not None
    frontend_url = get("FRONTEND_URL")
    if frontend_url is None:
        if on_cloud_run:
            raise ConfigError("FRONTEND_URL is required on Cloud Run (K_SERVICE is set)")
        frontend_url = DEFAULT_FRONTEND_URL
    frontend_url = frontend_url.rstrip("/")
    frontend_origin = _origin_of(frontend_url, "FRONTEND_URL")

    origins_raw = get("ALLOWED_ORIGINS")
    if origins_raw is None:
        origins = [frontend_origin]
    else:
        entries = [o.strip() for o in origins_raw.split(",") if o.strip()]
        if not entries:
            raise ConfigError("ALLOWED_ORIGINS is set but lists no origin")
        origins = [o if o == "*" else _exact_origin(o) for o in entries]

    return_path = get("RETURN_PATH") or DEFAULT_RETURN_PATH
    if not return_path.startswith("/"):
        raise ConfigError("RETURN_PATH must start with '/'")

    redirect = get("REDIRECT_ON_COMPLETION") or "if_required"
    if redirect not in _REDIRECT_MODES:
        raise ConfigError(f"REDIRECT_ON_COMPLETION must be one of {', '.join(_REDIRECT_MODES)}")

    currency = (get("PRICE_CURRENCY") or "usd").lower()
    if not _CURRENCY.match(currency):
        raise ConfigError("PRICE_CURRENCY must be a three-letter ISO currency code, e.g. usd")

    price_id = get("STRIPE_PRICE_ID")
    if price_id is not None and not price_id.startswith("price_"):
        raise ConfigError("STRIPE_PRICE_ID must be a Stripe price id (price_...)")
    price_amount = _int(get, "PRICE_AMOUNT", 200, minimum=1)
    minimum_charge = MINIMUM_CHARGE.get(currency, 1)
    if price_id is None and price_amount < minimum_charge:
        raise ConfigError(
            f"PRICE_AMOUNT is {price_amount} but Stripe's minimum charge in {currency} is "
            f"{minimum_charge} (minor units)"
        )

    secret_key = get("STRIPE_SECRET_KEY")
    api_base = (get("STRIPE_API_BASE") or "").rstrip("/") or None
    if api_base is not None:
        _check_api_base(api_base, on_cloud_run, secret_key)

    deployment_id = _deployment_id(get)
    if not _DEPLOYMENT_ID.match(deployment_id):
        raise ConfigError(
            "DEPLOYMENT_ID must be 1 to 40 letters, digits, '.', '_' or '-' (it names this "
            "deployment in Stripe metadata and idempotency keys)"
        )

    max_in_flight = _int(get, "STRIPE_MAX_IN_FLIGHT", 100, minimum=1, maximum=10_000)
    settings = Settings(
        on_cloud_run=on_cloud_run,
        frontend_url=frontend_url,
        allowed_origins=frozenset(o for o in origins if o != "*"),
        allow_any_origin="*" in origins,
        return_url=frontend_url + return_path,
        redirect_on_completion=redirect,
        product_name=get("PRODUCT_NAME") or DEFAULT_PRODUCT_NAME,
        product_description=get("PRODUCT_DESCRIPTION") or DEFAULT_PRODUCT_DESCRIPTION,
        price_amount=price_amount,
        price_currency=currency,
        stripe_price_id=price_id,
        stripe_secret_key=secret_key,
        stripe_secret_name=get("STRIPE_SECRET_NAME"),
        google_cloud_project=get("GOOGLE_CLOUD_PROJECT"),
        secret_manager_endpoint=get("SECRET_MANAGER_ENDPOINT"),
        stripe_api_base=api_base,
        stripe_timeout_seconds=_float(get, "STRIPE_TIMEOUT_SECONDS", 10.0, minimum=0.1, maximum=60),
        stripe_max_retries=_int(get, "STRIPE_MAX_RETRIES", 2, minimum=0, maximum=5),
        stripe_webhook_secret=get("STRIPE_WEBHOOK_SECRET"),
        stripe_webhook_secret_name=get("STRIPE_WEBHOOK_SECRET_NAME"),
        status_cache_size=_int(get, "STATUS_CACHE_SIZE", 10_000, minimum=0),
        status_open_ttl_ms=_int(get, "STATUS_OPEN_TTL_MS", 0, minimum=0, maximum=60_000),
        # Every instance must answer a refund or dispute within 60 s of its event.
        status_paid_ttl_seconds=_float(
            get, "STATUS_PAID_TTL_SECONDS", 20.0, minimum=0.1, maximum=50
        ),
        # A refund whose webhook never came reaches a polling customer within this period.
        status_recheck_seconds=_float(
            get, "STATUS_RECHECK_SECONDS", 600.0, minimum=0, maximum=86_400
        ),
        status_recheck_per_minute=_int(
            get, "STATUS_RECHECK_PER_MINUTE", 60, minimum=0, maximum=6_000
        ),
        webhook_dedupe_size=_int(get, "WEBHOOK_DEDUPE_SIZE", 10_000, minimum=1),
        # The deploy passes its --timeout value as it is: "60s" reads as 60.
        request_timeout_seconds=_float(
            get,
            "REQUEST_TIMEOUT_SECONDS",
            DEFAULT_REQUEST_TIMEOUT_SECONDS,
            minimum=1,
            maximum=3600,
            suffix="s",
        ),
        deployment_id=deployment_id,
        # Locally the socket peer is the client; on Cloud Run, Google's front end is one hop.
        trusted_proxy_hops=_int(
            get, "TRUSTED_PROXY_HOPS", 1 if on_cloud_run else 0, minimum=0, maximum=5
        ),
        create_limit_per_minute=_int(get, "CREATE_LIMIT_PER_MINUTE", 30, minimum=0),
        status_limit_per_minute=_int(get, "STATUS_LIMIT_PER_MINUTE", 120, minimum=0),
        stripe_max_in_flight=max_in_flight,
        stripe_in_flight_reserve=_in_flight_reserve(get, max_in_flight),
        order_ledger=_order_ledger(get),
        firestore_database=_firestore_database(get),
        firestore_emulator_host=get("FIRESTORE_EMULATOR_HOST"),
        ledger_lease_seconds=_float(get, "LEDGER_LEASE_SECONDS", 60.0, minimum=1, maximum=600),
        deliver_order=_function_path(get, "DELIVER_ORDER"),
        order_events_topic=_topic(get),
        pubsub_emulator_host=get("PUBSUB_EMULATOR_HOST"),
        webhook_required=_bool(get, "WEBHOOK_REQUIRED", on_cloud_run),
        delivery_timeout_seconds=_float(
            get, "DELIVERY_TIMEOUT_SECONDS", 540.0, minimum=0.1, maximum=3540
        ),
        undelivered_grace_seconds=_float(
            get, "UNDELIVERED_GRACE_SECONDS", 900.0, minimum=0, maximum=30 * 86400
        ),
        undelivered_alert_seconds=_float(
            get, "UNDELIVERED_ALERT_SECONDS", 86400.0, minimum=0, maximum=30 * 86400
        ),
    )
    _check_budget(settings)
    return settings


def _deployment_id(get: Getter) -> str:
    explicit = get("DEPLOYMENT_ID")
    job = get("CLOUD_RUN_JOB")
    if explicit is None and job is not None:
        # A job has no K_SERVICE: it would fall back to `local` and find none of the API's
        # sessions ours (the reconciler would recover nothing, and say all is well).
        raise ConfigError(
            f"DEPLOYMENT_ID is required in a Cloud Run job (CLOUD_RUN_JOB={job[:60]}): set it to "
            "the API's, as cloudbuild.yaml does"
        )
    return explicit or get("K_SERVICE") or "local"


def request_budget_seconds(settings: Settings) -> float:
    """Worst case of the slowest request: a Secret Manager read, then one Stripe call."""
    stripe_budget = stripe_budget_seconds(
        settings.stripe_timeout_seconds, settings.stripe_max_retries
    )
    secret_budget = SECRET_MANAGER_BUDGET_SECONDS if settings.stripe_secret_name else 0.0
    return stripe_budget + secret_budget


def _check_budget(settings: Settings) -> None:
    # Past the request timeout Cloud Run answers for us: a bare 504, not JSON, without CORS.
    budget = request_budget_seconds(settings)
    room = settings.request_timeout_seconds - REQUEST_MARGIN_SECONDS
    if budget > room:
        raise ConfigError(
            f"STRIPE_TIMEOUT_SECONDS and STRIPE_MAX_RETRIES let one request wait {budget:g} s for "
            f"Stripe (and Secret Manager), more than REQUEST_TIMEOUT_SECONDS "
            f"({settings.request_timeout_seconds:g} s) less {REQUEST_MARGIN_SECONDS:g} s: lower "
            "them, or raise the request timeout (the deploy's _TIMEOUT)"
        )


def _check_api_base(api_base: str, on_cloud_run: bool, secret_key: str | None) -> None:
    # One environment variable must never be able to send the secret key to another host.
    scheme = urlsplit(api_base).scheme
    if scheme not in ("http", "https") or not urlsplit(api_base).netloc:
        raise ConfigError("STRIPE_API_BASE must be an absolute http(s) URL")
    if on_cloud_run and scheme != "https":
        raise ConfigError("STRIPE_API_BASE must use https on Cloud Run (K_SERVICE is set)")
    if secret_key is not None and is_live_key(secret_key):
        raise ConfigError(
            "STRIPE_API_BASE is set, which is for emulators and test doubles, but the key is a "
            "live key: unset STRIPE_API_BASE to use Stripe"
        )


def is_live_key(key: str) -> bool:
    return key.strip().startswith(("sk_live_", "rk_live_"))


def _in_flight_reserve(get: Getter, max_in_flight: int) -> int:
    # A tenth of the cap, at least one place, and always room for one public call.
    default = min(max(1, max_in_flight // 10), max_in_flight - 1)
    reserve = _int(get, "STRIPE_IN_FLIGHT_RESERVE", default, minimum=0)
    if reserve >= max_in_flight:
        raise ConfigError(
            f"STRIPE_IN_FLIGHT_RESERVE must be below STRIPE_MAX_IN_FLIGHT ({max_in_flight}), got "
            f"{reserve}: public traffic needs at least one place"
        )
    return reserve


def _order_ledger(get: Getter) -> str:
    ledger = (get("ORDER_LEDGER") or "memory").lower()
    if ledger not in ORDER_LEDGERS:
        raise ConfigError(f"ORDER_LEDGER must be one of {', '.join(ORDER_LEDGERS)}, got {ledger!r}")
    return ledger


_TOPIC_ID = re.compile(r"^[A-Za-z][A-Za-z0-9._~%+-]{2,254}$")
_PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$|^[A-Za-z0-9._:-]{1,100}$")


def _topic(get: Getter) -> str | None:
    """ORDER_EVENTS_TOPIC as `projects/P/topics/T`: a bare id takes GOOGLE_CLOUD_PROJECT."""
    raw = get("ORDER_EVENTS_TOPIC")
    if raw is None:
        return None
    parts = raw.split("/")
    if len(parts) == 4 and parts[0] == "projects" and parts[2] == "topics":
        project, topic = parts[1], parts[3]
    elif len(parts) == 1:
        project = get("GOOGLE_CLOUD_PROJECT") or ""
        topic = raw
        if not project:
            raise ConfigError(
                f"ORDER_EVENTS_TOPIC is the topic id {raw!r}, which needs GOOGLE_CLOUD_PROJECT; "
                "or give it as projects/PROJECT/topics/TOPIC"
            )
    else:
        raise ConfigError(
            f"ORDER_EVENTS_TOPIC must be a topic id or projects/PROJECT/topics/TOPIC, got {raw!r}"
        )
    if not _TOPIC_ID.match(topic) or topic.startswith("goog") or not _PROJECT_ID.match(project):
        raise ConfigError(f"ORDER_EVENTS_TOPIC names no valid Pub/Sub topic: {raw!r}")
    return f"projects/{project}/topics/{topic}"


def _bool(get: Getter, name: str, default: bool) -> bool:
    raw = get(name)
    if raw is None:
        return default
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _function_path(get: Getter, name: str) -> str | None:
    path = get(name)
    if path is not None and not _FUNCTION_PATH.match(path):
        raise ConfigError(f"{name} must name a function as package.module:function, got {path!r}")
    return path


def _firestore_database(get: Getter) -> str:
    database = get("FIRESTORE_DATABASE") or DEFAULT_FIRESTORE_DATABASE
    if not _FIRESTORE_DATABASE.match(database):
        raise ConfigError(
            "FIRESTORE_DATABASE must be a Firestore database id (lowercase letters, digits and "
            f"'-', 4 to 63 characters) or (default), got {database!r}"
        )
    return database


def _origin_of(url: str, variable: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{variable} must be an absolute http(s) URL, got {url!r}")
    return f"{parts.scheme}://{parts.netloc}".lower()


def _exact_origin(entry: str) -> str:
    parts = urlsplit(entry)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(
            f"ALLOWED_ORIGINS entry {entry!r} is not an origin (scheme://host[:port], no path)"
        )
    return _origin_of(entry, "ALLOWED_ORIGINS")


def _int(get: Getter, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    raw = get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(f"{name} must be {bound}, got {value}")
    return value


def _float(
    get: Getter, name: str, default: float, *, minimum: float, maximum: float, suffix: str = ""
) -> float:
    raw = get(name)
    if raw is None:
        return default
    raw = raw.removesuffix(suffix) if suffix else raw
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


@dataclass(frozen=True)
class ServerLimits:
    """What the HTTP server under the function allows a client (checkout/api/server.py)."""

    read_seconds: float = 10.0  # a whole request, line to last body byte, from its first byte
    max_head_bytes: int = 32 * 1024  # its request line and headers together


def server_limits(env: Mapping[str, str] | None = None) -> ServerLimits:
    """The server's limits from `env` (default: os.environ); ConfigError names the bad variable."""
    env = os.environ if env is None else env

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    default = ServerLimits()
    return ServerLimits(
        read_seconds=_float(
            get, "REQUEST_READ_TIMEOUT_SECONDS", default.read_seconds, minimum=0.1, maximum=300
        ),
        # Below 8 KiB one header line the function allows (8190 bytes) would not fit.
        max_head_bytes=_int(
            get, "REQUEST_HEAD_MAX_BYTES", default.max_head_bytes, minimum=8192, maximum=1 << 20
        ),
    )
