"""The checkout API for Stripe embedded Checkout: see README.md, and main.py for the entry point."""
