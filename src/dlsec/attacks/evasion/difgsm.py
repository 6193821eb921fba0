"""Diverse-inputs momentum FGSM (Xie, Zhang, Zhou, Bai, Wang, Ren & Yuille 2019, "Improving
Transferability of Adversarial Examples with Input Diversity", CVPR).

Threat model: white-box on the model attacked (usually a *surrogate*, the adversarials
being meant to transfer to another model), untargeted or targeted, Linf or L2.

MI-FGSM (:class:`dlsec.attacks.evasion.mifgsm.MIFGSM`) whose gradient, at every step, is
taken through a random input transform applied with probability ``diversity_prob``: the
batch is resized to a random smaller size and zero-padded back to its size at a random
offset. The perturbation is still applied to, and projected around, the untransformed
input; only the gradient sees the transform, so the adversarial does not overfit the one
model it is crafted on. With ``decay=0`` this is the paper's DI²-FGSM, with momentum
(``decay=1``, the default) its M-DI²-FGSM; ``diversity_prob=0`` is MI-FGSM exactly.

Transform: the reference code enlarges 299-pixel images to a random size below 330 and pads
to 330, feeding the network a larger input. Our models need a fixed input size (SimpleNet
is an MLP on 8x8 digits), so the image is resized **down** to a random height in
``[round(resize_rate * H), H]`` (the width in proportion; nearest-neighbour, as the
reference) and padded with ``pad_value`` (default 0, the paper's zero padding) back to
``H x W`` at a random offset. One transform is drawn per step for the whole batch, as in the
reference code. The draws come from the attack's ``generator`` (the global RNG without
one, like PGD's random start).

Success is judged on the untransformed input, at every step: a point is frozen (the PGD
loop's rule) when the iterate itself fools the model, not its transformed copy (a strong
transform alone can fool a small model). So a step that transforms also runs one forward
pass on the iterate and lifts its predicted class to the top of the transformed logits
(:func:`lift_to_top`). For a point not yet fooled (untargeted) that class is the true one
and the step is exactly the paper's. (Targeted, the raised class is not the target, so the
cross-entropy weights of the other classes shift a little on such steps.)

Defaults: ``diversity_prob=0.5`` (the paper's), ``resize_rate=0.9``, ``decay=1.0``, 10 steps
of size ``eps / steps``, no random start (MI-FGSM's).

Example:
    >>> res = DIFGSM(steps=10)(surrogate, x, y, eps=0.2, card=card,
    ...                        generator=torch.Generator().manual_seed(0))   # doctest: +SKIP
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlsec.attacks.core import AttackError, Norm
from dlsec.attacks.evasion._base import _BatchOutput
from dlsec.attacks.evasion.mifgsm import MIFGSM
from dlsec.attacks.registry import register_attack


def resize_pad(
    x: Tensor, *, size: tuple[int, int], top: int, left: int, pad_value: float = 0.0
) -> Tensor:
    """Nearest-neighbour resize of ``N x C x H x W`` images to ``size`` (at most ``H x W``),
    then pad with ``pad_value`` back to ``H x W``, the resized image's top-left corner at
    row ``top``, column ``left``. Differentiable in ``x``."""
    h, w = x.shape[-2:]
    rh, rw = size
    if not (1 <= rh <= h and 1 <= rw <= w and 0 <= top <= h - rh and 0 <= left <= w - rw):
        raise AttackError(f"bad resize/pad: size {size}, offset ({top}, {left}) for {h}x{w}")
    small = x if (rh, rw) == (h, w) else F.interpolate(x, size=(rh, rw), mode="nearest")
    return F.pad(small, [left, w - rw - left, top, h - rh - top], value=pad_value)


def draw_diversity(
    shape: tuple[int, ...] | torch.Size, *, resize_rate: float, diversity_prob: float,
    generator: torch.Generator | None = None,
) -> tuple[tuple[int, int], int, int] | None:
    """One random transform for images of ``shape`` (``... x H x W``): ``None`` (keep the
    input; probability ``1 - diversity_prob``) or ``((rh, rw), top, left)`` for
    :func:`resize_pad`. Draws, in order: the coin (only when ``0 < diversity_prob < 1``),
    the height, the top offset, the left offset."""
    if diversity_prob <= 0:
        return None
    dev = generator.device if generator is not None else torch.device("cpu")

    def randint(low: int, high: int) -> int:  # inclusive bounds
        return int(torch.randint(low, high + 1, (1,), generator=generator, device=dev))

    if diversity_prob < 1:
        coin = float(torch.rand((), generator=generator, device=dev))
        if coin >= diversity_prob:
            return None
    h, w = int(shape[-2]), int(shape[-1])
    rh = randint(min(max(round(resize_rate * h), 1), h), h)
    rw = min(max(round(rh * w / h), 1), w)
    return (rh, rw), randint(0, h - rh), randint(0, w - rw)


def lift_to_top(logits: Tensor, cls: Tensor, *, rel_gap: float = 1e-4) -> Tensor:
    """``logits`` with the logit of class ``cls[i]`` in row ``i`` raised, by a detached amount,
    just enough to be the row's strict maximum (rows where it already is are unchanged).

    For the cross-entropy or margin loss of label ``cls``, the input gradient keeps its
    direction: ``d CE / dx = sum_{k != y} p_k (dz_k - dz_y)``, and raising ``z_y`` alone
    scales every ``p_k`` (``k != y``) by the same factor.
    """
    col = cls.view(-1, 1)
    own = logits.gather(1, col)
    other = logits.scatter(1, col, -math.inf).amax(1, keepdim=True)
    gap = rel_gap * other.detach().abs().clamp_min(1.0)
    lift = (other - own + gap).clamp_min(0).detach()
    return logits.scatter_add(1, col, lift)


class _DiverseInputs(nn.Module):
    """``net`` whose gradient-taking forward passes (inputs that require grad) see a random
    transform, with the iterate's own predicted class lifted to the top of the transformed
    logits (so the loop's success verdicts are the untransformed input's); passes without
    a gradient (the final check) see the input itself."""

    def __init__(self, net: nn.Module, attack: DIFGSM, generator: torch.Generator | None) -> None:
        super().__init__()
        self.net = net
        self.attack = attack
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        if not x.requires_grad:
            return self.net(x)
        a = self.attack
        draw = draw_diversity(x.shape, resize_rate=a.resize_rate,
                              diversity_prob=a.diversity_prob, generator=self.generator)
        if draw is None:
            return self.net(x)
        size, top, left = draw
        with torch.no_grad():
            own = self.net(x).argmax(1)
        logits = self.net(resize_pad(x, size=size, top=top, left=left, pad_value=a.pad_value))
        return lift_to_top(logits, own)


@register_attack("difgsm")
class DIFGSM(MIFGSM):
    """MI-FGSM with input diversity (see the module docstring).

    Args:
        norm: ``"linf"`` (the paper's) or ``"l2"``.
        steps: gradient steps (default 10), each of size ``alpha`` (default ``eps / steps``).
        decay: momentum factor ``mu`` (1.0; 0 gives DI²-FGSM without momentum).
        diversity_prob: probability of transforming the input at a step (0.5).
        resize_rate: smallest resized height as a fraction of ``H`` (0.9).
        pad_value: the padding's value (0.0).
        random_start, loss, early_stop, last_iterate: as :class:`MIFGSM`.
    """

    name = "difgsm"

    def __init__(
        self, *, norm: Norm = "linf", steps: int = 10, decay: float = 1.0,
        alpha: float | None = None, diversity_prob: float = 0.5, resize_rate: float = 0.9,
        pad_value: float = 0.0, random_start: bool = False, loss: str = "ce",
        early_stop: bool = True, last_iterate: bool = False,
    ) -> None:
        super().__init__(
            norm=norm, steps=steps, decay=decay, alpha=alpha, random_start=random_start,
            loss=loss, early_stop=early_stop, last_iterate=last_iterate,
        )
        if not 0.0 <= diversity_prob <= 1.0:
            raise AttackError(
                f"{self.name}: diversity_prob must be in [0, 1], got {diversity_prob}"
            )
        if not 0.0 < resize_rate <= 1.0:
            raise AttackError(f"{self.name}: resize_rate must be in (0, 1], got {resize_rate}")
        if not math.isfinite(pad_value):
            raise AttackError(f"{self.name}: pad_value must be finite")
        self.diversity_prob = diversity_prob
        self.resize_rate = resize_rate
        self.pad_value = pad_value

    def _attack(
        self, model: nn.Module, x: Tensor, y: Tensor, *, eps: float, target: Tensor | None,
        bounds: tuple[float, float], generator: torch.Generator | None,
    ) -> _BatchOutput:
        if self.diversity_prob == 0:
            return super()._attack(model, x, y, eps=eps, target=target, bounds=bounds,
                                   generator=generator)
        if x.dim() != 4:
            raise AttackError(f"{self.name}: input diversity needs N x C x H x W images")
        return super()._attack(_DiverseInputs(model, self, generator), x, y, eps=eps,
                               target=target, bounds=bounds, generator=generator)


__all__ = ["DIFGSM", "draw_diversity", "lift_to_top", "resize_pad"]
