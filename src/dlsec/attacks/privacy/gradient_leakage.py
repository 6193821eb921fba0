"""Gradient leakage: reconstruct a federated client's batch from the update it sends.

The server (or anyone reading the update) holds the global weights the client received
and the client's gradient of its mean cross-entropy loss on one batch (a one-step SGD
update ``w - lr * g`` converts to it with :func:`gradient_from_update`). Three attacks:

* :func:`dlg` — Deep Leakage from Gradients (Zhu, Liu, Han, NeurIPS 2019): optimise dummy
  inputs *and* soft labels so that their gradient matches the observed one in squared L2.
  L-BFGS as in the paper (strong-Wolfe line search; ``iterations`` L-BFGS steps at most);
  the dummy labels are logits turned into soft labels by softmax.
* :func:`idlg` — improved DLG (Zhao, Mopuri, Bilen, 2020): for a batch of one, the true
  label is read from the last layer's weight gradient (:func:`idlg_label`: with
  cross-entropy, row ``c`` of that gradient is ``(p_c - 1[c = y]) h``; with non-negative
  features ``h`` only the true label's row sums below zero), then only the inputs are
  optimised (L2 matching, L-BFGS as DLG).
* :func:`inverting_gradients` — Geiping, Bauermeister, Dröge, Moeller (NeurIPS 2020):
  ``1 - cosine`` between the gradients (all layers as one vector) plus a total-variation
  prior, Adam on the *signed* gradient of the inputs, inputs clamped to the card's bounds
  after every step, step size decayed by 10 at 3/8, 5/8 and 7/8 of the iterations (the
  paper's schedule). Labels: iDLG's for a batch of one; for larger batches the caller's
  ``labels`` (the paper's setting: labels known) or, when None, :func:`estimate_labels`.
* :func:`inverting_updates` — the same attack against a FedAvg client that sends its weight
  *update* after ``local_steps`` SGD steps on its batch (:func:`local_update`), as Geiping
  et al. attack multi-step (FedAvg) updates: the local steps are unrolled on the
  dummy batch (differentiable, ``create_graph``) and the resulting weight difference is
  matched to the observed one (``1 - cosine`` + TV). :func:`attack_update` picks it, or
  turns a one-step update back into a gradient for any of the three attacks.

Quality: :func:`psnr`, :func:`ssim` (Wang et al. 2004, Gaussian window) and
:func:`match_reconstructions` (the assignment of reconstructions to originals with the best
total PSNR, since a batch gradient does not tell the order).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlsec.attacks.privacy._common import PrivacyAttackError
from dlsec.models import CardLike

ATTACKS = ("dlg", "idlg", "inverting-gradients")


@dataclass
class LeakageResult:
    """The reconstructed batch, its labels, where they came from, and the matching loss."""

    inputs: Tensor
    labels: Tensor
    loss_history: list[float]
    attack: str
    label_source: str
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def client_gradient(model: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
    """The gradient a client computes on ``(x, y)``: mean cross-entropy, w.r.t. every
    trainable parameter (in ``model.parameters()`` order), detached."""
    model.eval()
    loss = F.cross_entropy(model(x), y)
    return [g.detach() for g in torch.autograd.grad(loss, _params(model))]


def gradient_from_update(before: Sequence[Tensor], after: Sequence[Tensor], lr: float
                         ) -> list[Tensor]:
    """The gradient behind one plain SGD step ``after = before - lr * g``."""
    if lr <= 0:
        raise PrivacyAttackError(f"the client's learning rate must be > 0, got {lr}")
    if len(before) != len(after) or any(a.shape != b.shape for a, b in zip(before, after, strict=False)):
        raise PrivacyAttackError("the weights before and after the update differ in shapes")
    return [(b.detach() - a.detach()) / lr for b, a in zip(before, after, strict=True)]


def check_gradient(model: nn.Module, gradient: Sequence[Tensor], batch_size: int) -> list[Tensor]:
    """The observed gradient as a list of tensors shaped like the model's parameters."""
    if int(batch_size) < 1:
        raise PrivacyAttackError(f"batch size must be >= 1, got {batch_size}")
    params = _params(model)
    grads = [torch.as_tensor(g) for g in gradient]
    if len(grads) != len(params):
        raise PrivacyAttackError(
            f"the gradient has {len(grads)} tensors but the model {len(params)} parameters")
    for i, (g, p) in enumerate(zip(grads, params, strict=True)):
        if g.shape != p.shape:
            raise PrivacyAttackError(f"gradient tensor {i} has shape {tuple(g.shape)}, "
                                     f"the model's parameter {tuple(p.shape)}")
    if not all(bool(torch.isfinite(g).all()) for g in grads):
        raise PrivacyAttackError("the gradient contains NaN or inf")
    return [g.detach().to(p.device, p.dtype) for g, p in zip(grads, params, strict=True)]


