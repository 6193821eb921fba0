"""Confidence intervals for the rates dlsec reports (accuracy, attack success, recognition).

Example:
    >>> [round(v, 4) for v in wilson_interval(0, 10)]
    [0.0, 0.2775]
    >>> rate_interval(0.5, 10) == wilson_interval(5, 10)
    True
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for ``successes`` out of ``n`` (95% at the default ``z``);
    ``n`` 0 gives ``(0.0, 1.0)`` (nothing measured, nothing known)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_interval(rate: float, n: int) -> tuple[float, float]:
    """:func:`wilson_interval` of a rate measured on ``n`` points (``rate * n`` rounded)."""
    return wilson_interval(min(n, max(0, round(rate * n))), n)
