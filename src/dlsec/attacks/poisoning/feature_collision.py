"""Clean-label feature collision ("Poison Frogs"): poisons that look like the base class
but sit on a target test sample in feature space. Labels are left untouched.

Threat model: white-box on the feature extractor (e.g. a public pre-trained network the
victim fine-tunes); the attacker adds a few correctly labelled images to the training
set. Each poison ``p`` starts from a base image ``b`` of class ``base_label`` and solves

    min_p ||f(p) - f(t)||^2 + beta * ||p - b||^2

by forward-backward splitting (a gradient step on the feature term, then the proximal
step of the image term, ``p = (p + lr * beta * b) / (1 + lr * beta)``), halving a poison's
step whenever its objective rises (and undoing that step). ``f`` is the input of the last
linear layer. When the victim retrains the last layer on the poisoned set, the target
``t`` is classified as ``base_label``. Reference: Shafahi et al., "Poison Frogs! Targeted
Clean-Label Poisoning Attacks on Neural Networks" (NeurIPS 2018); defaults follow the
paper: ``beta = 0.25 * F^2 / D^2`` (F feature size, D input size); ``opacity`` blends
the target into the bases ("watermarking", 0.3 in the paper's end-to-end experiments).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dlsec.attacks.poisoning._base import PoisonError, PoisonResult, predictions
from dlsec.models import penultimate, penultimate_features


def nearest_bases(
    model: nn.Module, x: Tensor, y: Tensor, *, target_x: Tensor, base_label: int, n: int
) -> Tensor:
    """The ``n`` training images of ``base_label`` closest to the target in feature space."""
    cand = torch.nonzero(y == base_label).flatten()
    if cand.numel() == 0:
        raise PoisonError(f"no training sample of class {base_label} to use as a base")
    feats = penultimate_features(model, x[cand])
    ft = penultimate_features(model, target_x[None])
    dist = (feats - ft).pow(2).sum(1)
    order = torch.sort(dist.cpu(), stable=True).indices[: min(n, cand.numel())]
    return cand[order.to(cand.device)]


def craft_collisions(model: nn.Module, target_x: Tensor, base_x: Tensor, *,
                     bounds: tuple[float, float], beta: float | None = None, steps: int = 200,
                     lr: float = 0.1, opacity: float = 0.0) -> Tensor:
    """Poison images, one per base, colliding with ``target_x`` in feature space."""
    if not 0.0 <= opacity < 1.0:
        raise PoisonError(f"opacity must be in [0, 1), got {opacity}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    base = base_x.to(device)
    base = (1.0 - opacity) * base + opacity * target_x.to(device)[None]
    with torch.no_grad():
        f_target = penultimate(model, target_x.to(device)[None]).detach()
    if beta is None:
        beta = 0.25 * (f_target.shape[1] ** 2) / (base[0].numel() ** 2)
    lo, hi = bounds
    step = torch.full((base.shape[0],), float(lr), device=device)
    view = (-1,) + (1,) * (base.dim() - 1)

    def objective(p: Tensor) -> tuple[Tensor, Tensor]:
        feat = (penultimate(model, p) - f_target).pow(2).sum(1)
        return feat, feat + beta * (p - base).flatten(1).pow(2).sum(1)

    p = base.clone()
    with torch.no_grad():
        best = objective(p)[1]
    for _ in range(steps):
        p_req = p.detach().requires_grad_(True)
        feat_loss, _ = objective(p_req)
        (grad,) = torch.autograd.grad(feat_loss.sum(), p_req)
        lam = step.view(view)
        forward = p - lam * grad
        cand = ((forward + lam * beta * base) / (1.0 + lam * beta)).clamp(lo, hi)
        with torch.no_grad():
            obj = objective(cand)[1]
        better = obj <= best
        p = torch.where(better.view(view), cand, p)
        best = torch.where(better, obj, best)
        step = torch.where(better, step, step * 0.5)
    model.train(was_training)
    return p.detach()


def feature_collision(x: Tensor, y: Tensor, *, model: nn.Module, target_x: Tensor, base_label: int,
                      bounds: tuple[float, float], base_x: Tensor | None = None, n_poisons: int = 5,
                      beta: float | None = None, steps: int = 200, lr: float = 0.1,
                      opacity: float = 0.0) -> PoisonResult:
    """Append clean-label poisons (labelled ``base_label``) that collide with ``target_x``.

    Args:
        x, y: the clean training set (kept as the first ``N`` rows).
        model: the feature extractor the victim is assumed to fine-tune.
        target_x: one test input (``C x H x W``) the attacker wants sent to ``base_label``.
        base_label: the class of the bases and of the poisons' (correct-looking) label.
        bounds: the input bounds.
        base_x: the base images; default the ``n_poisons`` training images of
            ``base_label`` closest to the target in feature space.
        n_poisons, beta, steps, lr, opacity: see :func:`craft_collisions` (deterministic).
    """
    base_idx: list[int] | None = None
    if base_x is None:
        idx = nearest_bases(model, x, y, target_x=target_x, base_label=base_label, n=n_poisons)
        base_x, base_idx = x[idx], idx.tolist()
    poisons = craft_collisions(
        model, target_x, base_x, bounds=bounds, beta=beta, steps=steps, lr=lr, opacity=opacity
    ).to(x.device)
    n_new = poisons.shape[0]
    labels = torch.full((n_new,), base_label, dtype=y.dtype, device=y.device)
    target_cpu = target_x.detach().clone()

    def success(victim: nn.Module, x_test: Tensor, y_test: Tensor) -> float:
        return float(predictions(victim, target_cpu[None]).item() == base_label)

    mask = torch.cat([torch.zeros_like(y, dtype=torch.bool),
                      torch.ones(n_new, dtype=torch.bool, device=y.device)])
    return PoisonResult(
        x=torch.cat([x, poisons]), y=torch.cat([y, labels]), mask=mask,
        y_clean=torch.cat([y, labels]), attack="feature-collision",
        metadata={"base_label": base_label, "n_poisons": n_new, "beta": beta, "steps": steps,
                  "opacity": opacity, "base_indices": base_idx, "target_x": target_cpu},
        success=success,
    )
