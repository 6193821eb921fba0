"""Membership-inference metrics: ROC curve, AUC, TPR at a fixed low FPR, advantage.

Scores follow one convention throughout dlsec: **higher means "more likely a member"**.
Carlini et al., "Membership Inference Attacks From First Principles" (S&P 2022) argue
that an attack should be judged by its true-positive rate at a low false-positive rate
(0.1 %, 1 %), not only by AUC or balanced accuracy; :func:`membership_metrics` reports
all of them. The membership advantage is Yeom et al.'s ``max_t TPR(t) - FPR(t)``
(CSF 2018), i.e. twice the best balanced accuracy minus one.

Everything is computed in torch on the scores' device; ties between scores are handled
as in ``sklearn.metrics.roc_curve`` (tied scores form one ROC point).

Example:
    >>> import torch
    >>> m = membership_metrics(torch.tensor([0.9, 0.8, 0.3, 0.1]),
    ...                        torch.tensor([True, False, True, False]))
    >>> m.auc
    0.75
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from dlsec.errors import DlsecError


class MetricsError(DlsecError):
    """Scores and labels that no metric can be computed from."""


def _check(scores: Tensor, is_member: Tensor) -> tuple[Tensor, Tensor]:
    scores = torch.as_tensor(scores).flatten().double()
    labels = torch.as_tensor(is_member).flatten().to(scores.device).bool()
    if scores.numel() != labels.numel():
        raise MetricsError(f"{scores.numel()} scores for {labels.numel()} membership labels")
    if not bool(torch.isfinite(scores).all()):
        raise MetricsError("membership scores contain NaN or inf")
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.numel():
        raise MetricsError("membership metrics need both members and non-members")
    return scores, labels


def roc_points(scores: Tensor, is_member: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The ROC curve ``(fpr, tpr, thresholds)``, starting at (0, 0), one point per distinct score.

    A sample is called a member when its score is ``>= threshold``. The first threshold
    is ``+inf`` (nobody called a member).
    """
    scores, labels = _check(scores, is_member)
    order = torch.argsort(scores, descending=True, stable=True)
    s, lab = scores[order], labels[order].double()
    tps, fps = torch.cumsum(lab, 0), torch.cumsum(1.0 - lab, 0)
    # keep the last index of each run of tied scores
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tps, fps, thr = tps[last], fps[last], s[last]
    zero = torch.zeros(1, dtype=torch.float64, device=s.device)
    tpr = torch.cat([zero, tps / tps[-1]])
    fpr = torch.cat([zero, fps / fps[-1]])
    thr = torch.cat([torch.full((1,), float("inf"), dtype=torch.float64, device=s.device), thr])
    return fpr, tpr, thr


def roc_auc(scores: Tensor, is_member: Tensor) -> float:
    """Area under the ROC curve (trapezoidal; 0.5 is chance, ties count half)."""
    fpr, tpr, _ = roc_points(scores, is_member)
    return float(torch.trapezoid(tpr, fpr))


def tpr_at_fpr(scores: Tensor, is_member: Tensor, fpr: float) -> float:
    """The highest TPR of any threshold whose false-positive rate is at most ``fpr``.

    With ``n`` non-members, a threshold at FPR ``<= fpr`` may admit ``floor(fpr * n)``
    false positives; at 0.1 % and fewer than 1,000 non-members that is none at all.
    """
    if not 0.0 <= fpr <= 1.0:
        raise MetricsError(f"fpr must be in [0, 1], got {fpr}")
    f, t, _ = roc_points(scores, is_member)
    ok = f <= fpr + 1e-12
    return float(t[ok].max())


def membership_advantage(scores: Tensor, is_member: Tensor) -> float:
    """Yeom et al.'s membership advantage: ``max over thresholds of TPR - FPR``."""
    f, t, _ = roc_points(scores, is_member)
    return float((t - f).max())


@dataclass
class MembershipMetrics:
    """The standard numbers of one membership attack on a balanced evaluation set."""

    auc: float
    tpr_at_0_1_fpr: float
    tpr_at_1_fpr: float
    advantage: float
    n_members: int
    n_nonmembers: int

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def membership_metrics(scores: Tensor, is_member: Tensor) -> MembershipMetrics:
    """AUC, TPR at 0.1 % and 1 % FPR, and membership advantage of ``scores``."""
    s, lab = _check(scores, is_member)
    return MembershipMetrics(auc=roc_auc(s, lab), tpr_at_0_1_fpr=tpr_at_fpr(s, lab, 0.001),
                             tpr_at_1_fpr=tpr_at_fpr(s, lab, 0.01),
                             advantage=membership_advantage(s, lab), n_members=int(lab.sum()),
                             n_nonmembers=int((~lab).sum()))
