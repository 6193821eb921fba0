"""The one-run privacy audit's estimator: an empirical lower bound on epsilon.

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS
2023). The auditor plants ``m`` canaries, includes each one independently with
probability 1/2 (:func:`draw_inclusions`), trains **once**, scores every canary
(higher means "more likely included"), guesses "in" for the ``k_plus`` highest
scores and "out" for the ``k_minus`` lowest and abstains on the rest
(:func:`guess_membership`). If the training is (epsilon, delta)-DP, the number of
correct guesses cannot be much larger than randomized response at epsilon would
allow; :func:`epsilon_lower_bound` turns the observed count into the largest epsilon
that the count rejects at the chosen confidence. :func:`audit_from_scores` does all
three steps.

Threat model and validity:
    The bound is a statement about the *training algorithm*: with probability at least
    ``confidence`` over the canaries' random inclusion and the training's randomness,
    the algorithm is not (eps, delta)-DP for any ``eps`` below the returned value. It
    holds for any scoring function, white- or black-box, provided that the guesses
    depend on the trained model (and fixed public information) only, not on the
    inclusions, and that ``k_plus``, ``k_minus`` and the confidence are chosen before
    looking at the inclusions. Trying several ``(k_plus, k_minus)`` and keeping the
    best bound is a multiple test: the stated confidence no longer holds.

The test (the paper's Theorem 5.2, and its appendix's Python for the p-value): with
``r`` guesses, ``v`` of them correct, ``q = e^eps / (1 + e^eps)`` and
``W ~ Binomial(r, q)``,

* pure DP (``delta = 0``, the paper's Theorem 3.1): the count of correct guesses is
  stochastically dominated by ``W``, so the p-value is ``P[W >= v]``;
* approximate DP: the p-value is
  ``P[W >= v] + 2 m delta max_{1 <= i <= v} P[v - i <= W < v] / i``, with ``m`` the
  number of canaries (all of them, abstentions included); it needs ``canaries``.

The lower bound is the largest ``eps`` whose p-value is below ``1 - confidence``,
found by bisection (the p-value grows with ``eps``); the returned value is the lower
end of the final bracket, so it errs low. It is ``0.0`` when even ``eps = 0`` is not
rejected.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> included = draw_inclusions(1000, generator=g)
    >>> scores = included.double() * 2.0 + torch.randn(1000, generator=g, dtype=torch.float64)
    >>> audit = audit_from_scores(scores, included, k_plus=100, k_minus=100)
    >>> audit.correct > 150 and audit.epsilon_lower_bound > 1.0
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from dlsec.attacks.privacy._common import PrivacyAttackError

__all__ = [
    "OneRunAudit",
    "audit_from_scores",
    "draw_inclusions",
    "epsilon_lower_bound",
    "guess_membership",
    "one_run_p_value",
]

_BISECTION_STEPS = 60
_EPS_CEILING = 1e4  # no count of guesses a computer holds rejects an epsilon this large


@dataclass(frozen=True)
class OneRunAudit:
    """The outcome of a one-run audit.

    Attributes:
        canaries: number of canaries ``m`` (scored, guessed or not).
        included: how many of them were included in training.
        k_plus: "in" guesses (the highest scores).
        k_minus: "out" guesses (the lowest scores).
        guesses: ``k_plus + k_minus``.
        correct: correct guesses among them.
        delta: the delta the bound is stated for.
        confidence: the bound's confidence level.
        epsilon_lower_bound: the largest epsilon rejected at ``confidence`` (0.0: none).
    """

    canaries: int
    included: int
    k_plus: int
    k_minus: int
    guesses: int
    correct: int
    delta: float
    confidence: float
    epsilon_lower_bound: float

    @property
    def accuracy(self) -> float:
        """Fraction of the guesses that were correct."""
        return self.correct / self.guesses


def _check_level(delta: float, confidence: float) -> None:
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise PrivacyAttackError(f"confidence must lie in (0, 1), got {confidence!r}")
    if not (isinstance(delta, (int, float)) and 0.0 <= delta < 1.0):
        raise PrivacyAttackError(f"delta must lie in [0, 1), got {delta!r}")


def _check_counts(correct: int, guesses: int, canaries: int | None, delta: float) -> int:
    for name, value in (("correct", correct), ("guesses", guesses)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise PrivacyAttackError(f"{name} must be a non-negative integer, got {value!r}")
    if correct > guesses:
        raise PrivacyAttackError(f"correct ({correct}) cannot exceed guesses ({guesses})")
    if canaries is None:
        if delta > 0.0:
            raise PrivacyAttackError(
                "delta > 0 needs the number of canaries (canaries=m): the bound's delta "
                "term grows with it"
            )
        return int(guesses)
    if isinstance(canaries, bool) or not isinstance(canaries, (int, np.integer)):
        raise PrivacyAttackError(f"canaries must be an integer, got {canaries!r}")
    if canaries < guesses:
        raise PrivacyAttackError(f"canaries ({canaries}) cannot be fewer than guesses ({guesses})")
    return int(canaries)


def _p_value(correct: int, guesses: int, epsilon: float, delta: float, canaries: int) -> float:
    """The paper's p-value, without argument checks (see :func:`one_run_p_value`)."""
    if correct == 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of randomized response at epsilon
    tail = float(stats.binom.sf(correct - 1, guesses, q))  # P[W >= v]
    if delta == 0.0:
        return min(tail, 1.0)
    # P[v - i <= W < v] for i = 1..v, then the largest of them divided by i
    below = stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, q)
    alpha = float(np.max(np.cumsum(below) / np.arange(1, correct + 1)))
    return min(tail + 2.0 * canaries * delta * alpha, 1.0)


