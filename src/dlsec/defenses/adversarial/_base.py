"""What the adversarial-training losses share: the threat (eps, norm, bounds), the attack
budget, and the randomness. Each method is a ``batch_loss`` for :func:`dlsec.training.fit`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dlsec.attacks.core import Norm
from dlsec.training import TrainingError


@dataclass
class AdversarialLoss:
    """Base of the adversarial-training batch losses (called as ``loss(model, x, y)``).

    Args:
        eps: radius of the threat ball, in input units (the card's bounds).
        bounds: ``(low, high)`` of valid inputs, from the model card.
        norm: ``"linf"`` or ``"l2"``.
        steps: attack steps per batch.
        alpha: step size; default ``alpha_ratio * eps / steps``.
        alpha_ratio: see ``alpha``.
        generator: CPU generator for the random starts (seed it for reproducible runs).
    """

    eps: float
    bounds: tuple[float, float]
    norm: Norm = "linf"
    steps: int = 10
    alpha: float | None = None
    alpha_ratio: float = 2.5
    generator: torch.Generator | None = None

    name = "adversarial"

    def __post_init__(self) -> None:
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise TrainingError(f"{self.name}: eps must be a positive number, got {self.eps!r}")
        if self.norm not in ("linf", "l2"):
            raise TrainingError(f"{self.name}: norm must be linf or l2, got {self.norm!r}")
        if self.steps < 1:
            raise TrainingError(f"{self.name}: steps must be >= 1, got {self.steps}")
        if self.alpha is not None and not self.alpha > 0:
            raise TrainingError(f"{self.name}: alpha must be positive, got {self.alpha!r}")

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else self.alpha_ratio * self.eps / self.steps

    def settings(self) -> dict[str, float | int | str | bool]:
        """What the model card records about the method."""
        return {
            "method": self.name, "eps": self.eps, "norm": self.norm, "steps": self.steps,
            "alpha": self.step_size,
        }

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError
