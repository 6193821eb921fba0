"""Spectral signatures: backdoor poisons leave a trace along the top singular vector of a
class's (centred) learned representations.

Per class ``c``: centre the penultimate-layer features of the samples labelled ``c``, take
the top right singular vector ``v``, score each sample by ``((r - mean) . v)^2`` and remove
the ``multiplier * expected_rate * n_c`` highest scores. Reference: Tran, Li and Madry,
"Spectral Signatures in Backdoor Attacks" (NeurIPS 2018); defaults follow the paper:
``multiplier = 1.5``; ``expected_rate`` is the assumed upper bound on the share of
poisons *within a class* (a backdoor puts all its poisons in the target class, so a 5%
overall rate is about 1/3 of a 10-class target class: the default is 0.33). Scores are
divided by the class's median score so they compare across classes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dlsec.defenses.sanitization._base import SanitizationError, SanitizationResult


def spectral_signatures(features: Tensor, y: Tensor, *, expected_rate: float = 0.33,
                        multiplier: float = 1.5) -> SanitizationResult:
    """Flag the top spectral scores of each class (see module). Deterministic.

    Args:
        features: ``N x F`` representations (e.g. :func:`penultimate_features` of a model
            trained on the suspect data).
        y: labels ``N``.
        expected_rate: assumed upper bound on the poisoned share of a class.
        multiplier: remove ``multiplier * expected_rate`` of each class.
    """
    if not 0.0 < expected_rate * multiplier <= 1.0:
        raise SanitizationError("expected_rate * multiplier must be in (0, 1]")
    feats = features.detach().double()
    y = y.to(feats.device)
    scores = torch.zeros(y.numel(), dtype=torch.float64, device=feats.device)
    mask = torch.zeros(y.numel(), dtype=torch.bool, device=feats.device)
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        if idx.numel() < 2:
            continue
        centred = feats[idx] - feats[idx].mean(0, keepdim=True)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        s = (centred @ vh[0]).pow(2)
        scores[idx] = s / s.median().clamp_min(1e-12)
        n_remove = min(idx.numel(), round(multiplier * expected_rate * idx.numel()))
        mask[idx[torch.sort(s.cpu(), descending=True, stable=True).indices[:n_remove]]] = True
    return SanitizationResult(
        scores=scores.float().cpu(), mask=mask.cpu(), method="spectral",
        metadata={"expected_rate": expected_rate, "multiplier": multiplier},
    )
