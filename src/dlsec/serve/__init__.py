"""Zero-trust model serving: the HTTP app (``app``: ``create_app``, ``dlsec serve``), API
keys, per-key budgets and the query log (``store``), request limits (``limits``) and the
Oracle of a served model (``http_oracle.HttpOracle``).

Extraction detection and watermarking join this package as issue 15 proceeds; see
DESIGN.md ("Layout").
"""
