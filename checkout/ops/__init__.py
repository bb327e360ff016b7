"""The operator commands: reconcile, doctor, register-webhook, setup, teardown (docs/layout.md)."""
