"""dlsec.intervals: Wilson records, the seeded vectorised bootstrap, the membership
statistics (checked against dlsec's own ROC code on tied scores) and the FPR rule."""

from __future__ import annotations

import time

import pytest
import torch

from dlsec.attacks.privacy.metrics import roc_auc, tpr_at_fpr
from dlsec.intervals import (
    auc_statistic,
    bootstrap_interval,
    fpr_resolved,
    interval_record,
    membership_intervals,
    rate_record,
    tpr_at_fpr_statistic,
    wilson_interval,
)


def test_rate_record_is_the_wilson_interval_with_its_points() -> None:
    r = rate_record(0.5, 10)
    assert (r["n"], r["method"]) == (10, "wilson")
    assert r["lower"] == pytest.approx(0.236593, abs=1e-6)  # 5/10 by hand
    assert r["upper"] == pytest.approx(0.763407, abs=1e-6)
    assert rate_record(0.0, 10)["lower"] == 0.0 and rate_record(1.0, 10)["upper"] == 1.0
    with pytest.raises(ValueError):
        interval_record(0.6, 0.4, 10, "wilson")


def _tied_scores(seed: int, p: int, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 12, (p,), generator=g).double() + 2,  # members score higher
            torch.randint(0, 12, (q,), generator=g).double())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_statistics_equal_dlsec_roc_code_on_tied_scores(seed: int) -> None:
    m, o = _tied_scores(seed, 37, 150)
    scores = torch.cat([m, o])
    is_member = torch.cat([torch.ones(37, dtype=torch.bool), torch.zeros(150, dtype=torch.bool)])
    assert float(auc_statistic(m[None], o[None])[0]) == pytest.approx(
        roc_auc(scores, is_member), abs=1e-12)
    for fpr in (0.0, 0.001, 0.01, 0.05, 0.2, 1.0):
        got = float(tpr_at_fpr_statistic(fpr)(m[None], o[None])[0])
        assert got == pytest.approx(tpr_at_fpr(scores, is_member, fpr), abs=1e-12), fpr


def test_auc_by_hand() -> None:
    # pairs: (2>1) (2>0) (1=1: a half) (1>0) -> 3.5 / 4
    assert auc_statistic(torch.tensor([[2.0, 1.0]]), torch.tensor([[1.0, 0.0]])).tolist() == [0.875]


def test_bootstrap_is_seeded_and_matches_wilson_on_a_proportion() -> None:
    g = torch.Generator().manual_seed(5)
    hits = (torch.rand(1000, generator=g) < 0.3).double()
    mean = lambda x: x.mean(1)  # noqa: E731
    a = bootstrap_interval(mean, hits, n=1000, generator=torch.Generator().manual_seed(1))
    b = bootstrap_interval(mean, hits, n=1000, generator=torch.Generator().manual_seed(1))
    c = bootstrap_interval(mean, hits, n=1000, generator=torch.Generator().manual_seed(2))
    assert a == b and a != c
    lo, hi = wilson_interval(int(hits.sum()), 1000)
    assert abs(a[0] - lo) < 0.01 and abs(a[1] - hi) < 0.01  # both ~ +-0.028 around 0.3
    # four times the points: half the width (within 20%)
    more = (torch.rand(4000, generator=g) < 0.3).double()
    wide = a[1] - a[0]
    narrow = bootstrap_interval(mean, more, n=1000, generator=torch.Generator().manual_seed(1))
    assert 1.6 < wide / (narrow[1] - narrow[0]) < 2.4


def test_auc_interval_contains_half_without_leakage_and_not_with_it() -> None:
    g = torch.Generator().manual_seed(0)
    same_m, same_o = torch.randn(200, generator=g), torch.randn(200, generator=g)
    lo, hi = bootstrap_interval(auc_statistic, same_m, same_o, generator=g)
    assert lo < 0.5 < hi and hi - lo < 0.15
    lo, hi = bootstrap_interval(auc_statistic, same_m + 3.0, same_o, generator=g)
    assert lo > 0.95


def test_bootstrap_of_thousands_of_scores_is_fast() -> None:
    g = torch.Generator().manual_seed(0)
    m, o = torch.randn(2000, generator=g) + 0.2, torch.randn(2000, generator=g)
    t0 = time.perf_counter()
    bootstrap_interval(auc_statistic, m, o, n=1000, generator=g)
    bootstrap_interval(tpr_at_fpr_statistic(0.01), m, o, n=1000, generator=g)
    assert time.perf_counter() - t0 < 5.0  # measured 0.72 s for both on 2 loaded cores


def test_bootstrap_refuses_bad_input() -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError):
        bootstrap_interval(lambda x: x.mean(1), torch.tensor([]), generator=g)
    with pytest.raises(ValueError):
        bootstrap_interval(lambda x: x.mean(), torch.ones(3), generator=g)  # not per resample


def test_fpr_resolution_rule() -> None:
    assert fpr_resolved(1000, 0.01) and not fpr_resolved(999, 0.01)
    assert not fpr_resolved(200, 0.01) and not fpr_resolved(9999, 0.001)


def test_membership_intervals_split_by_membership_and_draw_in_a_fixed_order() -> None:
    """One attack's records: the AUC's, then each TPR's in the order given, every one the
    plain bootstrap of the members and non-members taken apart, drawn from one generator."""
    g = torch.Generator().manual_seed(3)
    m, o = torch.randn(150, generator=g) + 1.0, torch.randn(1200, generator=g)
    order = torch.randperm(1350, generator=g)  # members and non-members interleaved
    scores = torch.cat([m, o])[order]
    is_member = (torch.arange(1350) < 150)[order]
    fprs = {"tpr_at_0_1_fpr": 0.001, "tpr_at_1_fpr": 0.01}
    got = membership_intervals(scores, is_member, fprs,
                               generator=torch.Generator().manual_seed(7), n=500)
    assert list(got) == ["auc", "tpr_at_0_1_fpr", "tpr_at_1_fpr"]
    ref = torch.Generator().manual_seed(7)
    members, others = scores[is_member].double(), scores[~is_member].double()
    expected = [bootstrap_interval(stat, members, others, n=500, generator=ref)
                for stat in (auc_statistic, tpr_at_fpr_statistic(0.001),
                             tpr_at_fpr_statistic(0.01))]
    assert [(r["lower"], r["upper"]) for r in got.values()] == expected
    assert all(r["n"] == 1350 and r["method"] == "bootstrap" for r in got.values())
    assert 0.7 < got["auc"]["lower"] < got["auc"]["upper"] < 0.85  # the AUC of a 1-sd shift: 0.76
    # 1200 non-members: 12 expected false positives at 1% (resolved), 1.2 at 0.1% (not)
    assert got["tpr_at_0_1_fpr"]["unresolved"] is True and "unresolved" not in got["tpr_at_1_fpr"]
    # the TPRs' draws follow the AUC's: reordering the FPRs changes which draws each gets
    swapped = membership_intervals(scores, is_member, dict(reversed(fprs.items())),
                                   generator=torch.Generator().manual_seed(7), n=500)
    assert swapped["auc"] == got["auc"] and swapped["tpr_at_1_fpr"] != got["tpr_at_1_fpr"]
    none = torch.zeros(10, dtype=torch.bool)
    assert membership_intervals(torch.randn(10), none, fprs, generator=g) == {}
    assert membership_intervals(torch.randn(10), ~none, fprs, generator=g) == {}
