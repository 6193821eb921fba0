"""Loss-based outliers: samples whose given label gets a high out-of-sample loss.

Score: the cross-entropy ``-log p(given label)`` under cross-validated probabilities (or
any model's probabilities). Flagged when the loss exceeds ``threshold``; the default is
``log K``, i.e. the model gives the label less probability than chance (``1/K``). With
``fraction`` set instead, the ``fraction`` of highest-loss samples is flagged. A common
baseline (e.g. the loss-based filters in Koh, Steinhardt and Liang, "Stronger Data
Poisoning Attacks Break Data Sanitization Defenses", 2018).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dlsec.defenses.sanitization._base import SanitizationError, SanitizationResult


def loss_outliers(y: Tensor, pred_probs: Tensor, *, threshold: float | None = None,
                  fraction: float | None = None) -> SanitizationResult:
    """Flag high-loss samples (see module). Give at most one of ``threshold``/``fraction``."""
    if threshold is not None and fraction is not None:
        raise SanitizationError("give a loss threshold or a fraction, not both")
    k = pred_probs.shape[1]
    p = pred_probs.detach().cpu().double()
    loss = -p.gather(1, y.cpu()[:, None]).squeeze(1).clamp_min(1e-12).log()
    if fraction is not None:
        if not 0.0 <= fraction <= 1.0:
            raise SanitizationError(f"fraction must be in [0, 1], got {fraction}")
        n_flag = round(fraction * loss.numel())
        mask = torch.zeros(loss.numel(), dtype=torch.bool)
        mask[torch.sort(loss, descending=True, stable=True).indices[:n_flag]] = True
        used = None
    else:
        used = math.log(k) if threshold is None else float(threshold)
        mask = loss > used
    return SanitizationResult(
        scores=loss.float(), mask=mask, method="loss",
        metadata={"threshold": used, "fraction": fraction},
    )
