"""Zero-trust model serving: the HTTP app (``app``: ``create_app``, ``dlsec serve``), API
keys, per-key budgets and the query log (``store``), request limits (``limits``), the
Oracle of a served model (``http_oracle.HttpOracle``), PRADA extraction detection
(``detection``) and DAWN watermarking of answers with the ownership test (``watermark``).
See DESIGN.md ("Layout").
"""
