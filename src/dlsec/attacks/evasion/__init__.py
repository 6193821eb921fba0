"""White-box evasion attacks: one file per attack, shared geometry in ``_base``.

Every attack is called the same way and takes a list of epsilons in one call:

    >>> from dlsec.attacks.evasion import PGD
    >>> res = PGD(steps=40)(model, x, y, eps=[0.05, 0.1, 0.2], card=card)   # doctest: +SKIP
    >>> res.robust_accuracy, res.success.shape                              # doctest: +SKIP
"""

from dlsec.attacks.evasion._base import (
    AttackError,
    EvasionAttack,
    EvasionResult,
    choose_targets,
    dlr_loss,
    dlr_targeted_loss,
    lp_norms,
    project,
)
from dlsec.attacks.evasion.bim import BIM
from dlsec.attacks.evasion.fgsm import FGSM
from dlsec.attacks.evasion.mifgsm import MIFGSM
from dlsec.attacks.evasion.pgd import PGD
from dlsec.attacks.evasion.registry import attack_names, make_attack, register_attack

__all__ = [
    "BIM",
    "FGSM",
    "MIFGSM",
    "PGD",
    "AttackError",
    "EvasionAttack",
    "EvasionResult",
    "attack_names",
    "choose_targets",
    "dlr_loss",
    "dlr_targeted_loss",
    "lp_norms",
    "make_attack",
    "project",
    "register_attack",
]
