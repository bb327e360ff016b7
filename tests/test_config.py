"""Settings from the environment: defaults, derived values and clear errors."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from checkout import config
from checkout.config import ConfigError, load_settings
from checkout.keys import stripe_api_key_source
from devtools.secret_manager_emulator import SecretManagerEmulator


def test_defaults_match_the_contract():
    settings = load_settings({})
    assert settings.frontend_url == "http://localhost:5173"
    assert settings.allowed_origins == frozenset({"http://localhost:5173"})
    assert not settings.allow_any_origin
    assert settings.return_url == "http://localhost:5173/hero-me?session_id={CHECKOUT_SESSION_ID}"
    assert settings.product_name == "Hero Me Feelings - Personalized AAC Board"
    assert settings.price_amount == 200
    assert settings.price_currency == "usd"
    assert settings.stripe_price_id is None
    assert not settings.stripe_key_configured
    assert settings.status_open_ttl_ms == 0
    assert settings.order_ledger == "memory"
    assert settings.firestore_database == "(default)"


def test_the_ledger_settings_are_read():
    settings = load_settings(
        {
            "ORDER_LEDGER": "Firestore",
            "FIRESTORE_DATABASE": "orders-eu",
            "FIRESTORE_EMULATOR_HOST": "127.0.0.1:8086",
            "LEDGER_LEASE_SECONDS": "90",
        }
    )
    assert settings.order_ledger == "firestore"
    assert settings.firestore_database == "orders-eu"
    assert settings.firestore_emulator_host == "127.0.0.1:8086"
    assert settings.ledger_lease_seconds == 90


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_settings({}).price_amount = 1  # type: ignore[misc]


def test_frontend_url_is_required_on_cloud_run():
    with pytest.raises(ConfigError, match="FRONTEND_URL"):
        load_settings({"K_SERVICE": "checkout"})
    assert load_settings({"K_SERVICE": "x", "FRONTEND_URL": "https://a.example"}).on_cloud_run


def test_allowed_origins_are_parsed_and_star_is_explicit():
    settings = load_settings({"ALLOWED_ORIGINS": "https://a.example, https://b.example/"})
    assert settings.allowed_origins == frozenset({"https://a.example", "https://b.example"})
    assert load_settings({"ALLOWED_ORIGINS": "*"}).allow_any_origin


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"FRONTEND_URL": "localhost:5173"}, "FRONTEND_URL"),
        ({"ALLOWED_ORIGINS": "https://a.example/path"}, "ALLOWED_ORIGINS"),
        ({"ALLOWED_ORIGINS": " , "}, "ALLOWED_ORIGINS"),
        ({"RETURN_PATH": "hero-me"}, "RETURN_PATH"),
        ({"PRICE_AMOUNT": "two"}, "PRICE_AMOUNT"),
        ({"PRICE_AMOUNT": "0"}, "PRICE_AMOUNT"),
        ({"PRICE_CURRENCY": "dollars"}, "PRICE_CURRENCY"),
        ({"STRIPE_PRICE_ID": "prod_123"}, "STRIPE_PRICE_ID"),
        ({"STRIPE_TIMEOUT_SECONDS": "600"}, "STRIPE_TIMEOUT_SECONDS"),
        ({"STRIPE_MAX_RETRIES": "-1"}, "STRIPE_MAX_RETRIES"),
        ({"STATUS_OPEN_TTL_MS": "soon"}, "STATUS_OPEN_TTL_MS"),
        ({"REDIRECT_ON_COMPLETION": "never"}, "REDIRECT_ON_COMPLETION"),
        ({"ORDER_LEDGER": "redis"}, "ORDER_LEDGER"),
        ({"FIRESTORE_DATABASE": "Orders_DB"}, "FIRESTORE_DATABASE"),
        ({"LEDGER_LEASE_SECONDS": "0"}, "LEDGER_LEASE_SECONDS"),
    ],
)
def test_bad_values_name_the_variable(env, variable):
    with pytest.raises(ConfigError, match=variable):
        load_settings(env)


def test_stripe_secret_key_wins_over_stripe_secret_name(sm: SecretManagerEmulator):
    # The contract's key precedence: with both set, Secret Manager (holding another key) is
    # never asked, and the key the environment gave is the one used.
    sm.add_version("demo-project", "stripe-key", "sk_test_fromSecretManager000000000000")
    settings = load_settings(
        {
            "STRIPE_SECRET_KEY": "sk_test_fromTheEnvironment00000000000",
            "STRIPE_SECRET_NAME": "projects/demo-project/secrets/stripe-key",
            "SECRET_MANAGER_ENDPOINT": sm.endpoint,
        }
    )
    assert settings.stripe_key_configured
    assert stripe_api_key_source(settings).get() == "sk_test_fromTheEnvironment00000000000"
    assert sm.access_count == 0


def test_every_variable_read_is_listed_in_environment_variables():
    # Tests, benchmarks and the launcher start the service from a clean slate with that list.
    source = Path(config.__file__).read_text()
    read = set(re.findall(r'get(?:\(|,)\s*"([A-Z][A-Z_]+)"', source))
    assert read, "no variable found: the pattern no longer matches load_settings"
    assert read == set(config.ENVIRONMENT_VARIABLES)


@pytest.mark.parametrize(
    ("currency", "amount"), [("usd", "49"), ("usd", "1"), ("gbp", "29"), ("jpy", "49")]
)
def test_a_price_below_stripes_minimum_charge_is_refused(currency, amount):
    with pytest.raises(ConfigError, match=r"PRICE_AMOUNT .* minimum charge"):
        load_settings({"PRICE_CURRENCY": currency, "PRICE_AMOUNT": amount})


@pytest.mark.parametrize(("currency", "amount"), [("usd", "50"), ("gbp", "30"), ("jpy", "50")])
def test_the_minimum_charge_itself_is_accepted(currency, amount):
    assert load_settings({"PRICE_CURRENCY": currency, "PRICE_AMOUNT": amount}).price_amount == int(
        amount
    )


def test_a_dashboard_price_is_not_checked_against_price_amount():
    settings = load_settings({"STRIPE_PRICE_ID": "price_123", "PRICE_AMOUNT": "1"})
    assert settings.stripe_price_id == "price_123"


def test_stripe_api_base_must_be_https_on_cloud_run():
    cloud_run = {"K_SERVICE": "checkout", "FRONTEND_URL": "https://app.example.com"}
    with pytest.raises(ConfigError, match="STRIPE_API_BASE must use https"):
        load_settings({**cloud_run, "STRIPE_API_BASE": "http://stripe.example.com"})
    https = load_settings({**cloud_run, "STRIPE_API_BASE": "https://stripe-mock.example.com"})
    assert https.stripe_api_base == "https://stripe-mock.example.com"
    # Locally the emulator on loopback is plain http.
    assert load_settings({"STRIPE_API_BASE": "http://127.0.0.1:12111"}).stripe_api_base


@pytest.mark.parametrize("key", ["sk_live_abc123", "rk_live_abc123"])
def test_stripe_api_base_is_refused_with_a_live_key(key):
    with pytest.raises(ConfigError, match="live key"):
        load_settings({"STRIPE_SECRET_KEY": key, "STRIPE_API_BASE": "https://127.0.0.1:12111"})
    assert load_settings({"STRIPE_SECRET_KEY": key}).stripe_api_base is None


def test_deployment_id_defaults_to_the_service_name_and_is_checked():
    assert load_settings({}).deployment_id == "local"
    cloud_run = {"K_SERVICE": "checkout-api", "FRONTEND_URL": "https://app.example.com"}
    assert load_settings(cloud_run).deployment_id == "checkout-api"
    assert load_settings({**cloud_run, "DEPLOYMENT_ID": "shop-eu"}).deployment_id == "shop-eu"
    with pytest.raises(ConfigError, match="DEPLOYMENT_ID"):
        load_settings({"DEPLOYMENT_ID": "two words"})


def test_trusted_proxy_hops_default_to_googles_front_end_on_cloud_run_only():
    assert load_settings({}).trusted_proxy_hops == 0
    cloud_run = {"K_SERVICE": "checkout-api", "FRONTEND_URL": "https://app.example.com"}
    assert load_settings(cloud_run).trusted_proxy_hops == 1
    assert load_settings({**cloud_run, "TRUSTED_PROXY_HOPS": "2"}).trusted_proxy_hops == 2


def test_the_in_flight_reserve_defaults_to_a_tenth_of_the_cap_and_leaves_public_room():
    assert load_settings({}).stripe_in_flight_reserve == 10
    assert load_settings({"STRIPE_MAX_IN_FLIGHT": "2"}).stripe_in_flight_reserve == 1
    assert load_settings({"STRIPE_MAX_IN_FLIGHT": "1"}).stripe_in_flight_reserve == 0
    assert load_settings({"STRIPE_IN_FLIGHT_RESERVE": "0"}).stripe_in_flight_reserve == 0
    with pytest.raises(ConfigError, match="STRIPE_IN_FLIGHT_RESERVE must be below"):
        load_settings({"STRIPE_MAX_IN_FLIGHT": "4", "STRIPE_IN_FLIGHT_RESERVE": "4"})
