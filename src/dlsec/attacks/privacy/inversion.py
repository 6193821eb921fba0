"""Model inversion: MI-Face (Fredrikson, Jha, Ristenpart, CCS 2015), white- and black-box.

"Model Inversion Attacks that Exploit Confidence Information and Basic
Countermeasures": to reconstruct a representative input of class ``c``, descend the cost
``1 - f_c(x) + aux(x)`` (``f_c`` the model's confidence in ``c``) from a fixed start,
clipping to the input bounds, and stop when the confidence reaches ``threshold`` or the
cost has not improved for ``window`` steps. The paper's defaults (also ART's ``MIFace``):
step ``lr=0.1``, ``window=100``, ``threshold=0.99``; ``max_iter`` here 1,000 (the paper
5,000, ART 10,000) because small inputs converge much sooner. All classes are inverted
at once as one batch, each with its own stopping state. ``aux`` is an optional total
variation prior (``tv_weight``, default 0, the paper's plain cost).

* :func:`mi_face` — white-box: exact gradients of the model;
* :func:`mi_face_black_box` — through an :class:`~dlsec.threat.Oracle` with scores only:
  the gradient of ``f_c`` is estimated from ``2 * samples`` queries per step with
  antithetic Gaussian directions (NES, Ilyas et al. 2018).

Threat model: the attacker knows the classes and the input shape and bounds; white-box
also the weights. No training data is used (only :func:`inversion_quality` does).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dlsec.attacks.privacy._common import PrivacyAttackError, require_scores
from dlsec.models import CardLike
from dlsec.threat import Oracle
from dlsec.training import predict_logits


@dataclass
class InversionResult:
    """One reconstruction per requested class, the model's confidence in it, and the cost."""

    images: Tensor
    classes: Tensor
    confidence: Tensor
    iterations: Tensor
    queries: int = 0
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


def _tv(x: Tensor) -> Tensor:
    if x.dim() != 4:
        return x.new_zeros(x.shape[0])
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(1)
    return (dh + dw) / x[0].numel()


def _check_classes(classes: Sequence[int] | Tensor | None, k: int) -> Tensor:
    c = torch.arange(k) if classes is None else torch.as_tensor(classes, dtype=torch.int64)
    if c.numel() == 0 or int(c.min()) < 0 or int(c.max()) >= k:
        raise PrivacyAttackError(f"classes must be in 0..{k - 1}")
    return c


def _descend(confidence_grad: Any, c: Tensor, *, shape: Sequence[int],
             bounds: tuple[float, float], init: float | Tensor, device: torch.device, lr: float,
             max_iter: int, window: int, threshold: float, tv_weight: float
             ) -> tuple[Tensor, Tensor]:
    """The MI-Face loop shared by both variants, from ``init`` (see :func:`mi_face`):
    the best images and the iterations per class of ``c``. ``confidence_grad(x, c)``
    returns ``(f_c(x), d f_c / dx)`` for the still-active rows."""
    lo, hi = bounds
    n = c.numel()
    if isinstance(init, Tensor):
        x = init.to(device).expand(n, *shape).clone().clamp(lo, hi)
    else:
        x = torch.full((n, *shape), lo + float(init) * (hi - lo), device=device)
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    best = x.clone()
    best_cost = torch.full((n,), float("inf"), device=x.device)
    history = torch.full((n, window), float("inf"), device=x.device)
    iters = torch.zeros(n, dtype=torch.int64, device=x.device)
    for it in range(max_iter):
        idx = torch.nonzero(active).flatten()
        if idx.numel() == 0:
            break
        xa = x[idx]
        f, grad = confidence_grad(xa, c[idx])
        cost = 1.0 - f
        if tv_weight > 0:
            xt = xa.detach().clone().requires_grad_(True)
            tv = _tv(xt)
            (tv_grad,) = torch.autograd.grad(tv.sum(), xt)
            cost = cost + tv_weight * tv.detach()
            grad = grad - tv_weight * tv_grad  # grad of the cost is -df + tv'
        better = cost < best_cost[idx]
        best[idx[better]] = xa[better]
        best_cost[idx[better]] = cost[better]
        # stop: confident enough, or no improvement over the last `window` costs
        stale = cost >= history[idx].max(1).values if it >= window else torch.zeros_like(better)
        done = (f >= threshold) | stale
        history[idx, it % window] = cost
        iters[idx] = it + 1
        step = (xa + lr * grad).clamp(lo, hi)  # grad is d(-cost)/dx, ascend the confidence
        x[idx] = torch.where(done.view(-1, *([1] * (x.dim() - 1))), xa, step)
        active[idx[done]] = False
    return best, iters


