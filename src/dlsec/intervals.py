"""Confidence intervals for the rates dlsec reports (accuracy, attack success, recognition).

Example:
    >>> [round(v, 4) for v in wilson_interval(0, 10)]
    [0.0, 0.2775]
    >>> rate_interval(0.5, 10) == wilson_interval(5, 10)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

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
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == n else min(1.0, centre + half)  # exact ends, not 1 - 1e-16
    return lower, upper


def rate_interval(rate: float, n: int) -> tuple[float, float]:
    """:func:`wilson_interval` of a rate measured on ``n`` points (``rate * n`` rounded)."""
    return wilson_interval(min(n, max(0, round(rate * n))), n)


# -- interval records: what a section attaches to a metric (JSON-ready) ----------------------
MIN_EXPECTED_FALSE_POSITIVES = 10
"""A TPR at FPR ``f`` measured on ``n`` non-members rests on ``n * f`` expected false
positives; below this many the FPR is not resolved and the TPR is flagged ``unresolved``."""


def interval_record(lower: float, upper: float, n: int, method: str, **flags: Any) -> dict[str, Any]:
    """``{"lower", "upper", "n", "method", ...flags}``: what
    :attr:`dlsec.audit.result.SectionResult.intervals` holds per metric.

    Example:
        >>> interval_record(0.1, 0.3, 50, "wilson")
        {'lower': 0.1, 'upper': 0.3, 'n': 50, 'method': 'wilson'}
    """
    if not (math.isfinite(lower) and math.isfinite(upper) and lower <= upper):
        raise ValueError(f"an interval needs finite lower <= upper, got [{lower}, {upper}]")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return {"lower": float(lower), "upper": float(upper), "n": int(n), "method": method} | flags


def rate_record(rate: float, n: int) -> dict[str, Any]:
    """The Wilson 95% interval record of a rate measured on ``n`` points.

    Example:
        >>> r = rate_record(0.5, 10)
        >>> [round(r["lower"], 4), round(r["upper"], 4), r["n"], r["method"]]
        [0.2366, 0.7634, 10, 'wilson']
    """
    lo, hi = rate_interval(rate, n)
    return interval_record(lo, hi, n, "wilson")


def fpr_resolved(n_nonmembers: int, fpr: float) -> bool:
    """Whether ``n_nonmembers`` can resolve a false-positive rate ``fpr``: at least
    :data:`MIN_EXPECTED_FALSE_POSITIVES` expected false positives."""
    return n_nonmembers * fpr >= MIN_EXPECTED_FALSE_POSITIVES


# -- the bootstrap -------------------------------------------------------------------------
def bootstrap_interval(
    statistic: Callable[..., torch.Tensor], *arrays: torch.Tensor, n: int = 1000,
    generator: torch.Generator, level: float = 0.95,
) -> tuple[float, float]:
    """The percentile bootstrap interval of ``statistic`` over ``arrays``.

    Each array (a group, e.g. members and non-members) is resampled with replacement on
    its own, ``n`` times at once: ``statistic`` receives one ``(n, len(array))`` tensor per
    array and returns the ``n`` statistics (vectorised: no Python loop over resamples).
    The ``generator`` makes it reproducible.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not arrays or any(a.ndim != 1 or a.numel() == 0 for a in arrays):
        raise ValueError("bootstrap_interval needs one or more non-empty 1-D arrays")
    resampled = [
        a[torch.randint(a.numel(), (n, a.numel()), generator=generator, device=a.device)]
        for a in arrays
    ]
    stats = statistic(*resampled).double().flatten()
    if stats.numel() != n:
        raise ValueError(f"statistic returned {stats.numel()} values for {n} resamples")
    alpha = (1.0 - level) / 2
    q = torch.quantile(stats.cpu(), torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64))
    return float(q[0]), float(q[1])


