"""Differential privacy: DP-SGD on Opacus (:func:`dp_train`), Poisson sampling through
:func:`dlsec.training.fit`'s sampler seam, the PRV accountant with RDP beside it."""

from dlsec.defenses.dp.training import DPError, DPResult, dp_train, poisson_sampler

__all__ = ["DPError", "DPResult", "dp_train", "poisson_sampler"]
