"""What every attack family shares: the one ``Norm`` type, norm balls (projection, the
steepest-ascent step, a random start), per-sample losses, target choice, input gradients
and :class:`AttackError`.

Attacks work in input space: the model takes raw inputs within the card's ``bounds`` and
normalizes inside (see :class:`dlsec.models.Normalized`), so epsilon and clipping are
always in the units the threat model states. Nothing assumes [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlsec.errors import DlsecError
from dlsec.threat import Norm

if TYPE_CHECKING:
    from dlsec.models import CardLike

__all__ = [
    "AttackError",
    "Norm",
    "TargetSpec",
    "batch_view",
    "card_bounds",
    "ce_loss",
    "choose_targets",
    "dlr_loss",
    "dlr_targeted_loss",
    "input_gradient",
    "is_adversarial",
    "lp_norms",
    "margin_loss",
    "module_mode",
    "project",
    "random_start",
    "step_direction",
]

TargetSpec = Literal["random", "least-likely"] | Tensor | int | None


class AttackError(DlsecError):
    """Bad attack settings."""


def card_bounds(bounds: tuple[float, float] | None, card: CardLike | None) -> tuple[float, float]:
    """``bounds`` as floats, else the card's; :class:`AttackError` when neither is given."""
    if bounds is None:
        if card is None:
            raise AttackError("pass bounds=(low, high) or card= (the model card's bounds)")
        bounds = card.bounds
    return float(bounds[0]), float(bounds[1])


@contextmanager
def module_mode(model: nn.Module, *, training: bool) -> Iterator[nn.Module]:
    """Put ``model`` in train or eval mode for a block, then restore its mode."""
    was_training = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(was_training)


# -- geometry ----------------------------------------------------------------------------------
def batch_view(v: Tensor, like: Tensor) -> Tensor:
    """``v`` (one value per sample) shaped to broadcast against the batch ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def lp_norms(delta: Tensor, norm: str) -> Tensor:
    """Per-sample norm of a batch of perturbations."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "l1":
        return flat.abs().sum(1)
    if norm == "l0":
        return (flat != 0).sum(1).to(delta.dtype)
    raise AttackError(f"unknown norm {norm!r}")


def project(delta: Tensor, norm: str, eps: float | Tensor) -> Tensor:
    """Project perturbations onto the ``norm`` ball of radius ``eps`` (scalar or per sample)."""
    if norm == "linf":
        if isinstance(eps, Tensor):
            e = batch_view(eps, delta)
            return torch.maximum(torch.minimum(delta, e), -e)
        return delta.clamp(-eps, eps)
    if norm == "l2":
        n = batch_view(lp_norms(delta, "l2"), delta)
        radius: Tensor | float = batch_view(eps, delta) if isinstance(eps, Tensor) else eps
        factor = torch.clamp(radius / n.clamp_min(1e-12), max=1.0)
        return delta * factor
    raise AttackError(f"projection onto {norm!r} balls is not supported")


def step_direction(grad: Tensor, norm: str) -> Tensor:
    """The steepest-ascent direction of unit ``norm`` for a gradient (sign for Linf)."""
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        return grad / batch_view(lp_norms(grad, "l2").clamp_min(1e-12), grad)
    raise AttackError(f"unknown norm {norm!r}")


def random_start(
    x: Tensor, norm: str, eps: float, bounds: tuple[float, float], generator: torch.Generator | None
) -> Tensor:
    """A uniformly random point of the eps ball around ``x`` (clipped to bounds)."""
    shape = x.shape
    if norm == "linf":
        u = torch.rand(shape, generator=generator, device="cpu").to(x.device, x.dtype)
        delta = (2 * u - 1) * eps
    elif norm == "l2":
        d = math.prod(shape[1:])
        g = torch.randn(shape, generator=generator, device="cpu").to(x.device, x.dtype)
        r = torch.rand(shape[0], generator=generator, device="cpu").to(x.device, x.dtype)
        delta = step_direction(g, "l2") * batch_view(r.pow(1.0 / d) * eps, x)
    else:
        raise AttackError(f"unknown norm {norm!r}")
    return (x + delta).clamp(*bounds)


# -- losses (per sample; larger is better for the attacker) ---------------------------------------
def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020), untargeted; shift and scale invariant."""
    srt = logits.sort(dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    top_is_y = (srt[:, -1] == z_y).to(logits.dtype)
    z_other = srt[:, -2] * top_is_y + srt[:, -1] * (1 - top_is_y)
    return -(z_y - z_other) / (srt[:, -1] - srt[:, -3] + 1e-12)


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR (Croce & Hein 2020): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)."""
    srt = logits.sort(dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + 1e-12)


def margin_loss(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Best other logit minus the true logit (untargeted), or target minus best other."""
    if target is not None:
        z_t = logits.gather(1, target[:, None]).squeeze(1)
        other = logits.scatter(1, target[:, None], -math.inf).amax(1)
        return z_t - other
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -math.inf).amax(1)
    return other - z_y


def is_adversarial(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Untargeted: the prediction differs from ``y``; targeted: it equals ``target``."""
    pred = logits.argmax(1)
    return pred == target if target is not None else pred != y


def choose_targets(
    logits: Tensor, y: Tensor, spec: TargetSpec, *, generator: torch.Generator | None = None
) -> Tensor:
    """Target labels: ``random`` (uniform over classes other than y), ``least-likely``
    (lowest clean logit), one class for all, or a tensor given per sample."""
    n, k = logits.shape
    if isinstance(spec, Tensor):
        t = spec.to(y.device, torch.int64).flatten()
        if t.numel() == 1:
            t = t.expand(n).clone()
        if t.numel() != n:
            raise AttackError(f"got {t.numel()} targets for {n} inputs")
    elif isinstance(spec, int) and not isinstance(spec, bool):
        t = torch.full_like(y, spec)
    elif spec == "least-likely":
        t = logits.argmin(1)
    elif spec == "random" or spec is None:
        shift = torch.randint(1, k, (n,), generator=generator, device="cpu").to(y.device)
        t = (y + shift) % k
    else:
        raise AttackError(f"unknown target {spec!r} (random, least-likely, a class or a tensor)")
    if int(t.min()) < 0 or int(t.max()) >= k:
        raise AttackError(f"target classes must be in 0..{k - 1}")
    return t


def input_gradient(
    model: nn.Module, x: Tensor, loss: Callable[..., Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """One forward and one backward: ``(per-sample loss, d loss / d x, logits)``.

    ``loss`` is a callable ``logits -> per-sample loss``. Only the input gradient is
    computed (parameter gradients are not accumulated).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        values = loss(logits)
        (grad,) = torch.autograd.grad(values.sum(), x)
    return values.detach(), grad.detach(), logits.detach()