def _last_weight(grads: Sequence[Tensor], num_classes: int) -> Tensor:
    for g in reversed(grads):
        if g.dim() == 2 and g.shape[0] == num_classes:
            return g
    raise PrivacyAttackError("no last-layer weight gradient with one row per class")


def idlg_label(gradient: Sequence[Tensor], num_classes: int) -> int:
    """iDLG: the label of a batch of one, the class whose last-layer weight-gradient row
    sums lowest (the only negative one when the features feeding that layer are >= 0)."""
    return int(_last_weight(gradient, num_classes).sum(1).argmin())


def estimate_labels(gradient: Sequence[Tensor], num_classes: int, batch_size: int) -> Tensor:
    """Labels of a batch, estimated: the ``batch_size`` classes with the lowest last-layer
    row sums (exact for distinct labels and confident models; repeats are not found)."""
    rows = _last_weight(gradient, num_classes).sum(1)
    k = min(batch_size, num_classes)
    picked = torch.argsort(rows)[:k]
    reps = math.ceil(batch_size / k)
    return picked.repeat(reps)[:batch_size].sort().values.cpu()


def _dummy(card: CardLike, batch_size: int, generator: torch.Generator) -> Tensor:
    lo, hi = float(card.bounds[0]), float(card.bounds[1])
    shape = (batch_size, *(int(v) for v in card.input_shape))
    return lo + (hi - lo) * torch.rand(shape, generator=generator)


def _tv(x: Tensor) -> Tensor:
    if x.dim() != 4:
        return x.new_zeros(())
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean()
            + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())


