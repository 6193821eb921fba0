"""Zero-trust model serving: API keys, per-key limits and the query log (``store``).

The HTTP app, output policies, extraction detection, watermarking and ``HttpOracle``
join this package as issue 15 proceeds; see DESIGN.md ("Layout").
"""
