"""Stripe's rules that the SDK's types cannot express, each named, for each endpoint.

Each `(params, context) -> None` raises Stripe's error; `RULES` orders them (docs/emulator.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from devtools.stripe_emulator.listing import MAX_LIMIT
from devtools.stripe_emulator.state import (
    METADATA_MAX_KEY_LENGTH,
    METADATA_MAX_KEYS,
    METADATA_MAX_VALUE_LENGTH,
    MIN_EXPIRES_IN_SECONDS,
    RENAMED_UI_MODES_SINCE,
    SESSION_LIFETIME_SECONDS,
    UI_MODE_NEW_TO_OLD,
    UI_MODE_OLD_TO_NEW,
    StripeEmulatorError,
    _invalid,
    _missing,
)

# Currencies Stripe accepts for payments (docs.stripe.com/currencies, "Presentment currencies").
CURRENCIES = frozenset(
    """
    usd aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob brl bsd bwp
    byn bzd cad cdf chf clp cny cop crc cve czk djf dkk dop dzd egp etb eur fjd fkp gbp gel gip
    gmd gnf gtq gyd hkd hnl htg huf idr ils inr isk jmd jod jpy kes kgs khr kmf krw kwd kyd kzt
    lak lbp lkr lrd lsl mad mdl mga mkd mmk mnt mop mur mvr mwk mxn myr mzn nad ngn nio nok npr
    nzd omr pab pen pgk php pkr pln pyg qar ron rsd rub rwf sar sbd scr sek sgd shp sle sos srd
    std szl thb tjs top try ttd twd tzs uah ugx uyu uzs vnd vuv wst xaf xcd xof xpf yer zar zmw
    """.split()  # noqa: SIM905 (a table reads better than 140 quoted strings)
)
# Minimum charge per settlement currency, in the API's minor units (docs.stripe.com/currencies,
# "Minimum and maximum charge amounts"). JPY has no minor unit: its 50 is ¥50.
MINIMUM_AMOUNTS = {
    "usd": 50, "aed": 200, "aud": 50, "bgn": 100, "brl": 50, "cad": 50, "chf": 50, "czk": 1500,
    "dkk": 250, "eur": 50, "gbp": 30, "hkd": 400, "huf": 17500, "inr": 50, "jpy": 50,
    "mxn": 1000, "myr": 200, "nok": 300, "nzd": 50, "pln": 200, "ron": 200, "sek": 300,
    "sgd": 50, "thb": 1000,
}  # fmt: skip
ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv"}
    | {"xaf", "xof", "xpf"}
)
MAXIMUM_AMOUNT = 99_999_999
# Line items per Checkout Session in payment mode (docs.stripe.com/api/checkout/sessions/create).
MAX_LINE_ITEMS_PAYMENT = 100
CLIENT_REFERENCE_ID_MAX_LENGTH = 200


class Context(NamedTuple):
    version_date: str
    prices: Mapping[str, dict[str, Any]]  # Dashboard prices the emulator knows, by id
    now: int
    livemode: bool = False


Rule = Callable[[dict[str, Any], Context], None]


# --- before the types: API versions ---------------------------------------------------------------


def names_of_this_api_version(endpoint: str, params: dict[str, Any], version_date: str) -> None:
    """Versions before the dahlia rename name ui_mode the old way: check, then store new names."""
    if endpoint != "create_session" or version_date >= RENAMED_UI_MODES_SINCE:
        return
    value = params.get("ui_mode")
    if value is None:
        return
    if value not in UI_MODE_OLD_TO_NEW:
        allowed = ", ".join(UI_MODE_NEW_TO_OLD.values())
        raise _invalid(f"Invalid ui_mode: must be one of {allowed}", "ui_mode")
    params["ui_mode"] = UI_MODE_OLD_TO_NEW[value]


# --- POST /v1/checkout/sessions -------------------------------------------------------------------


def mode_is_required(params: dict[str, Any], _: Context) -> None:
    # The spec leaves `mode` optional, but the API reference marks it required.
    if "mode" not in params:
        raise _missing("mode")


def embedded_page_urls(params: dict[str, Any], context: Context) -> None:
    """return_url on embedded pages (unless redirect_on_completion=never), success_url on hosted."""
    ui_mode = params.get("ui_mode", "hosted_page")
    shown = ui_mode
    if context.version_date < RENAMED_UI_MODES_SINCE:
        shown = UI_MODE_NEW_TO_OLD.get(ui_mode, ui_mode)
    for name in ("return_url", "success_url", "cancel_url"):
        if name in params:
            parts = urlsplit(params[name])
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise _invalid("Not a valid URL", name)
    redirect = params.get("redirect_on_completion")
    if ui_mode == "hosted_page":
        for name in ("return_url", "redirect_on_completion"):
            if name in params:
                raise _invalid(
                    f"You can only specify `{name}` when `ui_mode` is `embedded_page` or "
                    f"`elements`, not `{shown}`.",
                    name,
                )
        return
    for name in ("success_url", "cancel_url"):
        if name in params:
            raise _invalid(
                f"You cannot specify `{name}` when `ui_mode` is `{shown}`. "
                "Use `return_url` instead.",
                name,
            )
    if redirect == "never" and "return_url" in params:
        raise _invalid(
            "You cannot specify `return_url` when `redirect_on_completion` is `never`.",
            "return_url",
        )
    if redirect != "never" and "return_url" not in params:
        raise _invalid(
            f"Missing required param: return_url. It is required when `ui_mode` is `{shown}`, "
            "unless `redirect_on_completion` is `never`.",
            "return_url",
        )


def line_items_by_mode(params: dict[str, Any], _: Context) -> None:
    """None in setup mode; at least one otherwise; at most 100 in payment mode."""
    items = params.get("line_items")
    mode = params.get("mode")
    if mode == "setup":
        if items is not None:
            raise _invalid("You cannot pass `line_items` in `setup` mode.", "line_items")
        return
    if not items:
        raise _missing("line_items")
    if mode == "payment" and len(items) > MAX_LINE_ITEMS_PAYMENT:
        raise _invalid(
            f"In `payment` mode, you can have at most {MAX_LINE_ITEMS_PAYMENT} line items, but "
            f"you passed {len(items)}.",
            "line_items",
        )


def line_item_prices(params: dict[str, Any], context: Context) -> None:
    """Each item: a quantity >= 1, and exactly one of a known price or price_data."""
    for index, item in enumerate(params.get("line_items") or ()):
        prefix = f"line_items[{index}]"
        if "quantity" not in item:
            raise _missing(f"{prefix}[quantity]")
        if int(item["quantity"]) < 1:
            raise _invalid("This value must be greater than or equal to 1.", f"{prefix}[quantity]")
        if "price" in item and "price_data" in item:
            raise _exclusive(("price", "price_data"), f"{prefix}[price]")
        if "price" in item:
            if item["price"] not in context.prices:
                raise StripeEmulatorError(
                    400,
                    f"No such price: '{item['price']}'",
                    code="resource_missing",
                    param=f"{prefix}[price]",
                )
        elif "price_data" in item:
            _price_data(item["price_data"], f"{prefix}[price_data]")
        else:
            raise _invalid(
                f"You must specify either `price` or `price_data` in `{prefix}`.",
                f"{prefix}[price]",
            )


def _price_data(data: dict[str, Any], prefix: str) -> None:
    amounts = [name for name in ("unit_amount", "unit_amount_decimal") if name in data]
    if len(amounts) > 1:
        raise _exclusive(("unit_amount", "unit_amount_decimal"), f"{prefix}[unit_amount]")
    if not amounts:
        raise _missing(f"{prefix}[unit_amount]")
    amount = data[amounts[0]]
    if float(amount) < 0:
        raise _invalid("This value must be greater than or equal to 0.", f"{prefix}[{amounts[0]}]")
    if "product" in data and "product_data" in data:
        raise _exclusive(("product", "product_data"), f"{prefix}[product]")
    if "product" not in data:
        if "product_data" not in data:
            raise _missing(f"{prefix}[product_data]")
        if not data["product_data"].get("name", "").strip():
            raise _missing(f"{prefix}[product_data][name]")


def currencies(params: dict[str, Any], context: Context) -> None:
    """Every currency is one Stripe supports, in lowercase; all items share one."""
    seen = set()
    for param, currency in _currencies(params, context):
        if currency != currency.lower() or not currency.isascii():
            raise _invalid(
                f"Invalid currency: {currency}. Use a three-letter ISO code in lowercase.", param
            )
        if currency not in CURRENCIES:
            raise _invalid(
                f"Invalid currency: {currency}. Stripe currently supports these currencies: "
                f"{', '.join(sorted(CURRENCIES))}",
                param,
            )
        if param.startswith("line_items"):
            seen.add(currency)
    if len(seen) > 1:
        raise _invalid("All line items must have the same currency.", "line_items")


def _currencies(params: dict[str, Any], context: Context) -> Iterator[tuple[str, str]]:
    if "currency" in params:
        yield "currency", params["currency"]
    for index, item in enumerate(params.get("line_items") or ()):
        if "price_data" in item:
            yield f"line_items[{index}][price_data][currency]", item["price_data"]["currency"]
        elif "price" in item:
            yield f"line_items[{index}][price]", context.prices[item["price"]]["currency"]


def recurring_prices_by_mode(params: dict[str, Any], context: Context) -> None:
    """Recurring prices only in subscription mode, which needs at least one."""
    mode = params.get("mode")
    recurring = [
        index
        for index, item in enumerate(params.get("line_items") or ())
        if _unit_price(item, context)[1]
    ]
    if mode == "payment" and recurring:
        raise _invalid(
            "You specified `payment` mode but passed a recurring price. Either switch to "
            "`subscription` mode or use only one-time prices.",
            f"line_items[{recurring[0]}]",
        )
    if mode == "subscription" and not recurring:
        raise _invalid(
            "You must provide at least one recurring price in `subscription` mode when using "
            "prices.",
            "line_items",
        )


def minimum_amount(params: dict[str, Any], context: Context) -> None:
    """In payment mode the total reaches the currency's minimum charge, and stays under the max."""
    items = params.get("line_items") or ()
    if params.get("mode") != "payment" or not items:
        return
    total = sum(_unit_price(item, context)[0] * int(item["quantity"]) for item in items)
    currency = _item_currency(items[0], context)
    minimum = MINIMUM_AMOUNTS.get(currency, 0)
    if total < minimum:
        shown = f"{minimum}" if currency in ZERO_DECIMAL else f"{minimum / 100:.2f}"
        raise _invalid(
            f"The Checkout Session's total amount due must add up to at least {shown} {currency}.",
            "line_items",
            code="amount_too_small",
        )
    if total > MAXIMUM_AMOUNT:
        raise _invalid(
            f"The Checkout Session's total amount due must be no more than {MAXIMUM_AMOUNT} "
            f"(in the smallest unit of {currency}).",
            "line_items",
            code="amount_too_large",
        )


