"""``dlsec.defenses.adversarial_training``: the public name of adversarial training.

The methods live one per file in :mod:`dlsec.defenses.adversarial`; this module
re-exports them.
"""

from dlsec.defenses.adversarial import (
    METHODS,
    AdversarialLoss,
    AdversarialTrainResult,
    FastFGSMLoss,
    PGDTrainingLoss,
    RobustnessMonitor,
    TradesLoss,
    adversarial_train,
    make_adversarial_loss,
)

__all__ = [
    "METHODS",
    "AdversarialLoss",
    "AdversarialTrainResult",
    "FastFGSMLoss",
    "PGDTrainingLoss",
    "RobustnessMonitor",
    "TradesLoss",
    "adversarial_train",
    "make_adversarial_loss",
]
