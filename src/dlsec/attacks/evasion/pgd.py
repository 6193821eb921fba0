"""Projected Gradient Descent (Madry et al. 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks"), Linf and L2, untargeted or targeted, with random start and restarts.

Threat model: white-box; the attacker ascends the loss along the input gradient and
projects back onto the eps ball and the input bounds after every step.

Defaults: 40 steps of size ``alpha = 2.5 * eps / steps`` (Madry et al.'s rule of thumb,
enough to cross the ball from any start), a uniform random start, one restart.

Unlike a fixed-step PGD that returns its last iterate, this one returns for every point
the first iterate that fools the model and stops computing on that point (``early_stop``);
points never fooled return their highest-loss iterate. With ``early_stop=False`` all
points take every step (the textbook cost) and the best iterate is still kept.

Example:
    >>> res = PGD(steps=40)(model, x, y, eps=[0.05, 0.1], card=card)   # doctest: +SKIP
    >>> res.robust_accuracy                                            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dlsec.attacks.evasion._base import (
    AttackError,
    EvasionAttack,
    Norm,
    _BatchOutput,
    ce_loss,
    input_gradient,
    is_adversarial,
    margin_loss,
    project,
    random_start,
    step_direction,
)
from dlsec.attacks.evasion.registry import register_attack

LossFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def _ce(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    # targeted: descend the CE of the target, i.e. ascend its negative
    return -ce_loss(logits, target) if target is not None else ce_loss(logits, y)


def _margin(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    return margin_loss(logits, y, target)


LOSSES: dict[str, LossFn] = {"ce": _ce, "margin": _margin}


@register_attack("pgd")
class PGD(EvasionAttack):
    """Projected gradient descent on the cross-entropy (or margin) loss.

    Args:
        norm: ``"linf"`` or ``"l2"``.
        steps: gradient steps per restart.
        alpha: step size; default ``2.5 * eps / steps``.
        random_start: start from a uniform point of the ball (else from ``x``).
        restarts: independent runs; later runs attack only the points still robust.
        loss: ``"ce"`` (default) or ``"margin"`` (C&W-style logit margin).
        early_stop: stop working on a point as soon as it is fooled.
    """

    name = "pgd"

    def __init__(
        self,
        *,
        norm: Norm = "linf",
        steps: int = 40,
        alpha: float | None = None,
        alpha_ratio: float = 2.5,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        early_stop: bool = True,
    ) -> None:
        if norm not in ("linf", "l2"):
            raise AttackError(f"{self.name}: norm must be linf or l2, got {norm!r}")
        if steps < 1 or restarts < 1:
            raise AttackError(f"{self.name}: steps and restarts must be >= 1")
        if loss not in LOSSES:
            raise AttackError(f"{self.name}: loss must be one of {', '.join(LOSSES)}")
        self.norm = norm
        self.steps = steps
        self.alpha = alpha
        self.alpha_ratio = alpha_ratio
        self.random_start = random_start
        self.restarts = restarts
        self.loss = loss
        self.early_stop = early_stop

    def step_size(self, eps: float) -> float:
        return self.alpha if self.alpha is not None else self.alpha_ratio * eps / self.steps

    def _direction(self, grad: Tensor, state: dict[str, Tensor], active: Tensor) -> Tensor:
        """The ascent direction for this step (MI-FGSM overrides it to add momentum)."""
        return step_direction(grad, self.norm)

    def _attack(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        eps: float,
        target: Tensor | None,
        bounds: tuple[float, float],
        generator: torch.Generator | None,
    ) -> _BatchOutput:
        loss_fn = LOSSES[self.loss]
        alpha = self.step_size(eps)
        n = x.shape[0]
        best = x.clone()
        best_loss = torch.full((n,), -torch.inf, device=x.device, dtype=x.dtype)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        grads = torch.zeros(n, dtype=torch.int64, device=x.device)
        for _ in range(self.restarts):
            idx = torch.nonzero(~done).flatten()
            if idx.numel() == 0:
                break
            xa, ya = x[idx], y[idx]
            ta = None if target is None else target[idx]
            cur = random_start(xa, self.norm, eps, bounds, generator) if self.random_start else xa.clone()
            state: dict[str, Tensor] = {}
            active = torch.arange(idx.numel(), device=x.device)  # positions still attacked
            for step in range(self.steps + 1):
                xs = cur[active]
                t_act = None if ta is None else ta[active]
                if step < self.steps:
                    loss, grad, logits = input_gradient(
                        model, xs, lambda z, a=active, t=t_act, yy=ya: loss_fn(z, yy[a], t)
                    )
                    grads[idx[active]] += 1
                else:  # the final iterate only needs a forward pass
                    with torch.inference_mode():
                        logits = model(xs)
                        loss = loss_fn(logits, ya[active], t_act)
                fooled = is_adversarial(logits, ya[active], t_act)
                better = fooled | (loss > best_loss[idx[active]])
                upd = idx[active][better]
                best[upd] = xs[better]
                best_loss[upd] = torch.where(
                    fooled[better], torch.full_like(loss[better], torch.inf), loss[better]
                )
                done[idx[active][fooled]] = True
                if step == self.steps:
                    break
                if self.early_stop:
                    keep = ~fooled
                    active, xs, grad = active[keep], xs[keep], grad[keep]
                    if active.numel() == 0:
                        break
                direction = self._direction(grad, state, active)
                moved = xs + alpha * direction
                delta = project(moved - xa[active], self.norm, eps)
                cur[active] = (xa[active] + delta).clamp(*bounds)
        return _BatchOutput(best, best, grads)
