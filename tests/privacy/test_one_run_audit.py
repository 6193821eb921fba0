"""The one-run audit's estimator (Steinke, Nasr, Jagielski 2023) on hand-checked values.

The randomized-response mechanism below is exactly eps-DP for each canary (its output
bit for a canary depends on that canary's inclusion only), and it is the mechanism the
paper's bound is tight for: an estimator that overshoots its epsilon more often than
the confidence allows is wrong.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats

from dlsec.attacks.privacy import PrivacyAttackError
from dlsec.attacks.privacy.one_run import (
    OneRunAudit,
    audit_from_scores,
    draw_inclusions,
    epsilon_lower_bound,
    guess_membership,
    one_run_p_value,
)
from dlsec.errors import DlsecError


def _all_correct_closed_form(k: int, alpha: float = 0.05) -> float:
    """Pure DP, k of k correct: the bound solves (e^eps / (1 + e^eps))^k = alpha."""
    q = alpha ** (1.0 / k)
    return math.log(q / (1.0 - q))


def _randomized_response_scores(
    included: torch.Tensor, epsilon: float, generator: torch.Generator
) -> torch.Tensor:
    """Each canary's bit is its inclusion, flipped with probability 1 / (1 + e^eps); plus tie noise."""
    flip = torch.rand(included.numel(), generator=generator) < 1.0 / (1.0 + math.exp(epsilon))
    bit = (included ^ flip).double()
    # the noise is independent of the inclusions (post-processing): it only breaks ties
    return bit + 0.01 * torch.rand(included.numel(), generator=generator, dtype=torch.float64)


# ---------------------------------------------------------------- the bound itself


@pytest.mark.parametrize("k", [5, 10, 100, 1000])
def test_all_correct_matches_the_closed_form(k: int) -> None:
    assert epsilon_lower_bound(k, k) == pytest.approx(_all_correct_closed_form(k), rel=1e-6)


def test_all_correct_bound_grows_with_k_and_stays_finite() -> None:
    bounds = [epsilon_lower_bound(k, k) for k in (5, 10, 50, 100, 1000, 10_000)]
    assert all(math.isfinite(b) and b > 0 for b in bounds[1:])
    assert all(b2 > b1 + 0.3 for b1, b2 in itertools.pairwise(bounds))
    assert epsilon_lower_bound(4, 4) == 0.0  # (1/2)^4 = 0.0625 >= 0.05: not significant
    assert epsilon_lower_bound(5, 5) > 0.0  # (1/2)^5 = 0.031 < 0.05


@pytest.mark.parametrize("correct", [0, 250, 500, 520])
def test_chance_or_worse_gives_zero(correct: int) -> None:
    # 520 of 1000 is within chance at 95 %: P[Bin(1000, 1/2) >= 520] = 0.11
    assert epsilon_lower_bound(correct, 1000) == 0.0


def test_bound_is_monotone_in_the_correct_count() -> None:
    bounds = [epsilon_lower_bound(v, 1000) for v in range(500, 1001, 20)]
    assert all(b2 >= b1 for b1, b2 in itertools.pairwise(bounds))
    positive = [b for b in bounds if b > 0]
    assert len(positive) >= 20
    assert all(b2 > b1 for b1, b2 in itertools.pairwise(positive))


def test_bound_shrinks_with_delta_and_with_confidence() -> None:
    pure = epsilon_lower_bound(900, 1000, canaries=2000)
    small = epsilon_lower_bound(900, 1000, delta=1e-6, canaries=2000)
    large = epsilon_lower_bound(900, 1000, delta=1e-3, canaries=2000)
    assert pure >= small > large > 0.0
    assert pure - large > 0.05  # delta = 1e-3 with 2000 canaries costs visibly
    assert (
        epsilon_lower_bound(900, 1000, confidence=0.99)
        < pure
        < epsilon_lower_bound(900, 1000, confidence=0.8)
    )


def test_p_value_by_hand() -> None:
    # r = 2 guesses, v = 2 correct, eps = ln 3 -> q = 3/4; W ~ Bin(2, 3/4)
    # P[W >= 2] = 9/16; P[1 <= W < 2] / 1 = 6/16; P[0 <= W < 2] / 2 = 7/32 -> max 6/16
    eps = math.log(3.0)
    assert one_run_p_value(2, 2, epsilon=eps) == pytest.approx(9 / 16, rel=1e-9)
    p = one_run_p_value(2, 2, epsilon=eps, delta=0.01, canaries=10)
    assert p == pytest.approx(9 / 16 + 2 * 10 * 0.01 * 6 / 16, rel=1e-9)
    # pure DP is the binomial tail
    assert one_run_p_value(700, 1000, epsilon=1.0) == pytest.approx(
        stats.binom.sf(699, 1000, 1 / (1 + math.exp(-1.0))), rel=1e-9
    )


