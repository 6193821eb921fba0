"""What every sanitizer shares: the result type and detection scoring against a mask."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dlsec.errors import DlsecError


class SanitizationError(DlsecError):
    """Bad sanitizer settings."""


@dataclass
class SanitizationResult:
    """A sanitizer's verdict on a training set.

    Attributes:
        scores: float ``N``, higher = more suspicious (comparable within one method).
        mask: bool ``N``, True for the samples the sanitizer would remove.
        method: the sanitizer's name.
        metadata: its settings and diagnostics (e.g. which classes were flagged).
    """

    scores: Tensor
    mask: Tensor
    method: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_flagged(self) -> int:
        return int(self.mask.sum())

    def keep(self) -> Tensor:
        """Indices of the samples to keep."""
        return torch.nonzero(~self.mask).flatten()


@dataclass(frozen=True)
class Detection:
    """Flagged samples scored against the truth (the attack's mask)."""

    precision: float
    recall: float
    f1: float
    flagged: int
    poisoned: int
    true_positives: int


def detection_metrics(flagged: Tensor, poisoned: Tensor) -> Detection:
    """Precision, recall and F1 of ``flagged`` against ``poisoned`` (both bool ``N``).

    Precision is 1.0 when nothing is flagged; recall is 1.0 when nothing is poisoned.

    Example:
        >>> detection_metrics(torch.tensor([1, 1, 0, 0]).bool(), torch.tensor([1, 0, 1, 0]).bool())
        Detection(precision=0.5, recall=0.5, f1=0.5, flagged=2, poisoned=2, true_positives=1)
    """
    if flagged.shape != poisoned.shape:
        raise SanitizationError(f"mask shapes differ: {tuple(flagged.shape)} vs {tuple(poisoned.shape)}")
    flagged, poisoned = flagged.bool().cpu(), poisoned.bool().cpu()
    tp = int((flagged & poisoned).sum())
    nf, npois = int(flagged.sum()), int(poisoned.sum())
    precision = tp / nf if nf else 1.0
    recall = tp / npois if npois else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return Detection(precision, recall, f1, nf, npois, tp)
