"""The inventory service: one balance per product and the append-only ledger that explains it."""
