"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"): APGD-CE, APGD-DLR and the targeted APGD-T.

Threat model: white-box, Linf or L2 ball of radius eps, inside the card's input bounds.

APGD is PGD without a step size to tune. It starts with ``eta = 2 eps``, adds momentum
(``alpha = 0.75``) and halves the step at checkpoints ``w_j = ceil(p_j N)`` with
``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` whenever

1. the loss increased in fewer than ``rho = 0.75`` of the steps since the last checkpoint,
   or
2. the step size was not halved at the last checkpoint and the best loss has not grown
   since it;

after halving, the iterate restarts from the best point found so far. The defaults are
AutoAttack's standard ones: 100 iterations, one restart, and for APGD-T nine target
classes (the highest clean logits other than the true one), each attacked with the
targeted DLR loss on the points still robust.

dlsec keeps for every point the first iterate that fools the model and stops computing
on it (its schedule and result are unchanged: points are independent); a point never
fooled returns its highest-loss iterate. Each iteration costs one forward+backward pass
(the final iterate only a forward pass).

Example:
    >>> res = APGD(loss="ce")(model, x, y, eps=[0.05, 0.1], card=card)   # doctest: +SKIP
    >>> res = APGDT()(model, x, y, eps=0.1, card=card)                    # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import torch
from torch import Tensor, nn

from dlsec.attacks.core import (
    AttackError,
    Norm,
    batch_view,
    ce_loss,
    dlr_loss,
    dlr_targeted_loss,
    input_gradient,
    is_adversarial,
    margin_loss,
    project,
    random_start,
    step_direction,
)
from dlsec.attacks.evasion._base import EvasionAttack, _BatchOutput
from dlsec.attacks.registry import register_attack

LOSSES = ("ce", "dlr")
LossFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def _ce(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    return ce_loss(logits, y)


def _dlr(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    return dlr_loss(logits, y)


def _ce_targeted(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    assert target is not None
    return -ce_loss(logits, target)  # ascend towards the target


def _dlr_targeted(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    assert target is not None
    return dlr_targeted_loss(logits, y, target)


def checkpoints(steps: int) -> list[int]:
    """The checkpoints ``w_j = ceil(p_j * steps)`` of the module docstring, in exact
    fractions (so 100 steps give 0, 22, 41, 57, 70, 80, 87, 93, 99)."""
    ps = [Fraction(0), Fraction(22, 100)]
    while True:
        nxt = ps[-1] + max(ps[-1] - ps[-2] - Fraction(3, 100), Fraction(6, 100))
        if nxt > 1:
            break
        ps.append(nxt)
    out: list[int] = []
    for p in ps:
        w = math.ceil(p * steps)
        if w <= steps and (not out or w > out[-1]):
            out.append(w)
    return out


def halving_rule(
    increases: Tensor, window: int, rho: float, halved_last: Tensor, best: Tensor,
    best_last: Tensor,
) -> Tensor:
    """Which points halve their step at a checkpoint: condition 1 or 2 of the module
    docstring (Croce & Hein 2020, section 3.1), over the ``window`` steps since the last."""
    cond1 = increases.to(best.dtype) < rho * window
    cond2 = ~halved_last & (best <= best_last)
    return cond1 | cond2


@register_attack("apgd")
class APGD(EvasionAttack):
    """Auto-PGD on the cross-entropy (``loss="ce"``) or DLR (``loss="dlr"``) loss.

    Called with ``targeted=True`` it ascends the targeted loss of the given target
    (``-CE(target)`` or the targeted DLR loss) and succeeds when the target is predicted.

    Args:
        norm: ``"linf"`` or ``"l2"``.
        loss: ``"ce"`` or ``"dlr"`` (DLR needs at least 3 classes, 4 when targeted).
        steps: iterations per restart (``N_iter``, default 100).
        restarts: independent runs from random starts; a later one attacks only the
            points the earlier ones did not fool.
        rho: the share of loss-increasing steps below which the step is halved.
        momentum: ``alpha``, the weight of the new gradient step (0.75).
        early_stop: stop computing on a point once it is fooled (same result, faster).
    """

    name = "apgd"

    def __init__(
        self, *, norm: Norm = "linf", loss: str = "ce", steps: int = 100, restarts: int = 1,
        rho: float = 0.75, momentum: float = 0.75, early_stop: bool = True,
    ) -> None:
        if norm not in ("linf", "l2"):
            raise AttackError(f"{self.name}: norm must be linf or l2, got {norm!r}")
        if loss not in LOSSES:
            raise AttackError(f"{self.name}: loss must be one of {', '.join(LOSSES)}")
        if steps < 1 or restarts < 1:
            raise AttackError(f"{self.name}: steps and restarts must be >= 1")
        if not 0 < rho <= 1 or not 0 < momentum <= 1:
            raise AttackError(f"{self.name}: rho and momentum must be in (0, 1]")
        self.norm = norm
        self.loss = loss
        self.steps = steps
        self.restarts = restarts
        self.rho = rho
        self.momentum = momentum
        self.early_stop = early_stop
        self.name = f"apgd-{loss}"

    # the loss ascended for one run ------------------------------------------------------------
    def _loss_fn(self, target: Tensor | None) -> LossFn:
        if target is None:
            return _ce if self.loss == "ce" else _dlr
        return _ce_targeted if self.loss == "ce" else _dlr_targeted

    def _check_classes(self, num_classes: int, targeted_loss: bool) -> None:
        need = 4 if targeted_loss else 3
        if self.loss == "dlr" and num_classes < need:
            kind = "targeted DLR" if targeted_loss else "DLR"
            raise AttackError(
                f"{self.name}: the {kind} loss needs at least {need} classes, the model has "
                f"{num_classes}; use loss='ce'"
            )

    def _attack(
        self, model: nn.Module, x: Tensor, y: Tensor, *, eps: float, target: Tensor | None,
        bounds: tuple[float, float], generator: torch.Generator | None,
    ) -> _BatchOutput:
        record = RunRecord(x)
        for _ in range(self.restarts):
            idx = torch.nonzero(~record.done).flatten()
            if idx.numel() == 0:
                break
            t = None if target is None else target[idx]
            adv, fooled, best, g = self.run(
                model, x[idx], y[idx], eps=eps, bounds=bounds, generator=generator,
                loss_target=t, success_target=t,
            )
            record.out[idx] = torch.where(batch_view(fooled, adv), adv, best)
            record.done[idx[fooled]] = True
            record.gradients[idx] += g
        return _BatchOutput(record.out, record.out, record.gradients, fooled=record.done)

    # one APGD run ----------------------------------------------------------------------------
    def run(
        self, model: nn.Module, x: Tensor, y: Tensor, *, eps: float,
        bounds: tuple[float, float], generator: torch.Generator | None = None,
        loss_target: Tensor | None = None, success_target: Tensor | None = None,
        trace: list[Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Run APGD once on a batch.

        Returns ``(first fooling iterate, fooled mask, highest-loss iterate, gradients)``;
        the first entry equals ``x`` where the point was not fooled. ``loss_target``
        selects the targeted loss; ``success_target`` the targeted success criterion
        (``None``: any misclassification). ``trace``, if given, receives after every
        iteration the step sizes of the points still attacked (for inspection and tests).
        """
        n = x.shape[0]
        dev, dt = x.device, x.dtype
        loss_fn = self._loss_fn(loss_target)
        adv_out = x.clone()
        best_out = x.clone()
        fooled_out = torch.zeros(n, dtype=torch.bool, device=dev)
        grads_out = torch.zeros(n, dtype=torch.int64, device=dev)
        if n == 0 or eps <= 0:
            return adv_out, fooled_out, best_out, grads_out
        with torch.inference_mode():
            num_classes = model(x[:1]).shape[1]
        self._check_classes(num_classes, loss_target is not None)

        ckpts = set(checkpoints(self.steps)[1:])
        # per-point state, compacted as points are fooled
        pos = torch.arange(n, device=dev)  # index into the batch
        x0, yy = x, y
        tl, ts = loss_target, success_target
        cur = random_start(x, self.norm, eps, bounds, generator)
        prev = cur.clone()
        grad = torch.zeros_like(x)
        loss_cur = torch.zeros(n, device=dev, dtype=dt)
        x_best, loss_best, grad_best = cur.clone(), loss_cur.clone(), grad.clone()
        eta = torch.full((n,), 2.0 * eps, device=dev, dtype=dt)
        n_up = torch.zeros(n, device=dev, dtype=torch.int64)  # loss increases since checkpoint
        best_at_ckpt = loss_cur.clone()
        halved_at_ckpt = torch.zeros(n, dtype=torch.bool, device=dev)
        last_ckpt = 0

        for k in range(self.steps + 1):
            if k < self.steps:
                loss, g, logits = input_gradient(model, cur, lambda z, a=yy, b=tl: loss_fn(z, a, b))
                grads_out[pos] += 1
            else:  # the last iterate needs only a forward pass
                with torch.inference_mode():
                    logits = model(cur)
                    loss = loss_fn(logits, yy, tl)
                g = grad
            fooled = is_adversarial(logits, yy, ts)
            if bool(fooled.any()):
                adv_out[pos[fooled]] = cur[fooled]
                fooled_out[pos[fooled]] = True

            # best point and step bookkeeping
            if k == 0:
                x_best, loss_best, grad_best = cur.clone(), loss.clone(), g.clone()
                best_at_ckpt = loss.clone()
            else:
                n_up += (loss > loss_cur).to(torch.int64)
                better = loss > loss_best
                x_best = torch.where(batch_view(better, cur), cur, x_best)
                grad_best = torch.where(batch_view(better, g), g, grad_best)
                loss_best = torch.where(better, loss, loss_best)
            loss_cur, grad = loss, g

            if k in ckpts:
                halve = halving_rule(
                    n_up, k - last_ckpt, self.rho, halved_at_ckpt, loss_best, best_at_ckpt
                )
                eta = torch.where(halve, eta / 2, eta)
                hv = batch_view(halve, cur)
                cur = torch.where(hv, x_best, cur)
                grad = torch.where(hv, grad_best, grad)
                loss_cur = torch.where(halve, loss_best, loss_cur)
                halved_at_ckpt, best_at_ckpt = halve, loss_best.clone()
                n_up = torch.zeros_like(n_up)
                last_ckpt = k
            if trace is not None:
                trace.append(eta.clone())
            if k == self.steps:
                break

            if self.early_stop and bool(fooled.any()):
                keep = ~fooled
                best_out[pos[fooled]] = x_best[fooled]
                if not bool(keep.any()):
                    return adv_out, fooled_out, best_out, grads_out
                pos, x0, yy = pos[keep], x0[keep], yy[keep]
                tl = None if tl is None else tl[keep]
                ts = None if ts is None else ts[keep]
                cur, prev, grad = cur[keep], prev[keep], grad[keep]
                loss_cur, x_best, loss_best = loss_cur[keep], x_best[keep], loss_best[keep]
                grad_best, eta, n_up = grad_best[keep], eta[keep], n_up[keep]
                best_at_ckpt, halved_at_ckpt = best_at_ckpt[keep], halved_at_ckpt[keep]

            # the step: z = P(x_k + eta d); x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))
            e = batch_view(eta, cur)
            z = self._proj(cur + e * step_direction(grad, self.norm), x0, eps, bounds)
            if k > 0:
                a = self.momentum
                z = self._proj(cur + a * (z - cur) + (1 - a) * (cur - prev), x0, eps, bounds)
            prev, cur = cur, z
        best_out[pos] = x_best
        return adv_out, fooled_out, best_out, grads_out

    def _proj(self, xa: Tensor, x0: Tensor, eps: float, bounds: tuple[float, float]) -> Tensor:
        return (x0 + project(xa - x0, self.norm, eps)).clamp(*bounds)


@register_attack("apgd-t")
class APGDT(APGD):
    """Targeted APGD (APGD-T): the targeted DLR loss against each of the ``n_targets``
    classes with the highest clean logits other than the true one, one after another,
    on the points still robust. Success is any misclassification (it is an untargeted
    attack that uses targets as a search strategy). A point never fooled returns, of its
    runs' highest-loss iterates, the one with the highest untargeted DLR loss (the
    nearest the decision boundary it came).

    Called with ``targeted=True`` (a given, random or least-likely target) it attacks
    that single target and succeeds only when it is predicted.

    Args:
        n_targets: target classes tried per point (AutoAttack standard: 9).
        loss: ``"dlr"`` (the targeted DLR loss, default) or ``"ce"``.
        Others as :class:`APGD`.
    """

    def __init__(
        self, *, norm: Norm = "linf", loss: str = "dlr", steps: int = 100, restarts: int = 1,
        n_targets: int = 9, rho: float = 0.75, momentum: float = 0.75, early_stop: bool = True,
    ) -> None:
        super().__init__(
            norm=norm, loss=loss, steps=steps, restarts=restarts, rho=rho, momentum=momentum,
            early_stop=early_stop,
        )
        if n_targets < 1:
            raise AttackError(f"{self.name}: n_targets must be >= 1")
        self.n_targets = n_targets
        self.name = "apgd-t"

    def _attack(
        self, model: nn.Module, x: Tensor, y: Tensor, *, eps: float, target: Tensor | None,
        bounds: tuple[float, float], generator: torch.Generator | None,
    ) -> _BatchOutput:
        if target is not None:  # a targeted call: one given target per point
            return super()._attack(
                model, x, y, eps=eps, target=target, bounds=bounds, generator=generator
            )
        with torch.inference_mode():
            order = model(x).argsort(dim=1, descending=True)
        n_cls = order.shape[1]
        self._check_classes(n_cls, True)
        record = RunRecord(x)
        for rank in range(1, min(self.n_targets, n_cls - 1) + 1):
            for _ in range(self.restarts):
                idx = torch.nonzero(~record.done).flatten()
                if idx.numel() == 0:
                    break
                adv, fooled, best, g = self.run(
                    model, x[idx], y[idx], eps=eps, bounds=bounds, generator=generator,
                    loss_target=order[idx, rank],
                )
                record.add(model, y, idx, adv, fooled, best, g)
        return _BatchOutput(record.out, record.out, record.gradients, fooled=record.done)


class RunRecord:
    """The outcome per point of several APGD runs on a batch: its first fooling iterate
    (``out`` where ``done``), else the best iterate of any run by untargeted DLR loss
    (``score``: the nearest the decision boundary it came), and the gradients spent."""

    def __init__(self, x: Tensor) -> None:
        n = x.shape[0]
        self.out = x.clone()
        self.done = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.gradients = torch.zeros(n, dtype=torch.int64, device=x.device)
        self.score = torch.full((n,), -math.inf, dtype=x.dtype, device=x.device)

    def add(
        self, model: nn.Module, y: Tensor, pt: Tensor, adv: Tensor, fooled: Tensor, best: Tensor,
        gradients: Tensor,
    ) -> None:
        """Record runs on the points ``pt`` (indices into the batch; a point may appear
        more than once, for copies run side by side): :meth:`APGD.run`'s outputs."""
        self.gradients.index_add_(0, pt, gradients)
        if bool(fooled.any()):
            first = first_row_per_value(pt[fooled])
            hit = pt[fooled][first]
            self.done[hit] = True
            self.out[hit] = adv[fooled][first]
        keep = ~fooled & ~self.done[pt]
        if not bool(keep.any()):
            return
        with torch.inference_mode():
            s = nearness(model(best[keep]), y[pt[keep]])
        by_score = s.argsort(descending=True, stable=True)
        rows = by_score[first_row_per_value(pt[keep][by_score])]
        j = pt[keep][rows]
        better = s[rows] > self.score[j]
        self.out[j[better]] = best[keep][rows][better]
        self.score[j[better]] = s[rows][better]


def nearness(logits: Tensor, y: Tensor) -> Tensor:
    """How near the decision boundary each point is: the untargeted DLR loss (shift and
    scale invariant; the logit margin below 3 classes), ``-inf`` where not finite."""
    score = dlr_loss(logits, y) if logits.shape[1] >= 3 else margin_loss(logits, y)
    return torch.nan_to_num(score, nan=-math.inf, posinf=-math.inf)


def first_row_per_value(values: Tensor) -> Tensor:
    """The index of the first occurrence of each distinct entry of ``values``."""
    uniq, inverse = torch.unique(values, return_inverse=True)
    pos = torch.arange(values.numel(), device=values.device)
    first = torch.full((uniq.numel(),), values.numel(), dtype=pos.dtype, device=values.device)
    return first.scatter_reduce(0, inverse, pos, reduce="amin")
