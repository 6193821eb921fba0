"""The inner maximisation of adversarial training: a lean fixed-step attack on one batch.

Training needs only the adversarial batch, with no per-sample bookkeeping: every point
takes every step (no early stop, no best iterate), as in the papers. The geometry
(random start, step direction, projection) is the evasion attacks' own, from
:mod:`dlsec.attacks.core`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from dlsec.attacks.core import input_gradient, project, step_direction


def ascend(
    model: nn.Module, x: Tensor, start: Tensor, loss: Callable[[Tensor], Tensor], *,
    norm: str, eps: float, steps: int, alpha: float, bounds: tuple[float, float],
) -> Tensor:
    """``steps`` projected steps of size ``alpha`` from ``start`` that ascend ``loss``
    (``logits -> per-sample loss``) inside the ``norm`` ball of radius ``eps`` around
    ``x`` and the input ``bounds``; returns the last iterate, detached.

    Only input gradients are computed: parameter gradients are left untouched.
    """
    x_adv = start.detach()
    for _ in range(steps):
        _, grad, _ = input_gradient(model, x_adv, loss)
        delta = project(x_adv + alpha * step_direction(grad, norm) - x, norm, eps)
        x_adv = (x + delta).clamp(*bounds)
    return x_adv.detach()
