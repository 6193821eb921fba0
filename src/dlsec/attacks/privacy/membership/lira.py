"""LiRA, the likelihood-ratio attack (Carlini et al., S&P 2022), online and offline.

Carlini, Chien, Nasr, Song, Terzis, Tramèr, "Membership Inference Attacks From First
Principles". For each tested record the attacker fits Gaussians to the logit-scaled
confidence ``phi = log(p_y / (1 - p_y))`` that *shadow models* give it when it was in
their training set (IN) and when it was not (OUT); the shadows are trained like the
target on random halves of a pool that contains the tested records, so every record has
as many IN as OUT shadows. The target's ``phi`` is then scored by

* online: the likelihood ratio ``log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out)``;
* offline (OUT shadows only, so they can be trained once, before the targets are known):
  the one-sided test ``log Pr[Z < phi]``, ``Z ~ N(mu_out, s_out)``.

Details follow the paper's code: means are medians over shadows; with fewer than 64
shadows the variance is one global value (here: the within-record variance pooled over
all records) instead of per record; with query augmentations (image shifts), each view
is fitted separately and the per-view scores are averaged.

Threat model: black-box with class scores; the attacker has a pool from the target's
distribution that contains the tested records, and knows the architecture and training
recipe. Queries: one per tested record and view.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch import Tensor

from dlsec.attacks.privacy._common import PrivacyAttackError, check_shifts, shift_images
from dlsec.attacks.privacy.membership._base import (
    MembershipResult,
    ShadowModels,
    finish,
    logit_confidence,
    query_probabilities,
)
from dlsec.threat import Oracle

_STD_FLOOR = 1e-30
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _masked_median(v: Tensor, mask: Tensor) -> Tensor:
    """Median over dim 0 of the entries where ``mask`` (as ``numpy.median``: mid-average)."""
    return torch.nanquantile(v.masked_fill(~mask, float("nan")), 0.5, dim=0)


def _masked_var(v: Tensor, mask: Tensor) -> Tensor:
    """Population variance over dim 0 of the masked entries (``ddof=0``)."""
    w = mask.to(v.dtype)
    count = w.sum(0)
    mean = (v * w).sum(0) / count
    return (((v - mean) ** 2) * w).sum(0) / count


def _gaussian_logpdf(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - _LOG_SQRT_2PI


def lira_scores(target_phi: Tensor, shadow_phi: Tensor, keep: Tensor, *, online: bool = True,
                fix_variance: bool = True) -> Tensor:
    """LiRA scores (higher = member) from logit-scaled confidences.

    Args:
        target_phi: ``[N]`` or ``[N, views]``, the target model's ``phi`` per record.
        shadow_phi: ``[M, N]`` or ``[M, N, views]``, each shadow's ``phi`` per record.
        keep: ``[M, N]`` bool, whether shadow ``m`` trained on record ``n``.
        online: likelihood ratio of IN vs OUT; else the one-sided OUT-only test.
        fix_variance: one pooled variance for all records (per view) instead of per record.

    Raises:
        PrivacyAttackError: when a record has no OUT shadow (or, online, no IN shadow).
    """
    t = target_phi.double()
    s = shadow_phi.double().to(t.device)
    if t.dim() == 1:
        t, s = t.unsqueeze(1), s.unsqueeze(2)
    keep = keep.bool().to(t.device)
    if s.shape[1:] != t.shape or keep.shape != s.shape[:2]:
        raise PrivacyAttackError(f"shape mismatch: target {tuple(t.shape)}, shadows "
                                 f"{tuple(s.shape)}, keep {tuple(keep.shape)}")
    mask_in = keep.unsqueeze(2).expand_as(s)
    mask_out = ~mask_in
    if not bool(mask_out.any(0).all()):
        raise PrivacyAttackError("LiRA needs at least one OUT shadow model for every record")

    def fitted(mask: Tensor) -> tuple[Tensor, Tensor]:
        mean = _masked_median(s, mask)
        var = _masked_var(s, mask)
        if fix_variance:
            var = var.mean(0, keepdim=True).expand_as(var)
        return mean, var.sqrt() + _STD_FLOOR

    mean_out, std_out = fitted(mask_out)
    if online:
        if not bool(mask_in.any(0).all()):
            raise PrivacyAttackError("online LiRA needs at least one IN shadow model for every "
                                     "record (are the tested records in the shadow pool?)")
        mean_in, std_in = fitted(mask_in)
        score = _gaussian_logpdf(t, mean_in, std_in) - _gaussian_logpdf(t, mean_out, std_out)
    else:
        score = torch.special.log_ndtr((t - mean_out) / std_out)
    return score.mean(1)


def lira(oracle: Oracle, shadows: ShadowModels, *, indices: Tensor | None = None,
         is_member: Tensor | None = None, online: bool = True, fix_variance: bool | None = None,
         shifts: Sequence[tuple[int, int]] = ((0, 0),)) -> MembershipResult:
    """Run LiRA on the pool records ``shadows.x[indices]`` (default: the whole pool).

    ``fix_variance=None`` picks the paper's rule: a global variance below 64 shadows.
    ``shifts`` are the query augmentations (``(dx, dy)`` pixel translations); each one
    costs one query per record.
    """
    t0 = time.perf_counter()
    idx = torch.arange(len(shadows.y)) if indices is None else torch.as_tensor(indices).long()
    x, y = shadows.x[idx.to(shadows.x.device)], shadows.y[idx.to(shadows.y.device)]
    shifts = check_shifts(shifts, x)
    fill = float(oracle.bounds[0])
    before = oracle.queries_total
    phi_t = torch.stack([
        logit_confidence(query_probabilities(oracle, shift_images(x, dx, dy, fill=fill),
                                             attack="LiRA"), y)
        for dx, dy in shifts
    ], 1)
    queries = oracle.queries_total - before
    probs_s = shadows.probabilities(x, shifts=shifts, fill=fill)  # [M, N, V, K]
    m, n, v, k = probs_s.shape
    phi_s = logit_confidence(probs_s.reshape(-1, k), y.repeat_interleave(v).repeat(m)).view(m, n, v)
    fv = shadows.n_models < 64 if fix_variance is None else fix_variance
    scores = lira_scores(phi_t.to(phi_s.device), phi_s, shadows.keep[:, idx], online=online,
                         fix_variance=fv)
    return finish("lira-online" if online else "lira-offline", scores, is_member,
                  queries=queries, t0=t0, n_shadows=shadows.n_models, fix_variance=fv,
                  views=len(shifts))
