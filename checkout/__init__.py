"""The checkout API for Stripe embedded Checkout: see README.md, and main.py for the entry point."""

import sys


def _import_stripe_without_default_clients() -> None:
    """Import the Stripe SDK first, with the HTTP libraries it picks a default client from hidden.

    stripe looks for requests, httpx and aiohttp as it is first imported, to pick default
    clients, and imports whichever is installed. Every call of ours goes through our own
    transport (checkout/stripe_transport.py), so that would only add requests (with urllib3,
    charset_normalizer and idna: about 45 ms) to every cold start. The libraries stay importable
    for whoever needs them later: the Secret Manager client needs requests, and imports it only
    with STRIPE_SECRET_NAME.
    """
    if "stripe" in sys.modules:
        return
    hidden = [name for name in ("requests", "httpx", "aiohttp") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
    try:
        import stripe  # noqa: F401, PLC0415  # first, and only here, with the libraries hidden
    finally:
        for name in hidden:
            del sys.modules[name]


_import_stripe_without_default_clients()