@pytest.mark.parametrize("delta, m", [(0.0, None), (1e-5, 1000), (1e-3, 1000), (1e-2, 100)])
def test_p_value_grows_with_epsilon(delta: float, m: int | None) -> None:
    # the bisection relies on it; with delta > 0 the delta term alone can shrink as eps grows
    grid = [0.1 * i for i in range(101)]
    for r, v in ((10, 10), (10, 8), (100, 90), (100, 99), (50, 30)):
        ps = [one_run_p_value(v, r, epsilon=e, delta=delta, canaries=m) for e in grid]
        assert all(b >= a - 1e-12 for a, b in itertools.pairwise(ps)), (r, v)
        assert ps[-1] > 0.3  # at eps = 10 every such count is likely


def test_the_bound_is_where_the_p_value_crosses_the_level() -> None:
    for delta, m in ((0.0, None), (1e-5, 5000)):
        eps = epsilon_lower_bound(850, 1000, delta=delta, canaries=m)
        assert one_run_p_value(850, 1000, epsilon=eps, delta=delta, canaries=m) < 0.05
        assert one_run_p_value(850, 1000, epsilon=eps + 1e-6, delta=delta, canaries=m) >= 0.05


# ---------------------------------------------------------------- guesses and audits


def test_guess_membership_by_hand() -> None:
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7])
    g = guess_membership(scores, k_plus=2, k_minus=1)
    assert g.tolist() == [-1, 1, 0, 0, 1]
    assert guess_membership(scores, k_plus=0, k_minus=5).tolist() == [-1] * 5
    # ties: broken by position, the same every time
    tied = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert guess_membership(tied, k_plus=2, k_minus=1).tolist() == [1, 1, 0, -1]


def test_audit_from_scores_by_hand() -> None:
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7, 0.2])
    included = torch.tensor([False, True, True, True, False, False])
    a = audit_from_scores(scores, included, k_plus=2, k_minus=2)
    # in: 0.9 (yes), 0.7 (no); out: 0.1 (yes), 0.2 (yes)
    assert isinstance(a, OneRunAudit)
    assert (a.canaries, a.included, a.guesses, a.correct) == (6, 3, 4, 3)
    assert a.accuracy == 0.75
    assert a.epsilon_lower_bound == 0.0  # four guesses prove nothing at 95 %


def test_draw_inclusions_is_seeded_and_fair() -> None:
    a = draw_inclusions(10_000, generator=torch.Generator().manual_seed(3))
    b = draw_inclusions(10_000, generator=torch.Generator().manual_seed(3))
    c = draw_inclusions(10_000, generator=torch.Generator().manual_seed(4))
    assert a.dtype == torch.bool and a.shape == (10_000,)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0.47 < a.double().mean().item() < 0.53


def test_randomized_response_bound_rarely_exceeds_the_true_epsilon() -> None:
    # 200 audits of an exactly eps-DP mechanism, m = 1000 canaries, 800 guesses each.
    # At 95 % confidence at most 5 % of the bounds may exceed eps (exactly 4.87 % and
    # 4.98 % here, see the next test); measured: 8 of 200 (4 %) at eps = 1, 14 of 200
    # (7 %, sampling noise: sd 3 around 10) at eps = 2; mean bound 0.86 and 0.91 of eps.
    g = torch.Generator().manual_seed(0)
    for eps in (1.0, 2.0):
        bounds = []
        for _ in range(200):
            included = draw_inclusions(1000, generator=g)
            scores = _randomized_response_scores(included, eps, g)
            bounds.append(
                audit_from_scores(scores, included, k_plus=400, k_minus=400).epsilon_lower_bound
            )
        violations = sum(b > eps for b in bounds)
        assert violations / len(bounds) < 0.10, (eps, violations)
        assert sum(bounds) / len(bounds) > 0.6 * eps


def test_exact_violation_rate_for_randomized_response() -> None:
    # With 800 guesses of randomized response the count of correct ones is exactly
    # Binomial(800, q): the chance that the bound exceeds eps is computed, not sampled.
    for eps in (0.5, 1.0, 2.0, 4.0):
        q = 1.0 / (1.0 + math.exp(-eps))
        first = next(v for v in range(801) if epsilon_lower_bound(v, 800) > eps)
        rate = stats.binom.sf(first - 1, 800, q)
        assert 0.03 < rate <= 0.05, (eps, rate)  # valid, and not needlessly loose


