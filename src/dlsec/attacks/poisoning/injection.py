"""Injection of mislabeled samples: new training rows with wrong labels appended.

Threat model: the attacker cannot change existing data but can add samples to the
training set (a scraped web source, a public upload form). Each injected row copies an
input from ``pool`` (by default the training set itself, i.e. the attacker draws from the
same distribution) with a wrong label: a random other class, or one fixed ``label``.
``rate`` is the share of the *resulting* training set that is injected. Reference: the
poisoning taxonomy of Biggio and Roli, "Wild Patterns" (Pattern Recognition 2018).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dlsec.attacks.poisoning._base import (
    PoisonError,
    PoisonResult,
    check_labels,
    check_rate,
    random_other_label,
)


def inject_mislabeled(x: Tensor, y: Tensor, *, rate: float,
                      pool: tuple[Tensor, Tensor] | None = None, label: int | None = None,
                      num_classes: int | None = None,
                      generator: torch.Generator | None = None) -> PoisonResult:
    """Append ``round(rate * N / (1 - rate))`` mislabeled copies of pool samples.

    Args:
        x, y: the clean training set (kept as the first ``N`` rows).
        rate: share of the resulting set that is injected, in ``[0, 1)``.
        pool: ``(x_pool, y_pool)`` to draw the injected inputs from (default ``(x, y)``);
            drawn without replacement while the pool lasts.
        label: give every injected row this label (rows of that class are not drawn);
            default a random class other than the pool label.
    """
    check_rate(rate)
    k = check_labels(y, num_classes)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    xp, yp = pool if pool is not None else (x, y)
    if xp.shape[1:] != x.shape[1:]:
        raise PoisonError(f"pool inputs {tuple(xp.shape[1:])} differ from {tuple(x.shape[1:])}")
    candidates = torch.arange(yp.numel())
    if label is not None:
        if not 0 <= label < k:
            raise PoisonError(f"label must be in 0..{k - 1}, got {label}")
        candidates = torch.nonzero(yp.cpu() != label).flatten()
    if candidates.numel() == 0:
        raise PoisonError("the pool has no sample to inject")
    n_add = round(rate * y.numel() / (1.0 - rate))
    reps = -(-n_add // candidates.numel()) if n_add else 0
    order = torch.cat([candidates[torch.randperm(candidates.numel(), generator=g)]
                       for _ in range(reps)])[:n_add] if reps else candidates[:0]
    src = order.to(xp.device)
    y_src = yp[src].to(y.device)
    if label is None:
        y_bad = random_other_label(y_src, k, g)
    else:
        y_bad = torch.full_like(y_src, label)
    x_new = torch.cat([x, xp[src].to(x.device)])
    y_new = torch.cat([y, y_bad])
    mask = torch.zeros(y_new.numel(), dtype=torch.bool, device=y.device)
    mask[y.numel():] = True
    return PoisonResult(
        x=x_new, y=y_new, mask=mask, y_clean=torch.cat([y, y_src]), attack="inject",
        metadata={"rate": rate, "n_injected": n_add, "label": label},
    )
