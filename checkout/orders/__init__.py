"""The orders: model, intake, ledger, publisher and delivery (docs/layout.md); no HTTP here."""