def test_randomized_response_at_eps_2_with_many_canaries_is_tight() -> None:
    # m = 20000 canaries, 16000 guesses: measured bound 1.976 (0.99 of eps = 2) at
    # delta = 0, and 1.975 at delta = 1e-5
    g = torch.Generator().manual_seed(1)
    included = draw_inclusions(20_000, generator=g)
    scores = _randomized_response_scores(included, 2.0, g)
    pure = audit_from_scores(scores, included, k_plus=8000, k_minus=8000)
    approx = audit_from_scores(scores, included, k_plus=8000, k_minus=8000, delta=1e-5)
    assert 0.9 * 2.0 < pure.epsilon_lower_bound <= 2.0
    assert 0.9 * 2.0 < approx.epsilon_lower_bound <= pure.epsilon_lower_bound


def test_delta_term_keeps_the_bound_valid_for_approximate_dp() -> None:
    # Randomized response at eps = 0.5 that, with probability delta = 0.005 per canary,
    # reveals the canary's inclusion outright: (0.5, 0.005)-DP, not (0.5, 0)-DP. Guessing
    # the 4 highest and 4 lowest scores picks the revealed canaries. Measured over 100
    # audits of 2000 canaries: the pure-DP bound exceeds 0.5 in 82 of them, the bound
    # stated for delta = 0.005 in none (2 m delta = 20 swamps the count: it is 0).
    eps, delta, m = 0.5, 0.005, 2000
    g = torch.Generator().manual_seed(5)
    pure_over = approx_over = 0
    for _ in range(100):
        included = draw_inclusions(m, generator=g)
        scores = _randomized_response_scores(included, eps, g)
        reveal = torch.rand(m, generator=g) < delta
        scores = torch.where(reveal, torch.where(included, 10.0, -10.0).double(), scores)
        pure = audit_from_scores(scores, included, k_plus=4, k_minus=4)
        approx = audit_from_scores(scores, included, k_plus=4, k_minus=4, delta=delta)
        pure_over += pure.epsilon_lower_bound > eps
        approx_over += approx.epsilon_lower_bound > eps
    assert pure_over > 30  # the pure-DP test does not hold for this mechanism ...
    assert approx_over <= 10  # ... the approximate-DP one does


def test_no_leakage_gives_no_bound() -> None:
    # scores independent of the inclusions (a perfectly private model): no evidence
    g = torch.Generator().manual_seed(2)
    included = draw_inclusions(2000, generator=g)
    scores = torch.rand(2000, generator=g)
    a = audit_from_scores(scores, included, k_plus=500, k_minus=500)
    assert a.epsilon_lower_bound < 0.2


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs",
    [
        {"confidence": 0.0},
        {"confidence": 1.0},
        {"confidence": 1.5},
        {"delta": -0.1, "canaries": 100},
        {"delta": 1.0, "canaries": 100},
        {"delta": float("nan"), "canaries": 100},
        {"delta": 1e-5},  # delta > 0 needs the number of canaries
        {"canaries": 5},  # fewer canaries than guesses
    ],
)
def test_epsilon_lower_bound_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(PrivacyAttackError):
        epsilon_lower_bound(8, 10, **kwargs)


@pytest.mark.parametrize("correct, guesses", [(11, 10), (-1, 10), (3, -2), (2.5, 10)])
def test_epsilon_lower_bound_rejects_bad_counts(correct, guesses) -> None:
    with pytest.raises(PrivacyAttackError):
        epsilon_lower_bound(correct, guesses)


@pytest.mark.parametrize("k_plus, k_minus", [(-1, 2), (0, 0), (3, 3), (2.0, 1), (True, 1)])
def test_guess_membership_rejects_bad_k(k_plus, k_minus) -> None:
    with pytest.raises(PrivacyAttackError):
        guess_membership(torch.rand(5), k_plus=k_plus, k_minus=k_minus)


def test_bad_scores_and_inclusions_are_refused() -> None:
    with pytest.raises(PrivacyAttackError, match="1-D"):
        guess_membership(torch.rand(2, 3), k_plus=1, k_minus=1)
    with pytest.raises(PrivacyAttackError, match="finite"):
        guess_membership(torch.tensor([0.1, float("nan"), 0.3]), k_plus=1, k_minus=1)
    with pytest.raises(PrivacyAttackError, match="bool"):
        audit_from_scores(torch.rand(4), torch.tensor([1, 0, 1, 0]), k_plus=1, k_minus=1)
    with pytest.raises(PrivacyAttackError, match="one flag per score"):
        audit_from_scores(torch.rand(4), torch.ones(3, dtype=torch.bool), k_plus=1, k_minus=1)
    with pytest.raises(PrivacyAttackError):
        draw_inclusions(0, generator=torch.Generator())
    with pytest.raises(PrivacyAttackError):
        one_run_p_value(5, 10, epsilon=-1.0)
    assert issubclass(PrivacyAttackError, DlsecError)  # the CLI's one-line error, exit 2
