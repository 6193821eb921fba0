"""kNN label consistency: a sample whose nearest neighbours mostly carry another label.

Score: the share of the ``k`` nearest neighbours (Euclidean, in input space or any feature
space) whose label differs from the sample's; flagged above ``threshold`` (default 0.5:
the majority disagrees). Reference: the kNN label sanitization of Paudice, Muñoz-González
and Lupu, "Label Sanitization against Label Flipping Poisoning Attacks" (ECML 2018
workshops), whose defaults are ``k = 10`` and a majority threshold.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dlsec.defenses.sanitization._base import SanitizationError, SanitizationResult


def knn_consistency(x: Tensor, y: Tensor, *, k: int = 10, threshold: float = 0.5,
                    batch_size: int = 1024) -> SanitizationResult:
    """Flag samples whose ``k`` nearest neighbours (excluding themselves) disagree.

    Args:
        x: inputs or features ``N x ...`` (flattened); stays on its device.
        y: labels ``N``.
        k: neighbours per sample.
        threshold: flag when the share of disagreeing neighbours is above it.
        batch_size: query rows per distance block.
    """
    n = y.numel()
    if not 1 <= k < n:
        raise SanitizationError(f"k must be in 1..{n - 1}, got {k}")
    flat = x.flatten(1).float()
    y = y.to(flat.device)
    scores = torch.empty(n, device=flat.device)
    for start in range(0, n, batch_size):
        rows = torch.arange(start, min(n, start + batch_size), device=flat.device)
        dist = torch.cdist(flat[rows], flat)
        dist[torch.arange(rows.numel(), device=flat.device), rows] = float("inf")
        nn_idx = torch.topk(dist, k, largest=False).indices
        scores[rows] = (y[nn_idx] != y[rows, None]).float().mean(1)
    return SanitizationResult(
        scores=scores.cpu(), mask=(scores > threshold).cpu(), method="knn",
        metadata={"k": k, "threshold": threshold},
    )
