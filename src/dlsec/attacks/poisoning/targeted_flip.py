"""Targeted (class-pair) label flipping: samples of a source class relabelled as a target.

Threat model: the attacker relabels training samples of one class, e.g. every 7 becomes a
1, so that the trained model sends that class to the attacker's class at test time.
Inputs are untouched. Success is the share of the source class's test samples the model
predicts as the target class. Reference: the class-pair flips of Tolpegin et al., "Data
Poisoning Attacks Against Federated Learning Systems" (ESORICS 2020).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dlsec.attacks.poisoning._base import (
    PoisonError,
    PoisonResult,
    check_labels,
    check_rate,
    flipped,
    predictions,
)


def pair_success(source: int, target: int):
    """``success(model, x_test, y_test)``: share of ``source`` test samples predicted ``target``."""

    def success(model: nn.Module, x_test: Tensor, y_test: Tensor) -> float:
        sel = (y_test == source).to(x_test.device)
        if not bool(sel.any()):
            return 0.0
        pred = predictions(model, x_test[sel])
        return float((pred == target).float().mean())

    return success


def targeted_flip(x: Tensor, y: Tensor, *, source: int, target: int, rate: float = 1.0,
                  num_classes: int | None = None,
                  generator: torch.Generator | None = None) -> PoisonResult:
    """Relabel a ``rate`` share of the ``source`` class's samples as ``target``.

    Args:
        x, y: the training set (``x`` is returned unchanged).
        source, target: the class pair (default share 1.0: the whole source class).
        rate: share of the *source class* to flip, in ``[0, 1]``.
    """
    check_rate(rate, allow_one=True)
    k = check_labels(y, num_classes)
    if not (0 <= source < k and 0 <= target < k) or source == target:
        raise PoisonError(f"source and target must be different classes in 0..{k - 1}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    candidates = torch.nonzero(y == source).flatten()
    n_flip = round(rate * candidates.numel())
    perm = torch.randperm(candidates.numel(), generator=g).to(y.device)
    idx = candidates[perm[:n_flip]]
    return flipped(x, y, idx, target, "targeted-flip",
                   {"source": source, "target": target, "rate": rate, "n_flipped": n_flip},
                   pair_success(source, target))
