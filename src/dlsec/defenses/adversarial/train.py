"""``adversarial_train``: build a model for a dataset and train it adversarially with
:func:`dlsec.training.train_model` (the one loop), then measure its PGD robustness.

Example:
    >>> model, card, result = adversarial_train(
    ...     ds, "simplenet", method="pgd", eps=0.2, config=TrainConfig(epochs=30)
    ... )                                                          # doctest: +SKIP
    >>> card.metrics["test_pgd_accuracy"]                          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dlsec.attacks.core import Norm
from dlsec.attacks.evasion import PGD
from dlsec.defenses.adversarial._base import AdversarialLoss
from dlsec.defenses.adversarial.fgsm_rs import FastFGSMLoss
from dlsec.defenses.adversarial.monitor import RobustnessMonitor
from dlsec.defenses.adversarial.pgd_at import PGDTrainingLoss
from dlsec.defenses.adversarial.trades import TradesLoss
from dlsec.training import (
    TrainConfig,
    TrainingError,
    TrainResult,
    distributed_context,
    evaluate,
    resolve_device,
    train_model,
)

METHODS: dict[str, type[AdversarialLoss]] = {
    "pgd": PGDTrainingLoss,
    "fgsm-rs": FastFGSMLoss,
    "trades": TradesLoss,
}


@dataclass
class AdversarialTrainResult(TrainResult):
    """A :class:`TrainResult` plus what the robustness monitor saw.

    ``best_epoch`` is the epoch with the best held-out PGD accuracy (its weights are the
    ones returned); ``collapse_epoch`` the first epoch flagged as catastrophic
    overfitting, or None.
    """

    method: str = ""
    best_pgd_accuracy: float | None = None
    collapse_epoch: int | None = None

    @property
    def catastrophic_overfitting(self) -> bool:
        return self.collapse_epoch is not None


def make_adversarial_loss(
    method: str, *, eps: float, bounds: tuple[float, float], norm: Norm = "linf",
    steps: int | None = None, generator: torch.Generator | None = None, **kwargs: Any,
) -> AdversarialLoss:
    """The batch loss of ``method`` (``pgd``, ``fgsm-rs`` or ``trades``)."""
    if method not in METHODS:
        raise TrainingError(
            f"unknown adversarial training method {method!r} (choose from {', '.join(METHODS)})"
        )
    if steps is not None:
        kwargs["steps"] = steps
    try:
        return METHODS[method](eps=eps, bounds=bounds, norm=norm, generator=generator, **kwargs)
    except TypeError as exc:
        raise TrainingError(f"{method}: {exc}") from exc


def adversarial_train(
    dataset: Any, architecture: str, *, method: str = "pgd", eps: float, norm: Norm = "linf",
    config: TrainConfig | None = None, steps: int | None = None, alpha: float | None = None,
    beta: float = 6.0, random_init: bool = True, seed: int | None = None, monitor: bool = True,
    monitor_size: int = 512, monitor_steps: int = 10, collapse_drop: float = 0.2,
    eval_steps: int = 20, normalization: dict[str, list[float]] | None = None,
    on_epoch_end: Callable[[int, nn.Module, dict[str, float]], bool | None] | None = None,
    progress: bool = True,
) -> tuple[nn.Module, Any, AdversarialTrainResult]:
    """Train ``architecture`` on ``dataset`` adversarially; return ``(model, card, result)``.

    Methods: ``pgd`` (Madry et al. 2018; 10 steps of ``2.5 * eps / steps``, random
    start), ``fgsm-rs`` (Wong et al. 2020; one step of ``1.25 * eps`` from a random
    start) and ``trades`` (Zhang et al. 2019; ``beta = 6``, 10 steps). ``eps`` is in the
    dataset's input units; ``alpha`` overrides the step size, ``random_init=False``
    starts PGD/FGSM from the clean input (plain FGSM training).

    With ``monitor`` (the default), after every epoch a :class:`RobustnessMonitor`
    measures PGD-``monitor_steps`` and FGSM accuracy on up to ``monitor_size`` held-out
    points (the validation split, else a seeded sample of the training set), flags
    catastrophic overfitting (PGD accuracy ``collapse_drop`` below its best, or about 0
    while FGSM accuracy is high), then stops and rolls back to the epoch with the best
    PGD accuracy. With ``config.restore_best`` the best-PGD epoch's weights are also
    returned when nothing collapsed (Rice et al. 2020's early stopping). ``on_epoch_end``
    runs before the monitor.

    The attacks draw from a generator seeded by ``seed`` (default ``config.seed``; under
    DDP salted by the rank); the same seed gives the same weights. The card's
    ``training["adversarial"]`` records the method and its settings; ``metrics`` gain
    ``test_pgd_accuracy``, the PGD-``eval_steps`` accuracy on the test set at ``eps``.
    """
    from dlsec.data import stratified_split

    config = config or TrainConfig()
    seed = config.seed if seed is None else seed
    bounds = (float(dataset.bounds[0]), float(dataset.bounds[1]))
    ddp = distributed_context(resolve_device(config.device))
    rank = ddp.rank if ddp is not None else 0
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 7 + rank)
    extra: dict[str, Any] = {"beta": beta} if method == "trades" else {"random_init": random_init}
    if alpha is not None:
        extra["alpha"] = alpha
    loss = make_adversarial_loss(
        method, eps=eps, bounds=bounds, norm=norm, steps=steps, generator=gen, **extra
    )

    mon: RobustnessMonitor | None = None
    if monitor:
        x_tr, y_tr = dataset.x_train, dataset.y_train
        if config.val_fraction > 0:  # the same split train_model makes
            _, held = stratified_split(y_tr, test_size=config.val_fraction, seed=config.seed)
        else:
            held = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(seed))
        held = held[:monitor_size]
        mon = RobustnessMonitor(
            x_tr[held], y_tr[held], eps=eps, bounds=bounds, norm=norm, steps=monitor_steps,
            drop=collapse_drop, seed=seed,
        )

    def hook(epoch: int, model: nn.Module, record: dict[str, float]) -> bool:
        stop = bool(on_epoch_end(epoch, model, record)) if on_epoch_end else False
        return (mon(epoch, model, record) if mon is not None else False) or stop

    fit_config = dataclasses.replace(config, restore_best=False)  # the monitor picks the best
    model, card, base = train_model(
        dataset, architecture, fit_config, normalization=normalization, progress=progress,
        batch_loss=loss, on_epoch_end=hook,
    )
    result = AdversarialTrainResult(
        history=base.history, best_epoch=len(base.history), stopped_early=base.stopped_early,
        seconds=base.seconds, method=method,
    )
    if mon is not None:
        result.collapse_epoch = mon.collapse_epoch
        result.stopped_early = result.stopped_early or mon.collapse_epoch is not None
        rollback = config.restore_best or mon.collapse_epoch is not None
        if rollback and mon.best_state is not None:
            model.load_state_dict(mon.best_state)
            result.best_epoch = mon.best_epoch
        result.best_pgd_accuracy = result.history[result.best_epoch - 1]["val_pgd_accuracy"]
    model.eval()

    test = evaluate(model, dataset.x_test, dataset.y_test)
    robust = PGD(norm=norm, steps=eval_steps)(
        model, dataset.x_test, dataset.y_test, eps=eps, bounds=bounds,
        generator=torch.Generator().manual_seed(seed),
    )
    adv = {**loss.settings(), "monitor": monitor, "collapse_epoch": result.collapse_epoch}
    card.training = {**config.to_dict(), "best_epoch": result.best_epoch, "adversarial": adv}
    best = result.history[result.best_epoch - 1] if result.history else {}
    card.metrics = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_pgd_accuracy": robust.robust_accuracy[0],
        **{k: best[k] for k in ("train_accuracy", "val_accuracy", "val_pgd_accuracy") if k in best},
    }
    return model, card, result
