"""Differential privacy: DP-SGD on Opacus (:func:`dp_train`), Poisson sampling through
:func:`dlsec.training.fit`'s sampler seam, the PRV accountant with RDP beside it; the
canaries a one-run privacy audit plants in a training run (:mod:`.canaries`)."""

from dlsec.defenses.dp.canaries import (
    Canaries,
    CanaryError,
    GradientCanaries,
    InputCanaries,
    gradient_canaries,
    input_canaries,
    train_with_input_canaries,
)
from dlsec.defenses.dp.training import DPError, DPResult, dp_train, poisson_sampler

__all__ = ["Canaries", "CanaryError", "DPError", "DPResult", "GradientCanaries", "InputCanaries",
           "dp_train", "gradient_canaries", "input_canaries", "poisson_sampler",
           "train_with_input_canaries"]
