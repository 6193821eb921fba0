"""The white-box result type and the driver that runs one attack over a list of epsilons.

The geometry, losses and targets every attack family shares live in :mod:`dlsec.attacks.core`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dlsec.attacks.core import (
    AttackError,
    Norm,
    TargetSpec,
    card_bounds,
    choose_targets,
    is_adversarial,
    lp_norms,
    module_mode,
    project,
)
from dlsec.models import CardLike

__all__ = ["AttackError", "EvasionAttack", "EvasionResult", "Norm"]


# -- results -------------------------------------------------------------------------------------
@dataclass
class EvasionResult:
    """One attack over K epsilons and N samples.

    ``x_adv`` holds the adversarials clipped to each epsilon ball and to the bounds
    (``K x N x ...``); ``x_adv_raw`` what the attack produced before that clipping (for
    bounded attacks the two are equal; for minimum-norm attacks the raw one may lie
    outside the ball). ``success[k, n]`` says whether ``x_adv[k, n]`` fools the model
    (a point the model already misclassifies counts as fooled, with zero perturbation).
    ``gradients[k, n]`` counts the forward+backward passes spent on sample n at eps k
    (0 where a smaller epsilon's adversarial was reused).
    """

    attack: str
    norm: str
    targeted: bool
    eps: list[float]
    x_adv: Tensor
    x_adv_raw: Tensor
    success: Tensor
    norms: Tensor
    gradients: Tensor
    clean_correct: Tensor
    targets: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def robust_accuracy(self) -> list[float]:
        """Per epsilon, the share of samples still classified correctly (untargeted view)."""
        if self.targeted:
            return [float((self.clean_correct & ~s).double().mean()) for s in self.success]
        return [float((~s).double().mean()) for s in self.success]

    @property
    def success_rate(self) -> list[float]:
        return [float(s.double().mean()) for s in self.success]

    def summary(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "norm": self.norm,
            "targeted": self.targeted,
            "eps": self.eps,
            "clean_accuracy": float(self.clean_correct.double().mean()),
            "robust_accuracy": self.robust_accuracy,
            "success_rate": self.success_rate,
            "median_norm": [
                float(n[s].median()) if bool(s.any()) else None
                for n, s in zip(self.norms, self.success, strict=True)
            ],
            "gradients": [int(g.sum()) for g in self.gradients],
        }


@dataclass
class _BatchOutput:
    """What ``_attack`` returns for a batch. ``fooled`` (optional) is whether ``x_adv``
    fools the model, when the attack already knows it; the driver then skips re-checking."""

    x_adv_raw: Tensor
    x_adv: Tensor
    gradients: Tensor
    fooled: Tensor | None = None


class EvasionAttack(abc.ABC):
    """Base of the white-box evasion attacks.

    Subclasses implement :meth:`_attack` for one epsilon on a batch of points that are
    still robust. :meth:`__call__` handles the rest: bounds from the card, targets, a
    list of epsilons in one call (from the largest down: a point a larger ball cannot fool
    is not attacked in the smaller ones, and a point fooled in a larger ball is first tried
    with its adversarial projected onto the smaller one; see :meth:`_sweep_bounded`),
    batching, and the final success check.

    Minimum-norm attacks (``minimal = True``, e.g. C&W, DeepFool) run once without an
    epsilon; their raw adversarial is then projected onto each epsilon ball.
    """

    name: str = "attack"
    norm: Norm = "linf"
    minimal: bool = False
    last_iterate: bool = False  # attack every point, even one misclassified to begin with

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, eps: float | Sequence[float] = (),
        targeted: bool = False, target: TargetSpec = "random",
        bounds: tuple[float, float] | None = None, card: CardLike | None = None,
        generator: torch.Generator | None = None, batch_size: int = 1024, reuse: bool = True,
    ) -> EvasionResult:
        bnd = card_bounds(bounds, card)
        eps_list = [float(e) for e in ([eps] if isinstance(eps, int | float) else eps)]
        if self.minimal and not eps_list:
            eps_list = [math.inf]
        if not eps_list or any(e < 0 or math.isnan(e) for e in eps_list):
            raise AttackError(f"eps must be one or more numbers >= 0, got {eps!r}")
        device = next(model.parameters()).device
        x, y = x.to(device), y.to(device)
        n, k = x.shape[0], len(eps_list)
        with module_mode(model, training=False):
            with torch.inference_mode():
                clean_logits = torch.cat(
                    [model(x[i : i + batch_size]) for i in range(0, n, batch_size)]
                )
            clean_correct = clean_logits.argmax(1) == y
            targets = (
                choose_targets(clean_logits, y, target, generator=generator) if targeted else None
            )
            x_adv = x.unsqueeze(0).repeat(k, *([1] * x.dim()))
            success = torch.zeros(k, n, dtype=torch.bool, device=x.device)
            grads = torch.zeros(k, n, dtype=torch.int64, device=x.device)
            already = is_adversarial(clean_logits, y, targets)  # fooled with no perturbation
            if self.last_iterate:  # every point takes every step; its final iterate is the answer
                already = torch.zeros_like(already)
            args = (model, x, y, eps_list, targets, bnd, generator, batch_size, already, x_adv)
            if self.minimal:
                x_raw = self._sweep_minimal(*args, success, grads)
            else:  # bounded attacks: raw and clipped adversarials are the same
                self._sweep_bounded(*args, success, grads, reuse=reuse)
                x_raw = x_adv.clone()
        norms = torch.stack([lp_norms(x_adv[i] - x, self.norm) for i in range(k)])
        return EvasionResult(
            attack=self.name, norm=self.norm, targeted=targeted, eps=eps_list, x_adv=x_adv,
            x_adv_raw=x_raw, success=success, norms=norms, gradients=grads,
            clean_correct=clean_correct, targets=targets,
        )

    def _sweep_bounded(
        self, model: nn.Module, x: Tensor, y: Tensor, eps_list: list[float],
        targets: Tensor | None, bounds: tuple[float, float], generator: torch.Generator | None,
        batch_size: int, already: Tensor, x_adv: Tensor, success: Tensor, grads: Tensor, *,
        reuse: bool,
    ) -> None:
        """An epsilon sweep that spends at most one full attack per point on a robust verdict.

        (With ``reuse=False`` every epsilon is attacked independently, on every point.)

        Epsilons are taken from the largest down. A point the attack cannot fool at some
        epsilon is not attacked at the smaller ones (a smaller ball holds no adversarial a
        larger one lacks, so the verdict carries over). A point fooled at a larger epsilon
        is first tried, for free, with its adversarial projected onto the smaller ball; only
        if that fails is it attacked there. Fooling takes few steps and an unfooled point
        takes them all, so the sweep costs about one fixed-step attack plus cheap verdicts,
        instead of one fixed-step attack per epsilon.
        """
        order = sorted(range(len(eps_list)), key=lambda i: -eps_list[i])
        robust = torch.zeros_like(already)  # not fooled at a larger epsilon
        prev: int | None = None
        for ki in order:
            e = eps_list[ki]
            success[ki] = already
            todo = ~already & ~robust
            if reuse and prev is not None and bool(todo.any()):
                delta = project(x_adv[prev][todo] - x[todo], self.norm, e)
                x_adv[ki][todo] = (x[todo] + delta).clamp(*bounds)
                self._mark(model, x_adv[ki], y, targets, todo, None, success[ki], batch_size)
                todo = todo & ~success[ki]
            if e > 0 and bool(todo.any()):
                adv, g, fooled = self._run_batches(
                    model, x, y, e, targets, bounds, generator, batch_size, todo
                )
                x_adv[ki][todo] = adv[todo]
                grads[ki] = g
                self._mark(model, x_adv[ki], y, targets, todo, fooled, success[ki], batch_size)
            if reuse:
                robust |= todo & ~success[ki]
                x_adv[ki][robust & ~todo] = x[robust & ~todo]
            prev = ki

    def _sweep_minimal(
        self, model: nn.Module, x: Tensor, y: Tensor, eps_list: list[float],
        targets: Tensor | None, bounds: tuple[float, float], generator: torch.Generator | None,
        batch_size: int, already: Tensor, x_adv: Tensor, success: Tensor, grads: Tensor,
    ) -> Tensor:
        """Minimum-norm attacks run once; their adversarial is projected onto each ball.
        Returns the raw adversarials."""
        x_raw = x_adv.clone()
        todo = ~already
        raw, g, _ = self._run_batches(
            model, x, y, math.inf, targets, bounds, generator, batch_size, todo
        )
        grads[0] = g
        for ki, e in enumerate(eps_list):
            success[ki] = already
            x_raw[ki][todo] = raw[todo]
            delta = raw[todo] - x[todo]
            if math.isfinite(e):
                delta = project(delta, self.norm, e)
            x_adv[ki][todo] = (x[todo] + delta).clamp(*bounds)
            self._mark(model, x_adv[ki], y, targets, todo, None, success[ki], batch_size)
        return x_raw

    @staticmethod
    def _mark(
        model: nn.Module, x_adv: Tensor, y: Tensor, targets: Tensor | None, todo: Tensor,
        fooled: Tensor | None, success: Tensor, batch_size: int,
    ) -> None:
        """Set ``success`` for the ``todo`` points: from the attack's own verdict when it gave
        one, else with one forward pass."""
        if fooled is not None:
            success |= fooled & todo
            return
        idx = torch.nonzero(todo).flatten()
        with torch.inference_mode():
            for i in range(0, idx.numel(), batch_size):
                b = idx[i : i + batch_size]
                t = None if targets is None else targets[b]
                success[b] = is_adversarial(model(x_adv[b]), y[b], t)

    def _run_batches(
        self, model: nn.Module, x: Tensor, y: Tensor, eps: float, targets: Tensor | None,
        bounds: tuple[float, float], generator: torch.Generator | None, batch_size: int,
        mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Attack the points in ``mask`` batch by batch: (adversarials, gradients, fooled)."""
        out = x.clone()
        grads = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        fooled: Tensor | None = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        idx = torch.nonzero(mask).flatten()
        for i in range(0, idx.numel(), batch_size):
            b = idx[i : i + batch_size]
            res = self._attack(
                model, x[b], y[b], eps=eps, target=None if targets is None else targets[b],
                bounds=bounds, generator=generator,
            )
            out[b] = res.x_adv
            grads[b] = res.gradients
            if res.fooled is None or fooled is None:
                fooled = None
            else:
                fooled[b] = res.fooled
        return out, grads, fooled

    @abc.abstractmethod
    def _attack(
        self, model: nn.Module, x: Tensor, y: Tensor, *, eps: float, target: Tensor | None,
        bounds: tuple[float, float], generator: torch.Generator | None,
    ) -> _BatchOutput:
        """Attack one batch at one epsilon; return adversarials inside the ball and bounds."""