def auc_statistic(members: torch.Tensor, nonmembers: torch.Tensor) -> torch.Tensor:
    """The ROC AUC of each row (members' scores against non-members'; ties count one
    half), rows being resamples: ``(n, P)`` and ``(n, Q)`` give ``n`` AUCs.

    Example:
        >>> auc_statistic(torch.tensor([[2.0, 1.0]]), torch.tensor([[1.0, 0.0]])).tolist()
        [0.875]
    """
    q = torch.sort(nonmembers.double(), dim=1).values
    m = members.double().contiguous()
    below = torch.searchsorted(q, m, right=False).double()
    at_or_below = torch.searchsorted(q, m, right=True).double()
    wins = (below + (at_or_below - below) / 2).sum(1)
    return wins / (members.shape[1] * nonmembers.shape[1])


def tpr_at_fpr_statistic(fpr: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The statistic "highest TPR at a false-positive rate of at most ``fpr``" (a sample is
    called a member when its score is ``>=`` the threshold; at most ``floor(fpr * Q)`` of
    the ``Q`` non-members may be called), per row as in :func:`auc_statistic`.

    Example:
        >>> stat = tpr_at_fpr_statistic(0.0)
        >>> stat(torch.tensor([[3.0, 2.0, 0.5]]), torch.tensor([[1.0, 2.0]])).tolist()
        [0.3333333333333333]
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")

    def statistic(members: torch.Tensor, nonmembers: torch.Tensor) -> torch.Tensor:
        n_neg = nonmembers.shape[1]
        k = math.floor(fpr * n_neg + 1e-9)  # false positives allowed
        if k >= n_neg:
            return torch.ones(members.shape[0], dtype=torch.float64, device=members.device)
        # the (k+1)-th highest non-member score: a threshold above it calls at most k
        bar = torch.sort(nonmembers.double(), dim=1, descending=True).values[:, k : k + 1]
        return (members.double() > bar).double().mean(1)

    return statistic


# -- membership inference: AUC and TPRs together --------------------------------------------
BOOTSTRAP_RESAMPLES = 1000
"""Resamples of the bootstrap intervals dlsec reports (membership AUC and TPRs)."""


def membership_intervals(scores: torch.Tensor, is_member: torch.Tensor, fprs: dict[str, float],
                         *, generator: torch.Generator, n: int = BOOTSTRAP_RESAMPLES
                         ) -> dict[str, dict[str, Any]]:
    """Bootstrap 95% interval records of one membership attack's ROC AUC (key ``auc``) and
    its TPR at each false-positive rate of ``fprs`` (keyed as there), members and
    non-members (``scores`` split by the boolean ``is_member``) resampled apart.

    The draws come from ``generator`` in a fixed order (the AUC, then ``fprs`` in their
    order), so the same generator state gives the same records. A TPR at an FPR the
    non-members cannot resolve (:func:`fpr_resolved`) is flagged ``unresolved``. Every
    record's ``n`` is the number of scored records; without members or without
    non-members nothing can be resampled and the answer is ``{}``.

    Example:
        >>> scores = torch.tensor([3.0, 2.0, 1.0, 0.0])
        >>> got = membership_intervals(scores, torch.tensor([True, True, False, False]),
        ...                            {"tpr_at_1_fpr": 0.01},
        ...                            generator=torch.Generator().manual_seed(0))
        >>> got["auc"]["lower"], got["auc"]["upper"], got["tpr_at_1_fpr"]["unresolved"]
        (1.0, 1.0, True)
    """
    member = is_member.bool().to(scores.device)
    members = scores[member].double().cpu()
    others = scores[~member].double().cpu()
    if not members.numel() or not others.numel():
        return {}
    total = int(members.numel() + others.numel())
    lo, hi = bootstrap_interval(auc_statistic, members, others, n=n, generator=generator)
    out = {"auc": interval_record(lo, hi, total, "bootstrap")}
    for key, fpr in fprs.items():
        lo, hi = bootstrap_interval(tpr_at_fpr_statistic(fpr), members, others, n=n,
                                    generator=generator)
        flags = {} if fpr_resolved(int(others.numel()), fpr) else {"unresolved": True}
        out[key] = interval_record(lo, hi, total, "bootstrap", **flags)
    return out
