"""Settings from the environment: defaults, derived values and clear errors."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from checkout import config
from checkout.config import ConfigError, load_settings


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


def test_key_precedence_fields():
    settings = load_settings({"STRIPE_SECRET_KEY": "sk_test_x", "STRIPE_SECRET_NAME": "s"})
    assert settings.stripe_secret_key == "sk_test_x"
    assert settings.stripe_key_configured


def test_every_variable_read_is_listed_in_environment_variables():
    # Tests, benchmarks and the launcher start the service from a clean slate with that list.
    source = Path(config.__file__).read_text()
    read = set(re.findall(r'get(?:\("|, ")([A-Z][A-Z_]+)"', source))
    assert read, "no variable found: the pattern no longer matches load_settings"
    assert read == set(config.ENVIRONMENT_VARIABLES)