def one_run_p_value(
    correct: int,
    guesses: int,
    *,
    epsilon: float,
    delta: float = 0.0,
    canaries: int | None = None,
) -> float:
    """Probability of at least ``correct`` correct guesses out of ``guesses`` under (epsilon, delta)-DP.

    An upper bound valid for every (epsilon, delta)-DP training (Steinke et al. 2023,
    Theorems 3.1 and 5.2); ``canaries`` (``m``) is needed when ``delta > 0``.
    """
    _check_level(delta, 0.5)
    m = _check_counts(correct, guesses, canaries, delta)
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon >= 0.0):
        raise PrivacyAttackError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    return _p_value(int(correct), int(guesses), float(epsilon), float(delta), m)


def epsilon_lower_bound(
    correct: int,
    guesses: int,
    *,
    delta: float = 0.0,
    confidence: float = 0.95,
    canaries: int | None = None,
) -> float:
    """The largest epsilon that ``correct`` correct guesses out of ``guesses`` reject.

    With probability at least ``confidence`` the audited training is not
    (eps, ``delta``)-DP for any smaller eps. 0.0 when the count is not significant
    (e.g. at or below chance). ``canaries`` (all ``m`` canaries, abstentions included)
    is required when ``delta > 0``.

    Example:
        >>> round(epsilon_lower_bound(100, 100), 3)  # solves (e^eps / (1 + e^eps))^100 = 0.05
        3.493
    """
    _check_level(delta, confidence)
    m = _check_counts(correct, guesses, canaries, delta)
    v, r, alpha = int(correct), int(guesses), 1.0 - float(confidence)
    if _p_value(v, r, 0.0, delta, m) >= alpha:
        return 0.0
    lo, hi = 0.0, 1.0  # invariant: p(lo) < alpha <= p(hi)
    while _p_value(v, r, hi, delta, m) < alpha:
        lo, hi = hi, 2.0 * hi
        if hi > _EPS_CEILING:  # pragma: no cover - needs astronomically many guesses
            return lo
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if _p_value(v, r, mid, delta, m) < alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return lo


def draw_inclusions(m: int, *, generator: torch.Generator) -> Tensor:
    """Which of ``m`` canaries go into training: each independently with probability 1/2.

    A bool tensor of length ``m`` on the generator's device.
    """
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise PrivacyAttackError(f"the number of canaries must be a positive integer, got {m!r}")
    return torch.rand(m, generator=generator, device=generator.device) < 0.5


def guess_membership(scores: Tensor, *, k_plus: int, k_minus: int) -> Tensor:
    """Guess +1 ("in") for the ``k_plus`` highest scores, -1 for the ``k_minus`` lowest, 0 else.

    Ties are broken by position (a stable sort), which does not depend on the
    inclusions. Returns an int8 tensor shaped like the flattened scores.
    """
    scores = torch.as_tensor(scores)
    if scores.dim() != 1:
        raise PrivacyAttackError(
            f"scores must be one score per canary (1-D), got shape {tuple(scores.shape)}"
        )
    if not torch.is_floating_point(scores):
        scores = scores.double()
    if not bool(torch.isfinite(scores).all()):
        raise PrivacyAttackError("scores must be finite (no NaN or inf)")
    m = scores.numel()
    for name, k in (("k_plus", k_plus), ("k_minus", k_minus)):
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise PrivacyAttackError(f"{name} must be a non-negative integer, got {k!r}")
    if k_plus + k_minus < 1:
        raise PrivacyAttackError("k_plus + k_minus must be at least 1 (the audit needs a guess)")
    if k_plus + k_minus > m:
        raise PrivacyAttackError(
            f"k_plus + k_minus = {k_plus + k_minus} guesses but only {m} canaries"
        )
    order = torch.argsort(scores, descending=True, stable=True)
    guesses = torch.zeros(m, dtype=torch.int8, device=scores.device)
    guesses[order[:k_plus]] = 1
    if k_minus:
        guesses[order[m - k_minus :]] = -1
    return guesses


def audit_from_scores(
    scores: Tensor,
    included: Tensor,
    *,
    k_plus: int,
    k_minus: int,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> OneRunAudit:
    """Guess from the canaries' scores, count the correct guesses and bound epsilon.

    ``scores``: one per canary, higher = more likely included; ``included``: the
    inclusions actually drawn (bool, e.g. from :func:`draw_inclusions`).
    """
    _check_level(delta, confidence)
    included = torch.as_tensor(included)
    if included.dtype != torch.bool:
        raise PrivacyAttackError(f"included must be a bool tensor, got dtype {included.dtype}")
    if included.dim() != 1 or included.numel() != torch.as_tensor(scores).numel():
        raise PrivacyAttackError(
            f"included has shape {tuple(included.shape)}; it needs one flag per score "
            f"({torch.as_tensor(scores).numel()})"
        )
    guesses = guess_membership(scores, k_plus=k_plus, k_minus=k_minus)
    truth = torch.where(included.to(guesses.device), 1, -1).to(torch.int8)
    correct = int((guesses == truth).sum())  # abstentions (0) never match +-1
    m = guesses.numel()
    bound = epsilon_lower_bound(
        correct, k_plus + k_minus, delta=delta, confidence=confidence, canaries=m
    )
    return OneRunAudit(
        canaries=m,
        included=int(included.sum()),
        k_plus=k_plus,
        k_minus=k_minus,
        guesses=k_plus + k_minus,
        correct=correct,
        delta=float(delta),
        confidence=float(confidence),
        epsilon_lower_bound=bound,
    )
