"""What every poisoning attack shares: the result type, rate and label checks, predictions."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dlsec.errors import DlsecError

SuccessFn = Callable[[nn.Module, Tensor, Tensor], float]


class PoisonError(DlsecError):
    """Bad poisoning settings."""


@dataclass
class PoisonResult:
    """A poisoned training set.

    Attributes:
        x: poisoned inputs (``N' x ...``; ``N' > N`` when the attack adds samples).
        y: poisoned labels, int64.
        mask: bool ``N'``, True for every row the attack relabelled, perturbed or added.
        y_clean: the true label of every row (for added rows, the label of the sample the
            row was made from), so a flip's damage can be checked.
        attack: the attack's name.
        metadata: the attack's settings and anything needed to reproduce or evaluate it.
        success: ``success(model, x_test, y_test) -> float``, the attack's own goal on a
            model trained on ``(x, y)``; None when the goal is only lower accuracy.
    """

    x: Tensor
    y: Tensor
    mask: Tensor
    y_clean: Tensor
    attack: str
    metadata: dict[str, Any] = field(default_factory=dict)
    success: SuccessFn | None = field(default=None, repr=False)

    @property
    def n_poisoned(self) -> int:
        return int(self.mask.sum())

    @property
    def rate(self) -> float:
        """Share of the poisoned set that the attack touched."""
        return self.n_poisoned / max(1, int(self.mask.numel()))


def check_rate(rate: float, *, name: str = "rate", allow_one: bool = False) -> float:
    upper_ok = rate <= 1.0 if allow_one else rate < 1.0
    if not (0.0 <= rate and upper_ok and math.isfinite(rate)):
        bound = "[0, 1]" if allow_one else "[0, 1)"
        raise PoisonError(f"{name} must be in {bound}, got {rate}")
    return float(rate)


def check_labels(y: Tensor, num_classes: int | None) -> int:
    """The number of classes (inferred from ``y`` when not given); labels must fit in it."""
    if y.dim() != 1 or y.dtype != torch.int64:
        raise PoisonError(f"labels must be a 1-D int64 tensor, got {tuple(y.shape)} {y.dtype}")
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if k < 2:
        raise PoisonError(f"label poisoning needs at least 2 classes, got {k}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
        raise PoisonError(f"labels out of range 0..{k - 1}")
    return k


def random_other_label(y: Tensor, num_classes: int, generator: torch.Generator) -> Tensor:
    """A uniformly random label different from each ``y`` (same device as ``y``)."""
    shift = torch.randint(1, num_classes, y.shape, generator=generator).to(y.device)
    return (y + shift) % num_classes


def flipped(x: Tensor, y: Tensor, idx: Tensor, labels: Tensor | int, attack: str,
            metadata: dict[str, Any], success: SuccessFn | None = None) -> PoisonResult:
    """``(x, y)`` with the labels at ``idx`` set to ``labels`` (only those rows masked)."""
    y_new = y.clone()
    y_new[idx] = labels
    mask = torch.zeros(y.numel(), dtype=torch.bool, device=y.device)
    mask[idx] = True
    return PoisonResult(x=x, y=y_new, mask=mask, y_clean=y.clone(), attack=attack,
                        metadata=metadata, success=success)


def predictions(model: nn.Module, x: Tensor, *, batch_size: int = 1024) -> Tensor:
    """Predicted labels of ``x`` on the model's device."""
    from dlsec.training import predict_logits

    return predict_logits(model, x, batch_size=batch_size).argmax(1)
