"""White-box evasion attacks: one file per attack, shared geometry in ``_base``.

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
from dlsec.attacks.evasion.ensemble import (
    RobustnessReport,
    available_stages,
    default_attacks,
    evaluate_robustness,
    register_stage,
)
from dlsec.attacks.evasion.fgsm import FGSM
from dlsec.attacks.evasion.mifgsm import MIFGSM
from dlsec.attacks.evasion.pgd import PGD
from dlsec.attacks.evasion.registry import attack_names, make_attack, register_attack

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
    "RobustnessReport",
    "attack_names",
    "available_stages",
    "choose_targets",
    "default_attacks",
    "dlr_loss",
    "dlr_targeted_loss",
    "evaluate_robustness",
    "lp_norms",
    "make_attack",
    "project",
    "register_attack",
    "register_stage",
]