def _unit_price(item: dict[str, Any], context: Context) -> tuple[float, bool]:
    """A line item's unit amount (minor units) and whether its price is recurring."""
    if "price" in item:
        price = context.prices[item["price"]]
        return price["unit_amount"], price["type"] == "recurring"
    data = item["price_data"]
    amount = float(data.get("unit_amount", data.get("unit_amount_decimal", 0)))
    return amount, "recurring" in data


def _item_currency(item: dict[str, Any], context: Context) -> str:
    if "price" in item:
        return str(context.prices[item["price"]]["currency"])
    return str(item["price_data"]["currency"])


def metadata_limits(params: dict[str, Any], _: Context) -> None:
    """Every `metadata` hash, at any depth: 50 keys, keys of 40 characters, values of 500."""
    for param, metadata in _metadata_hashes(params, ""):
        if len(metadata) > METADATA_MAX_KEYS:
            raise _invalid(
                f"Invalid {param}: metadata can have up to {METADATA_MAX_KEYS} keys, but you "
                f"passed in {len(metadata)} keys.",
                param,
            )
        for key, value in metadata.items():
            if len(key) > METADATA_MAX_KEY_LENGTH or "[" in key or "]" in key:
                raise _invalid(
                    f"Invalid {param} key '{key}': keys can have up to "
                    f"{METADATA_MAX_KEY_LENGTH} characters and cannot contain square brackets.",
                    param,
                )
            if len(value) > METADATA_MAX_VALUE_LENGTH:
                raise _invalid(
                    f"Metadata values can have up to {METADATA_MAX_VALUE_LENGTH} characters, but "
                    f"you passed in a value that is {len(value)} characters.",
                    f"{param}[{key}]",
                )


