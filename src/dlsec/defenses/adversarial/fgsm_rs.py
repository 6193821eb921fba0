"""Fast adversarial training with FGSM and a random start (Wong, Rice & Kolter 2020, "Fast
is better than free: Revisiting adversarial training").

Threat model: as PGD adversarial training, at the cost of one extra forward and backward
per batch: start from a uniform point of the eps ball, take one signed-gradient step of
``alpha = 1.25 * eps``, project back onto the ball and the bounds, train on that point.

Fast training can fail all at once ("catastrophic overfitting"): within an epoch the
model becomes robust to FGSM but PGD accuracy drops to about zero. Wong et al. guard
against it by checking PGD accuracy during training and keeping the last good weights;
:func:`dlsec.defenses.adversarial.adversarial_train` does this after every epoch with
:class:`~dlsec.defenses.adversarial.monitor.RobustnessMonitor`.

Example:
    >>> loss = FastFGSMLoss(eps=0.2, bounds=(0.0, 1.0))   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

from dlsec.defenses.adversarial.pgd_at import PGDTrainingLoss
from dlsec.training import TrainingError


@dataclass
class FastFGSMLoss(PGDTrainingLoss):
    """One random-start FGSM step of ``1.25 * eps`` (Wong et al.'s defaults).

    ``random_init=False`` gives plain FGSM training (Goodfellow et al.), the setting
    prone to catastrophic overfitting.
    """

    steps: int = 1
    alpha_ratio: float = 1.25

    name = "fgsm-rs"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps != 1:
            raise TrainingError(f"{self.name} takes exactly one step, got steps={self.steps}")
