"""Stripe access: the only part that speaks to Stripe (docs/layout.md)."""
