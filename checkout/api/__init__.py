"""The HTTP API: the only part that speaks HTTP (docs/layout.md)."""