def mi_face(model: nn.Module, *, card: CardLike, classes: Sequence[int] | Tensor | None = None,
            init: float | Tensor = 0.0, lr: float = 0.1, max_iter: int = 1000, window: int = 100,
            threshold: float = 0.99, tv_weight: float = 0.0) -> InversionResult:
    """White-box MI-Face: one reconstruction per class in ``classes`` (default: all).

    ``init`` is the start, as a fraction of the bounds' range (0 = the low bound, the
    paper's and ART's blank start) or a tensor of the input shape.
    """
    t0 = time.perf_counter()
    device = next(model.parameters(), torch.empty(0, device="cpu")).device
    c = _check_classes(classes, card.num_classes).to(device)
    was_training = model.training
    model.eval()

    def confidence_grad(xa: Tensor, ca: Tensor) -> tuple[Tensor, Tensor]:
        xg = xa.detach().clone().requires_grad_(True)
        f = torch.softmax(model(xg), 1).gather(1, ca.view(-1, 1)).squeeze(1)
        (grad,) = torch.autograd.grad(f.sum(), xg)
        return f.detach(), grad

    best, iters = _descend(confidence_grad, c, shape=card.input_shape, init=init, device=device,
                           bounds=(float(card.bounds[0]), float(card.bounds[1])), lr=lr,
                           max_iter=max_iter, window=window, threshold=threshold,
                           tv_weight=tv_weight)
    model.train(was_training)
    conf = torch.softmax(predict_logits(model, best), 1).gather(1, c.view(-1, 1)).squeeze(1)
    return InversionResult(images=best.detach(), classes=c, confidence=conf, iterations=iters,
                           seconds=time.perf_counter() - t0, details={"variant": "white-box"})


def mi_face_black_box(oracle: Oracle, *, classes: Sequence[int] | Tensor | None = None,
                      init: float | Tensor = 0.0, lr: float = 0.1, max_iter: int = 300,
                      window: int = 100, threshold: float = 0.99, tv_weight: float = 0.0,
                      samples: int = 20, sigma: float = 0.05,
                      generator: torch.Generator | None = None) -> InversionResult:
    """Black-box MI-Face: gradients estimated through ``oracle`` (scores needed).

    Each step costs ``2 * samples + 1`` queries per still-active class (the antithetic
    pairs at ``x +- sigma * u`` and ``x`` itself); ``sigma`` is a fraction of the bounds'
    range. The result's ``queries`` equals the oracle's count increase.
    """
    require_scores(oracle, "black-box MI-Face")
    t0 = time.perf_counter()
    g = generator or torch.Generator().manual_seed(0)
    c = _check_classes(classes, oracle.num_classes)
    lo, hi = oracle.bounds
    before = oracle.queries_total
    s = sigma * (hi - lo)

    def confidence_grad(xa: Tensor, ca: Tensor) -> tuple[Tensor, Tensor]:
        m = xa.shape[0]
        u = torch.randn((m, samples, *xa.shape[1:]), generator=g).to(xa.device, xa.dtype)
        plus = (xa.unsqueeze(1) + s * u).clamp(lo, hi)
        minus = (xa.unsqueeze(1) - s * u).clamp(lo, hi)
        batch = torch.cat([xa, plus.flatten(0, 1), minus.flatten(0, 1)])
        probs = oracle.query(batch).to(xa.device)
        cls = torch.cat([ca, ca.repeat_interleave(samples), ca.repeat_interleave(samples)])
        f = probs.gather(1, cls.view(-1, 1).to(probs.device)).squeeze(1).to(xa.dtype)
        f0, fp, fm = f[:m], f[m : m + m * samples], f[m + m * samples :]
        diff = (fp - fm).view(m, samples, *([1] * (xa.dim() - 1)))
        grad = (diff * u).mean(1) / (2 * s)
        return f0, grad

    best, iters = _descend(confidence_grad, c, shape=oracle.input_shape, init=init,
                           device=torch.device("cpu"), bounds=oracle.bounds, lr=lr,
                           max_iter=max_iter, window=window, threshold=threshold,
                           tv_weight=tv_weight)
    return InversionResult(images=best, classes=c, confidence=torch.full((c.numel(),), float("nan")),
                           iterations=iters, queries=oracle.queries_total - before,
                           seconds=time.perf_counter() - t0, details={"variant": "black-box"})


def class_means(x: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """The mean input of each class (``num_classes x input shape``)."""
    out = torch.zeros((num_classes, *x.shape[1:]), dtype=x.dtype, device=x.device)
    out.index_add_(0, y.to(x.device), x)
    counts = torch.bincount(y.to(x.device), minlength=num_classes).clamp_min(1)
    return out / counts.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def inversion_quality(result: InversionResult, *, evaluator: nn.Module, means: Tensor
                      ) -> dict[str, float]:
    """How much the reconstructions reveal.

    ``eval_accuracy``: share classified as their class by ``evaluator`` (an independently
    trained model); ``mean_cosine``: mean cosine similarity to the own class mean;
    ``nearest_mean_accuracy``: share whose most similar class mean is their own.
    """
    images = result.images
    pred = predict_logits(evaluator, images).argmax(1).cpu()
    classes = result.classes.cpu()
    a = images.flatten(1).cpu().double()
    b = means.flatten(1).cpu().double()
    sim = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T
    return {
        "eval_accuracy": float((pred == classes).double().mean()),
        "mean_cosine": float(sim.gather(1, classes.view(-1, 1)).mean()),
        "nearest_mean_accuracy": float((sim.argmax(1) == classes).double().mean()),
    }
