"""Robustness checked after every epoch of adversarial training, with detection of
catastrophic overfitting (Wong, Rice & Kolter 2020) and the best-robust checkpoint
(Rice, Wong & Kolter 2020, "Overfitting in adversarially robust deep learning").

After each epoch the monitor attacks a fixed held-out batch with PGD (same points, same
seeded random start every epoch, so epochs compare) and with FGSM, and records both
accuracies. It keeps a copy of the weights of the epoch with the best PGD accuracy.

Catastrophic overfitting is flagged when PGD accuracy falls more than ``drop`` below the
best epoch's, or when it is below ``floor`` while FGSM accuracy is at least ``fgsm_gap``
higher (robust to the attack trained on, not to a stronger one). The trainer then stops
and rolls back to the best checkpoint.

Example:
    >>> mon = RobustnessMonitor(x_val, y_val, eps=0.2, bounds=(0.0, 1.0))   # doctest: +SKIP
    >>> fit(model, x, y, config=cfg, batch_loss=loss, on_epoch_end=mon)     # doctest: +SKIP
    >>> model.load_state_dict(mon.best_state)                               # doctest: +SKIP
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dlsec.attacks.core import Norm
from dlsec.attacks.evasion import FGSM, PGD
from dlsec.training import unwrap_model


@dataclass
class RobustnessMonitor:
    """``on_epoch_end`` hook: PGD/FGSM accuracy on a held-out batch, collapse detection.

    Adds ``val_pgd_accuracy``, ``val_fgsm_accuracy`` and ``catastrophic_overfitting``
    (0 or 1) to each epoch's record; returns True (stop) on a collapse when
    ``stop_on_collapse``.
    """

    x: Tensor
    y: Tensor
    eps: float
    bounds: tuple[float, float]
    norm: Norm = "linf"
    steps: int = 10
    drop: float = 0.2
    floor: float = 0.05
    fgsm_gap: float = 0.3
    seed: int = 0
    stop_on_collapse: bool = True
    best_accuracy: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, Tensor] | None = field(default=None, repr=False)
    collapse_epoch: int | None = None

    def robust_accuracy(self, model: nn.Module) -> tuple[float, float]:
        """``(PGD accuracy, FGSM accuracy)`` of ``model`` on the monitor batch."""
        gen = torch.Generator().manual_seed(self.seed)
        kw: dict[str, Any] = {"eps": self.eps, "bounds": self.bounds}
        pgd = PGD(norm=self.norm, steps=self.steps)(model, self.x, self.y, generator=gen, **kw)
        fgsm = FGSM(norm=self.norm)(model, self.x, self.y, **kw)
        return pgd.robust_accuracy[0], fgsm.robust_accuracy[0]

    def __call__(self, epoch: int, model: nn.Module, record: dict[str, float]) -> bool:
        net = unwrap_model(model)
        pgd, fgsm = self.robust_accuracy(net)
        collapsed = (self.best_epoch > 0 and self.best_accuracy - pgd > self.drop) or (
            pgd < self.floor and fgsm - pgd >= self.fgsm_gap
        )
        record["val_pgd_accuracy"], record["val_fgsm_accuracy"] = pgd, fgsm
        record["catastrophic_overfitting"] = float(collapsed)
        if collapsed:
            if self.collapse_epoch is None:
                self.collapse_epoch = epoch
            return self.stop_on_collapse
        if pgd >= self.best_accuracy:  # ties go to the later, longer-trained epoch
            self.best_accuracy, self.best_epoch = pgd, epoch
            self.best_state = copy.deepcopy(net.state_dict())
        return False