def _metadata_hashes(node: Any, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        param = f"{prefix}[{key}]" if prefix else str(key)
        if key == "metadata" and isinstance(value, dict):
            yield param, value
        elif isinstance(value, (dict, list)):
            yield from _metadata_hashes(value, param)


def customer_or_customer_email(params: dict[str, Any], _: Context) -> None:
    if "customer" in params and "customer_email" in params:
        raise _exclusive(("customer", "customer_email"), "customer")


def customer_email_and_reference(params: dict[str, Any], _: Context) -> None:
    email = params.get("customer_email")
    if email is not None and "@" not in email:
        raise _invalid(f"Invalid email address: {email}", "customer_email")
    reference = params.get("client_reference_id")
    if reference is not None and len(reference) > CLIENT_REFERENCE_ID_MAX_LENGTH:
        raise _invalid(
            f"client_reference_id can have up to {CLIENT_REFERENCE_ID_MAX_LENGTH} characters.",
            "client_reference_id",
        )


def expires_at_window(params: dict[str, Any], context: Context) -> None:
    if "expires_at" not in params:
        return
    expires_at = int(params["expires_at"])
    # A little slack, because the caller computed its timestamp a moment ago.
    earliest = context.now + MIN_EXPIRES_IN_SECONDS - 10
    if not earliest <= expires_at <= context.now + SESSION_LIFETIME_SECONDS:
        raise _invalid(
            "The `expires_at` timestamp must be between 30 minutes and 24 hours from Checkout "
            "Session creation.",
            "expires_at",
        )


# --- POST /v1/refunds -----------------------------------------------------------------------------


def payment_intent_or_charge(params: dict[str, Any], _: Context) -> None:
    if "payment_intent" not in params and "charge" not in params:
        raise _invalid(
            "One of the following params should be provided for this request: payment_intent or "
            "charge.",
            "payment_intent",
        )


def refund_amount(params: dict[str, Any], _: Context) -> None:
    if "amount" in params and int(params["amount"]) < 1:
        raise _invalid("This value must be greater than or equal to 1.", "amount")


# --- POST /v1/webhook_endpoints(/{id}) ------------------------------------------------------------


def webhook_url(params: dict[str, Any], context: Context) -> None:
    """An http(s) URL; a live mode endpoint's must be https."""
    if "url" not in params:
        return
    url = params["url"]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _invalid(f"Invalid URL: {url}", "url", code="url_invalid")
    if context.livemode and parts.scheme != "https":
        raise _invalid("Invalid URL: live mode webhook endpoints must use https.", "url")


# --- GET lists ------------------------------------------------------------------------------------


def page_limit(params: dict[str, Any], _: Context) -> None:
    if "limit" in params and not 1 <= int(params["limit"]) <= MAX_LIMIT:
        raise _invalid(
            f"This value must be between 1 and {MAX_LIMIT} (it was {params['limit']}).", "limit"
        )


def one_cursor(params: dict[str, Any], _: Context) -> None:
    if "starting_after" in params and "ending_before" in params:
        raise _exclusive(("ending_before", "starting_after"), "ending_before")


def type_or_types(params: dict[str, Any], _: Context) -> None:
    if "type" in params and "types" in params:
        raise _exclusive(("type", "types"), "types")


def _exclusive(names: tuple[str, ...], param: str) -> StripeEmulatorError:
    return StripeEmulatorError(
        400,
        f"You may only specify one of these parameters: {', '.join(names)}.",
        code="parameters_exclusive",
        param=param,
    )


RULES: dict[str, tuple[Rule, ...]] = {
    "create_session": (
        mode_is_required,
        embedded_page_urls,
        line_items_by_mode,
        line_item_prices,
        currencies,
        recurring_prices_by_mode,
        minimum_amount,
        metadata_limits,
        customer_or_customer_email,
        customer_email_and_reference,
        expires_at_window,
    ),
    "create_refund": (payment_intent_or_charge, refund_amount, metadata_limits),
    "create_webhook_endpoint": (webhook_url, metadata_limits),
    "update_webhook_endpoint": (webhook_url, metadata_limits),
    "list_sessions": (page_limit, one_cursor),
    "list_events": (page_limit, one_cursor, type_or_types),
    "list_webhook_endpoints": (page_limit, one_cursor),
}


def check(endpoint: str, params: dict[str, Any], context: Context) -> None:
    """Raise Stripe's error for the first hand-written rule of this endpoint that fails."""
    for rule in RULES.get(endpoint, ()):
        rule(params, context)
