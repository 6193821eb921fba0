"""BadNets backdoor: a small trigger patch stamped on some training images, relabelled.

Threat model: the attacker poisons a ``rate`` share of the training set (dirty label:
inputs *and* labels). The trained model behaves normally on clean inputs but predicts
``target`` for any input that carries the trigger. Success is the attack success rate
(ASR): the share of test samples of other classes that the model sends to ``target`` once
stamped. Reference: Gu, Dolan-Gavitt and Garg, "BadNets: Identifying Vulnerabilities in
the Machine Learning Model Supply Chain" (2017).

Defaults: a checkerboard patch (alternating the upper and lower input bound) in the
bottom-right corner, side ``max(2, min(H, W) // 9)`` pixels (2 on 8x8 digits, 3 on 28x28).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

from dlsec.attacks.poisoning._base import (
    PoisonError,
    PoisonResult,
    check_labels,
    check_rate,
    predictions,
)


@dataclass(frozen=True)
class Trigger:
    """A square patch. ``size=None`` picks ``max(2, min(H, W) // 9)``.

    ``pattern``: ``"checker"`` alternates the upper and lower bound (top-left pixel high);
    ``"square"`` fills the patch with the upper bound. ``corner``: where the patch sits.
    """

    size: int | None = None
    pattern: Literal["checker", "square"] = "checker"
    corner: Literal["bottom-right", "bottom-left", "top-right", "top-left"] = "bottom-right"

    def side(self, height: int, width: int) -> int:
        s = self.size if self.size is not None else max(2, min(height, width) // 9)
        if not 1 <= s <= min(height, width):
            raise PoisonError(f"trigger size {s} does not fit a {height}x{width} image")
        return s


def apply_trigger(x: Tensor, trigger: Trigger, *, bounds: tuple[float, float]) -> Tensor:
    """A copy of the image batch ``x`` (``N x C x H x W``) with the trigger stamped on."""
    if x.dim() != 4:
        raise PoisonError(f"a trigger patch needs N x C x H x W images, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    s = trigger.side(h, w)
    lo, hi = bounds
    if trigger.pattern == "checker":
        ii = torch.arange(s, device=x.device)
        patch = torch.where((ii[:, None] + ii[None, :]) % 2 == 0, hi, lo).to(x.dtype)
    elif trigger.pattern == "square":
        patch = torch.full((s, s), hi, dtype=x.dtype, device=x.device)
    else:
        raise PoisonError(f"unknown trigger pattern {trigger.pattern!r} (checker, square)")
    top = 0 if trigger.corner.startswith("top") else h - s
    left = 0 if trigger.corner.endswith("left") else w - s
    out = x.clone()
    out[..., top : top + s, left : left + s] = patch
    return out


def attack_success_rate(model: nn.Module, x_test: Tensor, y_test: Tensor, *, target: int,
                        trigger: Trigger, bounds: tuple[float, float]) -> float:
    """Share of test samples not of class ``target`` predicted ``target`` once triggered."""
    sel = (y_test != target).to(x_test.device)
    if not bool(sel.any()):
        return 0.0
    pred = predictions(model, apply_trigger(x_test[sel], trigger, bounds=bounds))
    return float((pred.cpu() == target).float().mean())


def backdoor(x: Tensor, y: Tensor, *, target: int, rate: float, trigger: Trigger | None = None,
             bounds: tuple[float, float] = (0.0, 1.0),
             mode: Literal["replace", "inject"] = "replace", num_classes: int | None = None,
             generator: torch.Generator | None = None) -> PoisonResult:
    """Stamp the trigger on samples of other classes and label them ``target``.

    Args:
        x, y: the training set, images ``N x C x H x W`` within ``bounds``.
        target: the class the trigger sends inputs to.
        rate: share of the resulting training set that is poisoned, in ``[0, 1)``.
        trigger: the patch (default :class:`Trigger()`).
        bounds: the input bounds (take them from the dataset or model card).
        mode: ``"replace"`` stamps and relabels existing samples (BadNets); ``"inject"``
            appends stamped, relabelled copies and keeps the originals.
    """
    check_rate(rate)
    k = check_labels(y, num_classes)
    if not 0 <= target < k:
        raise PoisonError(f"target must be in 0..{k - 1}, got {target}")
    if mode not in ("replace", "inject"):
        raise PoisonError(f"unknown backdoor mode {mode!r} (replace, inject)")
    trigger = trigger or Trigger()
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    n = y.numel()
    candidates = torch.nonzero(y.cpu() != target).flatten()
    n_poison = round(rate * n) if mode == "replace" else round(rate * n / (1.0 - rate))
    if n_poison > candidates.numel() and mode == "replace":
        raise PoisonError(f"rate {rate} needs {n_poison} samples, only {candidates.numel()} exist")
    picks = candidates[torch.randperm(candidates.numel(), generator=g)]
    picks = picks.repeat(-(-n_poison // max(1, picks.numel())))[:n_poison].to(y.device)
    stamped = apply_trigger(x[picks], trigger, bounds=bounds)
    if mode == "replace":
        x_new, y_new = x.clone(), y.clone()
        x_new[picks], y_new[picks] = stamped, target
        mask = torch.zeros(n, dtype=torch.bool, device=y.device)
        mask[picks] = True
        y_clean = y.clone()
    else:
        x_new = torch.cat([x, stamped])
        y_new = torch.cat([y, torch.full_like(y[picks], target)])
        mask = torch.cat([torch.zeros_like(y, dtype=torch.bool),
                          torch.ones_like(y[picks], dtype=torch.bool)])
        y_clean = torch.cat([y, y[picks]])

    return PoisonResult(
        x=x_new, y=y_new, mask=mask, y_clean=y_clean, attack="backdoor",
        metadata={"target": target, "rate": rate, "n_poisoned": n_poison, "mode": mode,
                  "trigger": dataclasses.asdict(trigger)},
        success=partial(attack_success_rate, target=target, trigger=trigger, bounds=bounds),
    )
