"""Adversarial training on the shared loop: PGD-AT (Madry et al. 2018), fast FGSM with a
random start (Wong et al. 2020) with catastrophic-overfitting detection, and TRADES
(Zhang et al. 2019). Each method is a ``batch_loss`` for :func:`dlsec.training.fit`;
:func:`adversarial_train` is the one-call entry.

Example:
    >>> from dlsec.defenses.adversarial import adversarial_train
    >>> model, card, result = adversarial_train(
    ...     ds, "simplenet", method="pgd", eps=0.2
    ... )  # doctest: +SKIP
"""

from dlsec.defenses.adversarial._base import AdversarialLoss
from dlsec.defenses.adversarial.fgsm_rs import FastFGSMLoss
from dlsec.defenses.adversarial.monitor import RobustnessMonitor
from dlsec.defenses.adversarial.pgd_at import PGDTrainingLoss
from dlsec.defenses.adversarial.trades import TradesLoss
from dlsec.defenses.adversarial.train import (
    METHODS,
    AdversarialTrainResult,
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
