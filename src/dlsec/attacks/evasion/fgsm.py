"""Fast Gradient Sign Method (Goodfellow et al. 2015, "Explaining and Harnessing Adversarial
Examples"): one step of size eps along the sign of the input gradient (Linf), or along the
normalized gradient (L2, the fast gradient method).

Threat model: white-box, one gradient. Closed form: ``x' = clip(x + eps * sign(grad))``.

Example:
    >>> res = FGSM()(model, x, y, eps=0.1, card=card)   # doctest: +SKIP
"""

from __future__ import annotations

from dlsec.attacks.core import Norm
from dlsec.attacks.evasion.pgd import PGD
from dlsec.attacks.registry import register_attack


@register_attack("fgsm")
class FGSM(PGD):
    """One PGD step of size eps from the clean point (no random start, no restarts)."""

    name = "fgsm"

    def __init__(self, *, norm: Norm = "linf", loss: str = "ce") -> None:
        super().__init__(norm=norm, steps=1, alpha_ratio=1.0, random_start=False, loss=loss)
