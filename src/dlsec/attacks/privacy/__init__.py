"""Privacy attacks: membership inference, model inversion and model extraction.

* :mod:`~dlsec.attacks.privacy.membership` — loss/confidence/entropy thresholds,
  shadow models with an attack classifier, LiRA (online and offline), label-only;
* :mod:`~dlsec.attacks.privacy.inversion` — MI-Face, white-box and through an Oracle;
* :mod:`~dlsec.attacks.surrogate` — substitute training through an Oracle;
* :mod:`~dlsec.attacks.privacy.metrics` — ROC AUC, TPR at low FPR, membership advantage.

Black-box attacks talk to the model only through a :class:`dlsec.threat.Oracle`.
"""

from dlsec.attacks.privacy._common import PrivacyAttackError

__all__ = ["PrivacyAttackError"]
