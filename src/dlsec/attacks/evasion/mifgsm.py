"""Momentum Iterative FGSM (Dong et al. 2018, "Boosting Adversarial Attacks with Momentum").

The step direction is the sign of an accumulated gradient
``g_{t+1} = mu * g_t + grad / ||grad||_1``, which stabilizes the update and makes the
adversarials transfer better to other models (used by the transfer attacks).

Defaults follow the paper: ``mu = 1.0``, 10 steps of size ``eps / steps``, no random start.

Example:
    >>> res = MIFGSM(steps=10)(model, x, y, eps=0.1, card=card)   # doctest: +SKIP
"""

from __future__ import annotations

from torch import Tensor

from dlsec.attacks.core import Norm, batch_view, step_direction
from dlsec.attacks.evasion.pgd import PGD
from dlsec.attacks.registry import register_attack


@register_attack("mifgsm")
class MIFGSM(PGD):
    """PGD whose direction is the sign (Linf) or L2-normalized momentum of L1-normalized gradients."""

    name = "mifgsm"

    def __init__(
        self, *, norm: Norm = "linf", steps: int = 10, decay: float = 1.0,
        alpha: float | None = None, random_start: bool = False, loss: str = "ce",
        early_stop: bool = True, last_iterate: bool = False,
    ) -> None:
        super().__init__(
            norm=norm, steps=steps, alpha=alpha, alpha_ratio=1.0, random_start=random_start,
            loss=loss, early_stop=early_stop, last_iterate=last_iterate,
        )
        self.decay = decay

    def _direction(self, grad: Tensor, state: dict[str, Tensor]) -> Tensor:
        l1 = batch_view(grad.abs().flatten(1).sum(1).clamp_min(1e-12), grad)
        momentum = state.get("momentum")
        momentum = grad / l1 if momentum is None else self.decay * momentum + grad / l1
        state["momentum"] = momentum
        return step_direction(momentum, self.norm)
