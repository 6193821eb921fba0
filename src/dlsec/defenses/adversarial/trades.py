"""TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
Accuracy"): ``CE(f(x), y) + beta * KL(f(x) || f(x'))``, where ``x'`` maximises the KL term
inside the eps ball.

Threat model: white-box Lp-bounded evasion. Unlike PGD training, the clean loss is kept
and the robust term pulls the prediction on ``x'`` towards the one on ``x`` (no label is
used to craft ``x'``), trading clean accuracy for robustness through ``beta``.

Defaults (the paper's CIFAR-10 setting): ``beta = 6``, 10 steps, start at
``x + 0.001 * N(0, 1)``, crafted with the model in eval mode. The paper's step of 0.007
for eps 0.031 is about ``2.26 * eps / steps``; here ``alpha = 2.5 * eps / steps`` as in
PGD training (pass ``alpha=`` to change it). The KL term is averaged over the batch
(``batchmean``), as in the authors' code.

Example:
    >>> loss = TradesLoss(eps=0.2, bounds=(0.0, 1.0), beta=6.0)   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlsec.attacks.core import module_mode
from dlsec.defenses.adversarial._base import AdversarialLoss
from dlsec.defenses.adversarial._inner import ascend
from dlsec.training import TrainingError, unwrap_model


def _kl_per_sample(logits: Tensor, p_clean: Tensor) -> Tensor:
    return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="none").sum(1)


@dataclass
class TradesLoss(AdversarialLoss):
    """The TRADES objective on one batch (see the module docstring).

    Args (beyond :class:`AdversarialLoss`):
        beta: weight of the robust (KL) term.
        init_std: standard deviation of the Gaussian start around ``x``.
    """

    beta: float = 6.0
    init_std: float = 0.001

    name = "trades"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta >= 0:
            raise TrainingError(f"{self.name}: beta must be >= 0, got {self.beta!r}")

    def settings(self) -> dict[str, float | int | str | bool]:
        return {**super().settings(), "beta": self.beta}

    def adversarial(self, model: nn.Module, x: Tensor) -> Tensor:
        """``x'``: the point of the ball whose prediction is farthest (KL) from ``f(x)``."""
        net = unwrap_model(model)
        with module_mode(net, training=False):
            with torch.no_grad():
                p_clean = F.softmax(net(x), dim=1)
            noise = torch.randn(x.shape, generator=self.generator, device="cpu")
            start = x + self.init_std * noise.to(x.device, x.dtype)
            return ascend(
                net, x, start, lambda logits: _kl_per_sample(logits, p_clean), norm=self.norm,
                eps=self.eps, steps=self.steps, alpha=self.step_size, bounds=self.bounds,
            )

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        x_adv = self.adversarial(model, x)
        logits_clean = model(x)
        logits_adv = model(x_adv)
        robust = F.kl_div(
            F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1),
            reduction="batchmean",
        )
        return F.cross_entropy(logits_clean, y) + self.beta * robust