def _cosine_distance(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """``1 - cosine`` between two lists of tensors read as one vector each."""
    dot = sum((u * v).sum() for u, v in zip(a, b, strict=True))
    na = torch.sqrt(sum((u * u).sum() for u in a))  # type: ignore[arg-type]
    nb = torch.sqrt(sum((v * v).sum() for v in b))  # type: ignore[arg-type]
    return 1 - dot / (na * nb + 1e-12)


def _match_loss(model: nn.Module, x: Tensor, target: Tensor, observed: list[Tensor],
                kind: str) -> Tensor:
    """Squared L2 (``kind='l2'``) or ``1 - cosine`` between the dummy's and the observed
    gradient; ``target`` holds class indices or soft labels."""
    out = model(x)
    if target.dtype == torch.long:
        loss = F.cross_entropy(out, target)
    else:
        loss = -(target * F.log_softmax(out, dim=1)).sum(1).mean()
    dummy = torch.autograd.grad(loss, _params(model), create_graph=True)
    if kind == "l2":
        return sum(((d - g) ** 2).sum() for d, g in zip(dummy, observed, strict=True))  # type: ignore[return-value]
    return _cosine_distance(dummy, observed)


def _setup(model: nn.Module, gradient: Sequence[Tensor], card: CardLike, batch_size: int,
           iterations: int) -> tuple[list[Tensor], torch.device]:
    if iterations < 1:
        raise PrivacyAttackError(f"iterations must be >= 1, got {iterations}")
    observed = check_gradient(model, gradient, batch_size)
    model.eval()
    device = next(model.parameters()).device
    return observed, device


def _lbfgs(variables: list[Tensor], objective: Any, iterations: int) -> list[float]:
    """Minimise ``objective()`` over ``variables`` with L-BFGS (strong-Wolfe line search,
    ``iterations`` L-BFGS steps at most); the loss of every evaluation, in order."""
    opt = torch.optim.LBFGS(variables, lr=1.0, max_iter=iterations,
                            max_eval=iterations * 5 // 4 + 1, history_size=100,
                            tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")
    history: list[float] = []

    def closure() -> Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        history.append(float(loss.detach()))
        return loss

    opt.step(closure)
    return history


def dlg(model: nn.Module, gradient: Sequence[Tensor], *, card: CardLike, batch_size: int = 1,
        iterations: int = 300, generator: torch.Generator) -> LeakageResult:
    """DLG: dummy inputs and soft labels, both optimised to match the gradient in L2."""
    observed, device = _setup(model, gradient, card, batch_size, iterations)
    start = time.perf_counter()
    x = _dummy(card, batch_size, generator).to(device).requires_grad_(True)
    y_logits = torch.randn(batch_size, card.num_classes, generator=generator).to(device)
    y_logits.requires_grad_(True)
    history = _lbfgs([x, y_logits], lambda: _match_loss(
        model, x, F.softmax(y_logits, dim=1), observed, "l2"), iterations)
    lo, hi = float(card.bounds[0]), float(card.bounds[1])
    return LeakageResult(inputs=x.detach().clamp(lo, hi).cpu(),
                         labels=y_logits.detach().argmax(1).cpu(), loss_history=history,
                         attack="dlg", label_source="optimised",
                         seconds=time.perf_counter() - start)


def idlg(model: nn.Module, gradient: Sequence[Tensor], *, card: CardLike, batch_size: int = 1,
         iterations: int = 300, generator: torch.Generator) -> LeakageResult:
    """iDLG: the label from the last layer's gradient (batch of one), then L2 matching of
    the inputs only."""
    if batch_size != 1:
        raise PrivacyAttackError(f"iDLG reads the label of a batch of one, got batch size "
                                 f"{batch_size} (use dlg or inverting-gradients)")
    observed, device = _setup(model, gradient, card, batch_size, iterations)
    start = time.perf_counter()
    label = torch.tensor([idlg_label(observed, card.num_classes)], device=device)
    x = _dummy(card, 1, generator).to(device).requires_grad_(True)
    history = _lbfgs([x], lambda: _match_loss(model, x, label, observed, "l2"), iterations)
    lo, hi = float(card.bounds[0]), float(card.bounds[1])
    return LeakageResult(inputs=x.detach().clamp(lo, hi).cpu(), labels=label.cpu(),
                         loss_history=history, attack="idlg", label_source="idlg",
                         seconds=time.perf_counter() - start)


def _labels_for(observed: Sequence[Tensor], card: CardLike, batch_size: int,
                labels: Sequence[int] | Tensor | None) -> tuple[Tensor, str]:
    """iDLG's label for a batch of one, the caller's ``labels``, or estimated ones."""
    if batch_size == 1 and labels is None:
        return torch.tensor([idlg_label(observed, card.num_classes)]), "idlg"
    if labels is None:
        return estimate_labels(observed, card.num_classes, batch_size), "estimated"
    y = torch.as_tensor(labels, dtype=torch.long).flatten()
    if y.numel() != batch_size or bool(((y < 0) | (y >= card.num_classes)).any()):
        raise PrivacyAttackError(f"need {batch_size} labels in [0, {card.num_classes})")
    return y, "given"


def _signed_adam(x: Tensor, objective: Any, *, card: CardLike, iterations: int, lr: float,
                 tv_weight: float) -> list[float]:
    """Geiping et al.'s optimiser: ``objective(x) + tv_weight * TV(x)`` minimised by Adam on
    the signed gradient, step size / 10 at 3/8, 5/8, 7/8 of the iterations, ``x`` clamped
    to the card's bounds after each step; the matching loss of every iteration."""
    lo, hi = float(card.bounds[0]), float(card.bounds[1])
    opt = torch.optim.Adam([x], lr=lr)
    milestones = [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    history: list[float] = []
    for _ in range(iterations):
        opt.zero_grad()
        match = objective(x)
        loss = match + tv_weight * _tv(x)
        loss.backward()
        assert x.grad is not None
        x.grad.sign_()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(lo, hi)
        history.append(float(match.detach()))
    return history


def inverting_gradients(model: nn.Module, gradient: Sequence[Tensor], *, card: CardLike,
                        batch_size: int = 1, labels: Sequence[int] | Tensor | None = None,
                        iterations: int = 300, lr: float = 0.1, tv_weight: float = 1e-4,
                        generator: torch.Generator) -> LeakageResult:
    """Inverting Gradients: cosine matching + TV prior, signed Adam steps, clamped inputs."""
    observed, device = _setup(model, gradient, card, batch_size, iterations)
    if tv_weight < 0:
        raise PrivacyAttackError(f"the TV weight must be >= 0, got {tv_weight}")
    start = time.perf_counter()
    y, source = _labels_for(observed, card, batch_size, labels)
    y = y.to(device)
    x = _dummy(card, batch_size, generator).to(device).requires_grad_(True)
    history = _signed_adam(x, lambda v: _match_loss(model, v, y, observed, "cosine"),
                           card=card, iterations=iterations, lr=lr, tv_weight=tv_weight)
    return LeakageResult(inputs=x.detach().cpu(), labels=y.cpu(), loss_history=history,
                         attack="inverting-gradients", label_source=source,
                         seconds=time.perf_counter() - start)


# --- multi-step updates (FedAvg) -------------------------------------------------------

def _check_steps(local_steps: int, lr: float) -> None:
    if int(local_steps) < 1:
        raise PrivacyAttackError(f"local steps must be >= 1, got {local_steps}")
    if not lr > 0 or not math.isfinite(lr):
        raise PrivacyAttackError(f"the client's learning rate must be > 0, got {lr}")


def _unroll(model: nn.Module, x: Tensor, y: Tensor, *, local_steps: int, lr: float,
            create_graph: bool) -> list[Tensor]:
    """``after - before`` for ``local_steps`` plain SGD steps of ``lr`` on the mean
    cross-entropy of ``(x, y)``, starting at the model's weights (the model is untouched;
    buffers are read, never updated: the model runs in eval mode)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    current = [p.detach().clone().requires_grad_(True) for p in _params(model)]
    start = [c.detach() for c in current]
    for _ in range(local_steps):
        out = torch.func.functional_call(model, dict(zip(names, current, strict=True)), (x,))
        grads = torch.autograd.grad(F.cross_entropy(out, y), current, create_graph=create_graph)
        if create_graph:
            current = [w - lr * g for w, g in zip(current, grads, strict=True)]
        else:
            current = [(w - lr * g).detach().requires_grad_(True)
                       for w, g in zip(current, grads, strict=True)]
    return [c - s for c, s in zip(current, start, strict=True)]


def local_update(model: nn.Module, x: Tensor, y: Tensor, *, local_steps: int = 1,
                 lr: float = 0.1) -> list[Tensor]:
    """The update a FedAvg client sends after ``local_steps`` SGD steps (step size ``lr``,
    mean cross-entropy, full batch ``(x, y)`` each step) from the global weights:
    ``after - before`` per trainable parameter, detached; ``model`` is left as it was.
    One step gives ``-lr`` times :func:`client_gradient`."""
    _check_steps(local_steps, lr)
    model.eval()
    return [u.detach() for u in _unroll(model, x, y, local_steps=local_steps, lr=lr,
                                        create_graph=False)]


def inverting_updates(model: nn.Module, update: Sequence[Tensor], *, card: CardLike,
                      local_steps: int, lr: float, batch_size: int = 1,
                      labels: Sequence[int] | Tensor | None = None, iterations: int = 300,
                      step_size: float = 0.1, tv_weight: float = 1e-4,
                      generator: torch.Generator) -> LeakageResult:
    """Inverting Gradients against a multi-step FedAvg update (Geiping et al. 2020).

    Threat model: an honest-but-curious server that knows the global weights it sent
    (``model``), the client's step count and step size (FedAvg's hyper-parameters are the
    server's), and reads ``update = after - before``. The dummy batch goes through the same
    ``local_steps`` SGD steps (unrolled, second-order gradients through every step), and
    ``1 - cosine(dummy update, update) + tv_weight * TV`` is minimised with the signed-Adam
    schedule of :func:`inverting_gradients`. Labels: iDLG's rule on ``-update`` (exact for
    one step, where ``-update = lr * gradient``) for a batch of one, else ``labels`` or
    :func:`estimate_labels`. ``step_size`` is the attacker's Adam step size.

    Example:
        >>> u = local_update(model, x, y, local_steps=5, lr=0.1)          # doctest: +SKIP
        >>> res = inverting_updates(model, u, card=card, local_steps=5, lr=0.1,
        ...                         generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
    """
    _check_steps(local_steps, lr)
    observed, device = _setup(model, update, card, batch_size, iterations)
    if tv_weight < 0:
        raise PrivacyAttackError(f"the TV weight must be >= 0, got {tv_weight}")
    start = time.perf_counter()
    y, source = _labels_for([-u for u in observed], card, batch_size, labels)
    y = y.to(device)
    x = _dummy(card, batch_size, generator).to(device).requires_grad_(True)

    def objective(v: Tensor) -> Tensor:
        dummy = _unroll(model, v, y, local_steps=local_steps, lr=lr, create_graph=True)
        return _cosine_distance(dummy, observed)

    history = _signed_adam(x, objective, card=card, iterations=iterations, lr=step_size,
                           tv_weight=tv_weight)
    return LeakageResult(inputs=x.detach().cpu(), labels=y.cpu(), loss_history=history,
                         attack="inverting-gradients", label_source=source,
                         seconds=time.perf_counter() - start,
                         details={"local_steps": int(local_steps), "client_lr": float(lr)})


def run_attack(name: str, model: nn.Module, gradient: Sequence[Tensor], *, card: CardLike,
               batch_size: int, iterations: int, generator: torch.Generator,
               labels: Sequence[int] | Tensor | None = None) -> LeakageResult:
    """One of :data:`ATTACKS` by name (``labels`` only reach inverting-gradients)."""
    if name == "dlg":
        return dlg(model, gradient, card=card, batch_size=batch_size, iterations=iterations,
                   generator=generator)
    if name == "idlg":
        return idlg(model, gradient, card=card, batch_size=batch_size, iterations=iterations,
                    generator=generator)
    if name == "inverting-gradients":
        return inverting_gradients(model, gradient, card=card, batch_size=batch_size,
                                   labels=labels, iterations=iterations, generator=generator)
    raise PrivacyAttackError(f"unknown gradient-leakage attack {name!r} "
                             f"(choose from {', '.join(ATTACKS)})")


def attack_update(name: str, model: nn.Module, update: Sequence[Tensor], *, card: CardLike,
                  batch_size: int, local_steps: int, lr: float, iterations: int,
                  generator: torch.Generator,
                  labels: Sequence[int] | Tensor | None = None) -> LeakageResult:
    """Attack a FedAvg update (``after - before``): one local step is a gradient
    (``-update / lr``) for any of :data:`ATTACKS`; several are unrolled by
    :func:`inverting_updates` (DLG and iDLG match one gradient and refuse them)."""
    _check_steps(local_steps, lr)
    if local_steps == 1:
        grad = [-u / lr for u in update]
        return run_attack(name, model, grad, card=card, batch_size=batch_size,
                          iterations=iterations, generator=generator, labels=labels)
    if name not in ATTACKS:
        raise PrivacyAttackError(f"unknown gradient-leakage attack {name!r} "
                                 f"(choose from {', '.join(ATTACKS)})")
    if name != "inverting-gradients":
        raise PrivacyAttackError(f"{name} matches one gradient; an update of {local_steps} "
                                 "local steps needs inverting-gradients")
    return inverting_updates(model, update, card=card, local_steps=local_steps, lr=lr,
                             batch_size=batch_size, labels=labels, iterations=iterations,
                             generator=generator)


# --- quality ---------------------------------------------------------------------------

def psnr(x: Tensor, ref: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image, ``10 log10(R^2 / MSE)`` in dB (inf if equal)."""
    if x.shape != ref.shape:
        raise PrivacyAttackError(f"PSNR of shapes {tuple(x.shape)} and {tuple(ref.shape)}")
    mse = ((x.double() - ref.double()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)


def _gaussian_window(size: int, sigma: float) -> Tensor:
    c = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(c ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: Tensor, ref: Tensor, *, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5) -> Tensor:
    """Structural similarity per image (Wang, Bovik, Sheikh, Simoncelli 2004).

    Local means, variances and covariance under a normalised Gaussian window (``window``
    wide, shrunk to the largest odd size that fits the image), no padding (only windows
    inside the image), ``C1 = (0.01 R)^2``, ``C2 = (0.03 R)^2``; the SSIM map is averaged
    over positions and channels. Inputs ``N x C x H x W``.
    """
    if x.shape != ref.shape or x.dim() != 4:
        raise PrivacyAttackError(f"SSIM needs two N x C x H x W batches of one shape, got "
                                 f"{tuple(x.shape)} and {tuple(ref.shape)}")
    _, c, h, w = x.shape
    size = min(window, h, w)
    size -= 1 - size % 2
    k = _gaussian_window(size, sigma).to(x.device)[None, None].repeat(c, 1, 1, 1)
    a, b = x.double(), ref.double()

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, k, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
         / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return s.flatten(1).mean(1)


def match_reconstructions(x: Tensor, ref: Tensor, *, data_range: float = 1.0) -> Tensor:
    """The permutation ``p`` with ``x[p[i]]`` matched to ``ref[i]`` maximising the total
    PSNR (exhaustive up to 8 images, greedy by best pair beyond)."""
    if x.shape != ref.shape:
        raise PrivacyAttackError(f"cannot match {x.shape[0]} reconstructions to "
                                 f"{ref.shape[0]} originals of another shape")
    n = x.shape[0]
    score = torch.stack([psnr(x, ref[i:i + 1].expand_as(x), data_range=data_range)
                         for i in range(n)])  # score[i, j]: original i vs reconstruction j
    score = torch.nan_to_num(score, posinf=1e6)
    if n <= 8:
        sc = score.tolist()
        best = max(itertools.permutations(range(n)),
                   key=lambda p: sum(sc[i][p[i]] for i in range(n)))
        return torch.tensor(best)
    perm = torch.full((n,), -1, dtype=torch.long)
    s = score.clone()
    for _ in range(n):
        i, j = divmod(int(s.argmax()), n)
        perm[i] = j
        s[i, :] = -math.inf
        s[:, j] = -math.inf
    return perm


__all__ = [
    "ATTACKS",
    "LeakageResult",
    "attack_update",
    "check_gradient",
    "client_gradient",
    "dlg",
    "estimate_labels",
    "gradient_from_update",
    "idlg",
    "idlg_label",
    "inverting_gradients",
    "inverting_updates",
    "local_update",
    "match_reconstructions",
    "psnr",
    "run_attack",
    "ssim",
]
