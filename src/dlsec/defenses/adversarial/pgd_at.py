"""PGD adversarial training (Madry et al. 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks"): minimise the loss of the worst point PGD finds in the eps ball.

Threat model: white-box Lp-bounded evasion at test time; the defender trains on PGD
adversarials of every batch, so each step costs ``steps + 1`` forward and backward passes.

Defaults: 10 steps of ``alpha = 2.5 * eps / steps`` from a uniform random start in the
ball, crafted with the model in train mode (as Madry et al.'s and Rice et al.'s code do;
it only matters for batch norm and dropout), cross-entropy on the adversarial batch only.

Example:
    >>> loss = PGDTrainingLoss(eps=0.2, bounds=(0.0, 1.0))               # doctest: +SKIP
    >>> fit(model, x, y, config=TrainConfig(epochs=30), batch_loss=loss)   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from dlsec.attacks.core import ce_loss, module_mode, random_start
from dlsec.defenses.adversarial._base import AdversarialLoss
from dlsec.defenses.adversarial._inner import ascend
from dlsec.training import unwrap_model


@dataclass
class PGDTrainingLoss(AdversarialLoss):
    """Cross-entropy on PGD adversarials of the batch (see the module docstring).

    Args (beyond :class:`AdversarialLoss`):
        random_init: start from a uniform point of the ball (else from the clean input).
        craft_in_train_mode: craft the adversarials with the model in train mode.
    """

    random_init: bool = True
    craft_in_train_mode: bool = True

    name = "pgd"

    def adversarial(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The adversarial batch (crafted through the unwrapped module, no DDP sync)."""
        net = unwrap_model(model)
        start = (
            random_start(x, self.norm, self.eps, self.bounds, self.generator)
            if self.random_init
            else x
        )
        with module_mode(net, training=self.craft_in_train_mode):
            return ascend(
                net, x, start, lambda logits: ce_loss(logits, y), norm=self.norm,
                eps=self.eps, steps=self.steps, alpha=self.step_size, bounds=self.bounds,
            )

    def settings(self) -> dict[str, float | int | str | bool]:
        return {**super().settings(), "random_init": self.random_init}

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(self.adversarial(model, x, y)), y)
