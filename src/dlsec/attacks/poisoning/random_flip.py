"""Random label flipping: a share of the training labels replaced by a random wrong class.

Threat model: the attacker controls the labels of a random ``rate`` share of the training
set (a careless or malicious annotator, a crowd-sourced labelling pool); inputs are left
untouched. The goal is lower test accuracy. Reference: Biggio, Nelson and Laskov,
"Support Vector Machines Under Adversarial Label Noise" (ACML 2011), the uniform-noise
baseline against which optimized flips are compared.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dlsec.attacks.poisoning._base import (
    PoisonResult,
    check_labels,
    check_rate,
    flipped,
    random_other_label,
)


def random_flip(x: Tensor, y: Tensor, *, rate: float, num_classes: int | None = None,
                generator: torch.Generator | None = None) -> PoisonResult:
    """Flip ``round(rate * N)`` labels, chosen uniformly, to a uniformly random other class.

    Args:
        x, y: the training set (``x`` is returned unchanged).
        rate: share of the samples to flip, in ``[0, 1)``.
    """
    check_rate(rate)
    k = check_labels(y, num_classes)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    n = y.numel()
    n_flip = round(rate * n)
    idx = torch.randperm(n, generator=g)[:n_flip].to(y.device)
    return flipped(x, y, idx, random_other_label(y[idx], k, g), "random-flip",
                   {"rate": rate, "n_flipped": n_flip, "num_classes": k})
