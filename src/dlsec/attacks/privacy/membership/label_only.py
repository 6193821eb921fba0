"""Label-only membership inference by robustness to augmentation (Choquette-Choo et al.).

Choquette-Choo, Tramèr, Carlini, Papernot, "Label-Only Membership Inference Attacks"
(ICML 2021): when the model returns labels only, a member is still recognisable by how
*robustly* it is classified correctly: training points stay correct under small
translations and noise more often than unseen points. The score of a record is the
fraction of its views (the record itself, every translation by at most ``radius``
pixels in L1, and ``noise_samples`` copies with Gaussian noise of ``noise_std``, clipped
to the bounds) that the oracle labels correctly.

Threat model: black-box, labels only; the attacker knows each tested record's label.
Queries: ``len(shift_grid(radius)) + noise_samples`` per record.
Defaults: ``radius=1`` (5 views), ``noise_samples=20``, ``noise_std=0.1`` of the bounds'
range.

Example:
    >>> oracle = LocalOracle(model, card=card, output="label")                # doctest: +SKIP
    >>> res = label_only_attack(oracle, x, y, is_member=m, generator=g)          # doctest: +SKIP
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from dlsec.attacks.privacy._common import PrivacyAttackError, shift_grid, shift_images
from dlsec.attacks.privacy.membership._base import MembershipResult, finish
from dlsec.threat import Oracle


def label_only_attack(oracle: Oracle, x: Tensor, y: Tensor, *, radius: int = 1,
                      noise_samples: int = 20, noise_std: float = 0.1,
                      is_member: Tensor | None = None, generator: torch.Generator | None = None,
                      batch_size: int = 4096) -> MembershipResult:
    """Score each record by the fraction of its augmented views labeled correctly."""
    if radius < 0 or noise_samples < 0 or noise_std < 0:
        raise PrivacyAttackError("radius, noise_samples and noise_std must be >= 0")
    t0 = time.perf_counter()
    g = generator or torch.Generator().manual_seed(0)
    lo, hi = oracle.bounds
    shifts = shift_grid(radius) if x.dim() == 4 else [(0, 0)]
    y = y.to(x.device)
    views = [shift_images(x, dx, dy, fill=lo) for dx, dy in shifts]
    for _ in range(noise_samples):
        noise = torch.randn(x.shape, generator=g).to(x.device) * (noise_std * (hi - lo))
        views.append((x + noise).clamp(lo, hi))
    before = oracle.queries_total
    correct = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for view in views:
        for i in range(0, x.shape[0], batch_size):
            labels = oracle.query_labels(view[i : i + batch_size]).to(x.device)
            correct[i : i + batch_size] += (labels == y[i : i + batch_size]).double()
    scores = correct / len(views)
    return finish("label-only", scores, is_member, queries=oracle.queries_total - before,
                  t0=t0, views=len(views))
