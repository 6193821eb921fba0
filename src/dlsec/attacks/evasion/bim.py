"""Basic Iterative Method (Kurakin et al. 2017, "Adversarial Examples in the Physical
World"): iterated FGSM from the clean point, clipped to the eps ball after each step.

Defaults: 10 steps of size ``alpha = 1.25 * eps / steps``. (The paper uses a step of one
grey level and ``min(eps + 4, 1.25 eps)`` steps in grey levels; stating the step as a share
of eps keeps the attack meaningful for any input bounds.)

Example:
    >>> res = BIM(steps=10)(model, x, y, eps=0.1, card=card)   # doctest: +SKIP
"""

from __future__ import annotations

from dlsec.attacks.core import Norm
from dlsec.attacks.evasion.pgd import PGD
from dlsec.attacks.registry import register_attack


@register_attack("bim")
class BIM(PGD):
    """PGD without a random start (the iterative FGSM of Kurakin et al.)."""

    name = "bim"

    def __init__(
        self, *, norm: Norm = "linf", steps: int = 10, alpha: float | None = None,
        loss: str = "ce", early_stop: bool = True, last_iterate: bool = False,
    ) -> None:
        super().__init__(
            norm=norm, steps=steps, alpha=alpha, alpha_ratio=1.25, random_start=False,
            loss=loss, early_stop=early_stop, last_iterate=last_iterate,
        )
