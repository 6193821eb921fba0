"""Membership metrics on hand-checked cases and against scikit-learn."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from dlsec.attacks.privacy.metrics import (
    MetricsError,
    membership_advantage,
    membership_metrics,
    roc_auc,
    roc_points,
    tpr_at_fpr,
)

S = torch.tensor([0.9, 0.8, 0.3, 0.1])
M = torch.tensor([True, False, True, False])


def test_roc_points_by_hand() -> None:
    fpr, tpr, thr = roc_points(S, M)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert math.isinf(thr[0]) and thr[1:].tolist() == pytest.approx([0.9, 0.8, 0.3, 0.1])


def test_auc_tpr_advantage_by_hand() -> None:
    assert roc_auc(S, M) == 0.75  # 0.5*0.5 + 0.5*1.0
    assert tpr_at_fpr(S, M, 0.0) == 0.5
    assert tpr_at_fpr(S, M, 0.49) == 0.5
    assert tpr_at_fpr(S, M, 0.5) == 1.0
    assert membership_advantage(S, M) == 0.5
    m = membership_metrics(S, M)
    assert (m.auc, m.tpr_at_0_1_fpr, m.tpr_at_1_fpr, m.advantage) == (0.75, 0.5, 0.5, 0.5)
    assert (m.n_members, m.n_nonmembers) == (2, 2)


def test_ties_count_half() -> None:
    s = torch.tensor([1.0, 1.0, 0.0, 0.0])
    lab = torch.tensor([True, False, True, False])
    assert roc_auc(s, lab) == 0.5
    assert tpr_at_fpr(s, lab, 0.001) == 0.0  # the tied pair cannot be split
    assert membership_advantage(s, lab) == 0.0


def test_tpr_at_low_fpr_counts_false_positives() -> None:
    # 1000 non-members: 0.1 % FPR admits exactly one false positive
    neg = torch.arange(1000, dtype=torch.float64)
    pos = torch.tensor([2000.0, 1500.0, 998.5, 500.0])
    s = torch.cat([pos, neg])
    lab = torch.cat([torch.ones(4, dtype=torch.bool), torch.zeros(1000, dtype=torch.bool)])
    assert tpr_at_fpr(s, lab, 0.0) == 0.5
    assert tpr_at_fpr(s, lab, 0.001) == 0.75  # 998.5 passes with only 999 as a false positive
    assert tpr_at_fpr(s, lab, 0.01) == 0.75


def test_auc_matches_sklearn() -> None:
    g = torch.Generator().manual_seed(3)
    s = torch.randn(500, generator=g).round(decimals=1)  # many ties
    lab = torch.rand(500, generator=g) < 0.4
    assert roc_auc(s, lab) == pytest.approx(roc_auc_score(lab.numpy(), s.numpy()), abs=1e-12)


def test_bad_inputs() -> None:
    with pytest.raises(MetricsError):
        roc_auc(torch.ones(3), torch.ones(3, dtype=torch.bool))
    with pytest.raises(MetricsError):
        roc_auc(torch.ones(3), torch.ones(2, dtype=torch.bool))
    with pytest.raises(MetricsError):
        roc_auc(torch.tensor([float("nan"), 1.0]), torch.tensor([True, False]))
