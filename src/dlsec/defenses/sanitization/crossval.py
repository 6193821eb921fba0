"""Out-of-sample predicted probabilities by K-fold cross-validation (what confident learning
and the loss sanitizer judge labels with): each sample's probabilities come from a model
that never saw it, trained with :func:`dlsec.training.fit`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dlsec.defenses.sanitization._base import SanitizationError
from dlsec.training import TrainConfig, fit, predict_logits


def stratified_folds(y: Tensor, folds: int, *, seed: int) -> Tensor:
    """Fold index ``0..folds-1`` per sample; each class is spread evenly over the folds."""
    if folds < 2:
        raise SanitizationError(f"cross-validation needs at least 2 folds, got {folds}")
    g = torch.Generator().manual_seed(seed)
    y_cpu = y.cpu()
    fold = torch.empty_like(y_cpu)
    offset = 0
    for c in torch.unique(y_cpu).tolist():
        idx = torch.nonzero(y_cpu == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        fold[idx] = (torch.arange(idx.numel()) + offset) % folds
        offset += idx.numel()
    return fold


def train_on(
    x: Tensor, y: Tensor, *, make_model: Callable[[], nn.Module], config: TrainConfig,
    progress: bool = False, seed: int | None = None, description: str = "training (sanitizer)",
) -> nn.Module:
    """A fresh model (initialised under ``seed``, default ``config.seed``; the global RNG is
    restored afterwards) trained on ``(x, y)`` with ``fit``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed if seed is None else seed)
        model = make_model()
    fit(model, x, y, config=config, progress=progress, description=description)
    return model


def cross_val_probs(x: Tensor, y: Tensor, *, make_model: Callable[[], nn.Module],
                    config: TrainConfig, num_classes: int, folds: int = 5,
                    progress: bool = False) -> Tensor:
    """``N x K`` softmax probabilities, each row from the fold model that did not train on it.

    Fold ``f``'s model is :func:`train_on` the other folds under seed ``config.seed + f``.
    """
    fold = stratified_folds(y, folds, seed=config.seed)
    probs = torch.zeros(y.numel(), num_classes)
    for f in range(folds):
        train_idx = torch.nonzero(fold != f).flatten()
        test_idx = torch.nonzero(fold == f).flatten()
        model = train_on(x[train_idx.to(x.device)], y[train_idx.to(y.device)],
                         make_model=make_model, config=config, progress=progress,
                         seed=config.seed + f, description=f"cross-validation fold {f + 1}/{folds}")
        logits = predict_logits(model, x[test_idx.to(x.device)])
        probs[test_idx] = logits.softmax(1).float().cpu()
    return probs
