"""Hardening: a model trained adversarially (PGD-AT, FGSM-RS, TRADES), the defended variant
the front-ends build (``dlsec train --adversarial``, the audit's adversarially trained copy).

The algorithms live in :mod:`dlsec.defenses.adversarial`; this is where the front-ends'
options are checked once (a method by name, a radius in input units, a norm) before the
one training loop runs.

Example:
    >>> model, card, result = adversarial_training(
    ...     load_dataset("digits"), "simplenet", TrainConfig(epochs=30), method="pgd", eps=0.2
    ... )                                                          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, cast

from torch import nn

from dlsec.data import Dataset
from dlsec.defenses.adversarial import METHODS, AdversarialTrainResult, adversarial_train
from dlsec.models import ModelCard
from dlsec.threat import NORMS, Norm
from dlsec.training import TrainConfig, TrainingError


def adversarial_training(
    dataset: Dataset, architecture: str, config: TrainConfig, *, method: str,
    eps: float | None, norm: Norm | str = "linf", steps: int | None = None,
    progress: bool = True, **settings: Any,
) -> tuple[nn.Module, ModelCard, AdversarialTrainResult]:
    """Train ``architecture`` on ``dataset`` with the adversarial ``method`` at radius ``eps``.

    ``settings`` go to :func:`dlsec.defenses.adversarial.adversarial_train` (``alpha``,
    ``beta``, ``random_init``, ``monitor``, ``normalization``...). A method that does not
    exist, a missing radius or a norm the methods do not train against is a
    :class:`dlsec.training.TrainingError` (one line on the command line).
    """
    if method not in METHODS:
        raise TrainingError(
            f"unknown adversarial training method {method!r} (choose from {', '.join(METHODS)})"
        )
    if eps is None:
        raise TrainingError("--eps is required with --adversarial (the radius in input units)")
    if norm not in NORMS:
        raise TrainingError(f"unknown norm {norm!r} (choose from linf, l2)")
    return adversarial_train(
        dataset, architecture, method=method, eps=eps, config=config, steps=steps,
        norm=cast(Norm, norm), progress=progress, **settings,
    )


__all__ = ["adversarial_training"]
