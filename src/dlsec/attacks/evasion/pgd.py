"""Projected Gradient Descent (Madry et al. 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks"), Linf and L2, untargeted or targeted, with random start and restarts.

Threat model: white-box; the attacker ascends the loss along the input gradient and
projects back onto the eps ball and the input bounds after every step.

Defaults: 40 steps of size ``alpha = 2.5 * eps / steps`` (Madry et al.'s rule of thumb,
enough to cross the ball from any start), a uniform random start, one restart.

Unlike a fixed-step PGD that returns its last iterate, this one returns for every point
the first iterate that fools the model (a later step could undo it) and, with
``early_stop``, stops computing on that point; points never fooled return the final
iterate. With ``early_stop=False`` all points take every step (the textbook cost) and the
first fooling iterate is still the one kept. With ``last_iterate=True`` every point takes
every step and the final iterate is returned, fooling or not: what transfer attacks want,
since an adversarial just across the boundary of the model it was crafted on rarely
fools another model.

Example:
    >>> res = PGD(steps=40)(model, x, y, eps=[0.05, 0.1], card=card)   # doctest: +SKIP
    >>> res.robust_accuracy                                            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dlsec.attacks.core import (
    AttackError,
    Norm,
    ce_loss,
    input_gradient,
    is_adversarial,
    margin_loss,
    project,
    random_start,
    step_direction,
)
from dlsec.attacks.evasion._base import EvasionAttack, _BatchOutput
from dlsec.attacks.registry import register_attack

LossFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def _ce(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    # targeted: descend the CE of the target, i.e. ascend its negative
    return -ce_loss(logits, target) if target is not None else ce_loss(logits, y)


LOSSES: dict[str, LossFn] = {"ce": _ce, "margin": margin_loss}


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
        last_iterate: take every step on every point and return the final iterate
            (success is judged on it); for crafting adversarials that transfer.
    """

    name = "pgd"

    def __init__(
        self, *, norm: Norm = "linf", steps: int = 40, alpha: float | None = None,
        alpha_ratio: float = 2.5, random_start: bool = True, restarts: int = 1,
        loss: str = "ce", early_stop: bool = True, last_iterate: bool = False,
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
        self.last_iterate = last_iterate

    def step_size(self, eps: float) -> float:
        return self.alpha if self.alpha is not None else self.alpha_ratio * eps / self.steps

    def _direction(self, grad: Tensor, state: dict[str, Tensor]) -> Tensor:
        """The ascent direction for this step (MI-FGSM overrides it to add momentum).

        ``state`` holds per-point tensors aligned with ``grad``; the loop keeps them aligned
        when it drops fooled points.
        """
        return step_direction(grad, self.norm)

    def _attack(
        self, model: nn.Module, x: Tensor, y: Tensor, *, eps: float, target: Tensor | None,
        bounds: tuple[float, float], generator: torch.Generator | None,
    ) -> _BatchOutput:
        n = x.shape[0]
        best = x.clone()
        fooled_out = torch.zeros(n, dtype=torch.bool, device=x.device)
        grads = torch.zeros(n, dtype=torch.int64, device=x.device)
        for _ in range(self.restarts):
            pos = torch.nonzero(~fooled_out).flatten()
            if pos.numel() == 0:
                break
            t = None if target is None else target[pos]
            self._run(model, x[pos], y[pos], t, pos, eps, bounds, generator,
                      best, fooled_out, grads)
        return _BatchOutput(best, best, grads, fooled_out)

    def _run(
        self, model: nn.Module, x0: Tensor, y: Tensor, t: Tensor | None, pos: Tensor,
        eps: float, bounds: tuple[float, float], generator: torch.Generator | None,
        best: Tensor, fooled_out: Tensor, grads: Tensor,
    ) -> None:
        """One restart on the working set; writes results into ``best``/``fooled_out``/``grads``.

        The working tensors hold only points still attacked. A point that is fooled is
        frozen at once (its iterate recorded, never overwritten); frozen points are dropped
        from the working set once they are a tenth of it, so compaction costs little.
        """
        loss_fn = LOSSES[self.loss]
        view = (-1,) + (1,) * (x0.dim() - 1)
        lo, hi = bounds
        linf = self.norm == "linf"
        alpha = self.step_size(eps)
        lower = (x0 - eps).clamp_(min=lo) if linf else x0
        upper = (x0 + eps).clamp_(max=hi) if linf else x0
        cur = random_start(x0, self.norm, eps, bounds, generator) if self.random_start else x0.clone()
        done = torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device)  # fooled, frozen
        moving: Tensor | None = None  # 1 for points still moving, 0 for frozen ones
        spent = 0  # every point of the working set has taken the same number of steps
        state: dict[str, Tensor] = {}

        def flush(mask: Tensor | None) -> None:
            p = pos if mask is None else pos[mask]
            sel = slice(None) if mask is None else mask
            best[p] = cur[sel]
            fooled_out[p] |= done[sel]
            grads[p] += spent

        for step in range(self.steps + 1):
            if step < self.steps:
                _, grad, logits = input_gradient(model, cur, lambda z, y=y, t=t: loss_fn(z, y, t))
                spent += 1
            else:  # the final iterate only needs a forward pass
                with torch.inference_mode():
                    logits = model(cur)
            fooled = is_adversarial(logits, y, t) & ~done
            if step == self.steps:
                done |= fooled
                break
            if not self.last_iterate and bool(fooled.any()):
                done |= fooled
                moving = (~done).to(cur.dtype).view(view)
                n_done = int(done.sum())
                if self.early_stop and n_done == done.numel():
                    break
                if self.early_stop and n_done * 10 >= done.numel():  # drop the frozen points
                    flush(done)
                    keep = ~done
                    pos, x0, y, cur, grad = pos[keep], x0[keep], y[keep], cur[keep], grad[keep]
                    lower, upper = lower[keep], upper[keep]
                    t = None if t is None else t[keep]
                    state = {k: v[keep] for k, v in state.items()}
                    done, moving = done[keep], None
            direction = self._direction(grad, state)
            if moving is not None:  # a fooled point keeps its first fooling iterate
                direction = direction * moving
            moved = cur + alpha * direction
            if linf:
                cur = torch.minimum(torch.maximum(moved, lower), upper)
            else:
                cur = (x0 + project(moved - x0, self.norm, eps)).clamp_(lo, hi)
        flush(None)
