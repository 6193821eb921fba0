"""White-box evasion attacks: one file per attack, over the shared geometry of
:mod:`dlsec.attacks.core`; ``_base`` holds the result and the epsilon-sweep driver.
The AutoAttack-style ensemble and its checks are evaluation: :mod:`dlsec.scenarios.whitebox`.

Every attack is called the same way and takes a list of epsilons in one call:

    >>> from dlsec.attacks.evasion import PGD
    >>> res = PGD(steps=40)(model, x, y, eps=[0.05, 0.1, 0.2], card=card)   # doctest: +SKIP
    >>> res.robust_accuracy, res.success.shape                              # doctest: +SKIP
"""

from dlsec.attacks.core import (
    AttackError,
    choose_targets,
    dlr_loss,
    dlr_targeted_loss,
    lp_norms,
    project,
)
from dlsec.attacks.evasion._base import EvasionAttack, EvasionResult
from dlsec.attacks.evasion.apgd import APGD, APGDT
from dlsec.attacks.evasion.bim import BIM
from dlsec.attacks.evasion.cw import CW
from dlsec.attacks.evasion.deepfool import DeepFool
from dlsec.attacks.evasion.difgsm import DIFGSM
from dlsec.attacks.evasion.fgsm import FGSM
from dlsec.attacks.evasion.mifgsm import MIFGSM
from dlsec.attacks.evasion.pgd import PGD
from dlsec.attacks.registry import attack_names, make_attack, register_attack

__all__ = [
    "APGD",
    "APGDT",
    "BIM",
    "CW",
    "DIFGSM",
    "FGSM",
    "MIFGSM",
    "PGD",
    "AttackError",
    "DeepFool",
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
