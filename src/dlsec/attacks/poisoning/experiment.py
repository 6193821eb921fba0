"""The poisoning experiment: poison, train, measure; sanitize, retrain, measure again.

:func:`run_poisoning_experiment` takes a dataset and a :class:`PoisonResult` and reports
the clean model's accuracy, the poisoned model's accuracy and attack success, and, for
each sanitizer, its detection precision/recall against the attack's mask and the
accuracy and attack success after retraining on the samples it keeps. Every model is
trained with :func:`dlsec.training.fit` from the same initial weights (``config.seed``).

:func:`run_collision_trials` runs clean-label feature collision against many targets, in
the paper's transfer-learning setting (the victim retrains the last layer on features of
a fixed network) or end to end.

Example:
    >>> ds = load_dataset("digits")
    >>> poison = random_flip(ds.x_train, ds.y_train, rate=0.2, generator=torch.Generator().manual_seed(0))
    >>> exp = run_poisoning_experiment(ds, poison, architecture="simplenet",
    ...                                sanitizers=("cleanlab",))        # doctest: +SKIP
    >>> exp.sanitized[0].detection.recall, exp.sanitized[0].recovered  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dlsec.attacks.poisoning._base import (
    PoisonError,
    PoisonResult,
    predictions,
)
from dlsec.data import Dataset
from dlsec.defenses.sanitization import (
    Detection,
    SanitizationResult,
    SanitizerSettings,
    cross_val_probs,
    detection_metrics,
    model_factory,
    sanitize,
    train_on,
)
from dlsec.models import last_linear, penultimate_features
from dlsec.training import TrainConfig, evaluate, fit


@dataclass
class SanitizedRun:
    """One sanitizer applied to the poisoned set, then a model retrained on what it kept."""

    method: str
    detection: Detection
    accuracy: float
    success: float | None
    recovered: float | None
    seconds: float
    result: SanitizationResult = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **{f"detection_{k}": v
                for k, v in self.detection.to_dict().items()},
                "accuracy": self.accuracy, "success": self.success,
                "recovered": self.recovered, "seconds": self.seconds}


@dataclass
class PoisoningExperiment:
    """Accuracy and attack success without poison, with it, and after each sanitizer."""

    attack: str
    rate: float
    n_poisoned: int
    clean_accuracy: float
    poisoned_accuracy: float
    clean_success: float | None
    poisoned_success: float | None
    sanitized: list[SanitizedRun] = field(default_factory=list)
    poison: PoisonResult | None = field(default=None, repr=False)
    poisoned_model: nn.Module | None = field(default=None, repr=False)

    @property
    def accuracy_drop(self) -> float:
        return self.clean_accuracy - self.poisoned_accuracy

    def run(self, method: str) -> SanitizedRun:
        for r in self.sanitized:
            if r.method == method:
                return r
        raise KeyError(method)

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "rate": self.rate, "n_poisoned": self.n_poisoned,
                "clean_accuracy": self.clean_accuracy,
                "poisoned_accuracy": self.poisoned_accuracy,
                "accuracy_drop": self.accuracy_drop, "clean_success": self.clean_success,
                "poisoned_success": self.poisoned_success,
                "sanitized": [r.to_dict() for r in self.sanitized]}


def _success(poison: PoisonResult, model: nn.Module, ds: Dataset) -> float | None:
    return None if poison.success is None else poison.success(model, ds.x_test, ds.y_test)


def run_poisoning_experiment(
    dataset: Dataset,
    poison: PoisonResult,
    *,
    architecture: str = "simplenet",
    config: TrainConfig | None = None,
    sanitizers: Sequence[str] = (),
    settings: SanitizerSettings | None = None,
    clean_model: nn.Module | None = None,
    normalization: dict[str, list[float]] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> PoisoningExperiment:
    """Measure ``poison``'s damage and what each sanitizer in ``sanitizers`` repairs.

    Args:
        dataset: the clean dataset (its test set measures accuracy and attack success).
        poison: the poisoned training set, e.g. ``random_flip(ds.x_train, ds.y_train, ...)``.
        architecture: the victim's network (a registered name or ``module:factory``).
        config: training settings of every model (default ``TrainConfig(epochs=30,
            lr=3e-3)``; no validation split: every model trains for the set epochs).
        sanitizers: methods of :data:`dlsec.defenses.sanitization.SANITIZERS` to apply.
        settings: the sanitizers' options.
        clean_model: the model trained on clean data, when already available.
        normalization: the victim's input normalization (as in its model card).
        seed: seeds the sanitizers' own randomness (k-means).
        progress: show progress bars.
    """
    config = config or TrainConfig(epochs=30, lr=3e-3)
    make = model_factory(architecture, input_shape=dataset.input_shape, classes=dataset.classes,
                         bounds=dataset.bounds, normalization=normalization)
    if clean_model is None:
        clean_model = train_on(dataset.x_train, dataset.y_train, make_model=make, config=config,
                               progress=progress)
    xt, yt = dataset.x_test, dataset.y_test
    clean_acc = evaluate(clean_model, xt, yt)["accuracy"]
    poisoned_model = train_on(poison.x, poison.y, make_model=make, config=config,
                              progress=progress)
    pois_acc = evaluate(poisoned_model, xt, yt)["accuracy"]
    exp = PoisoningExperiment(
        attack=poison.attack, rate=poison.rate, n_poisoned=poison.n_poisoned,
        clean_accuracy=clean_acc, poisoned_accuracy=pois_acc,
        clean_success=_success(poison, clean_model, dataset),
        poisoned_success=_success(poison, poisoned_model, dataset),
        poison=poison, poisoned_model=poisoned_model,
    )
    probs = None
    if any(m in ("cleanlab", "loss") for m in sanitizers):
        folds = (settings or SanitizerSettings()).folds
        probs = cross_val_probs(poison.x, poison.y, make_model=make, config=config,
                                num_classes=dataset.num_classes, folds=folds,
                                progress=progress)
    for method in sanitizers:
        t0 = time.perf_counter()
        res = sanitize(method, poison.x, poison.y, num_classes=dataset.num_classes,
                       make_model=make, config=config, model=poisoned_model, pred_probs=probs,
                       settings=settings, seed=seed, progress=progress)
        keep = res.keep().to(poison.x.device)
        if keep.numel() == 0:
            raise PoisonError(f"sanitizer {method!r} removed every sample")
        retrained = train_on(poison.x[keep], poison.y[keep.to(poison.y.device)],
                             make_model=make, config=config, progress=progress)
        acc = evaluate(retrained, xt, yt)["accuracy"]
        drop = clean_acc - pois_acc
        exp.sanitized.append(SanitizedRun(
            method=method, detection=detection_metrics(res.mask, poison.mask.cpu()),
            accuracy=acc, success=_success(poison, retrained, dataset),
            recovered=(acc - pois_acc) / drop if drop > 0 else None,
            seconds=time.perf_counter() - t0, result=res,
        ))
    return exp


@dataclass
class CollisionTrials:
    """Feature collision over many targets.

    ``rows``: one dict per target (test index, true class, base class, success, the
    feature distance between the first poison and the target, and the image distance
    between it and its base). ``poisons``: the first poison of each target, for display.
    """

    n_targets: int
    successes: int
    retrain: str
    rows: list[dict[str, Any]]
    poisons: Tensor = field(repr=False)
    bases: Tensor = field(repr=False)
    targets: Tensor = field(repr=False)

    @property
    def success_rate(self) -> float:
        return self.successes / max(1, self.n_targets)


def _head_model(model: nn.Module, head: nn.Linear) -> nn.Module:
    out = copy.deepcopy(model)
    last_linear(out).load_state_dict(head.state_dict())
    return out


def run_collision_trials(
    dataset: Dataset,
    model: nn.Module,
    *,
    n_targets: int = 20,
    n_poisons: int = 20,
    retrain: Literal["last-layer", "full"] = "last-layer",
    architecture: str | None = None,
    config: TrainConfig | None = None,
    steps: int = 200,
    lr: float = 0.1,
    opacity: float = 0.0,
    beta: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> CollisionTrials:
    """Poison Frogs against ``n_targets`` random test samples, one poison set per target.

    Targets are test samples that ``model`` and the victim retrained *without* poisons
    both classify correctly; each gets a random other class as its base class. With
    ``retrain="last-layer"`` (the paper's transfer-learning setting) the victim's last
    layer is re-trained, starting from ``model``'s, on the penultimate features of the
    clean training set plus the poisons; with ``"full"`` a fresh ``architecture``
    network is trained on the poisoned set. Success: the victim classifies the target
    as the base class. Defaults (measured on digits/SimpleNet, 128 features): 20 poisons
    per target, the head re-trained for 60 epochs (Adam, lr 1e-2, batches of 256) — with
    128 features instead of the paper's 2048 one poison is rarely enough.
    """
    from dlsec.attacks.poisoning.feature_collision import feature_collision

    g = generator if generator is not None else torch.Generator().manual_seed(0)
    if retrain not in ("last-layer", "full"):
        raise PoisonError(f"unknown retrain mode {retrain!r} (last-layer, full)")
    if retrain == "full" and architecture is None:
        raise PoisonError("retrain='full' needs the victim's architecture")
    if config is None:
        config = (TrainConfig(epochs=30, lr=3e-3) if retrain == "full"
                  else TrainConfig(epochs=60, lr=1e-2, batch_size=256))
    ds = dataset
    device = next(model.parameters()).device
    base_head = last_linear(model)
    feats = penultimate_features(model, ds.x_train)

    def victim(x_extra: Tensor, y_extra: Tensor) -> nn.Module:
        if retrain == "last-layer":
            head = copy.deepcopy(base_head)
            fx = torch.cat([feats, penultimate_features(model, x_extra)]) if len(y_extra) else feats
            fy = torch.cat([ds.y_train.to(device), y_extra.to(device)])
            fit(head, fx, fy, config=config, progress=False)
            return _head_model(model, head)
        assert architecture is not None
        make = model_factory(architecture, input_shape=ds.input_shape, classes=ds.classes,
                             bounds=ds.bounds)
        return train_on(torch.cat([ds.x_train, x_extra.to(ds.x_train.device)]),
                        torch.cat([ds.y_train, y_extra.to(ds.y_train.device)]),
                        make_model=make, config=config)

    control = victim(ds.x_train[:0], ds.y_train[:0])
    ok = (predictions(model, ds.x_test).cpu() == ds.y_test) & (
        predictions(control, ds.x_test).cpu() == ds.y_test
    )
    pool = torch.nonzero(ok).flatten()
    pool = pool[torch.randperm(pool.numel(), generator=g)][:n_targets]
    rows, poisons, bases, targets, successes = [], [], [], [], 0
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("feature collision targets", total=int(pool.numel()))
        for t in pool.tolist():
            true = int(ds.y_test[t])
            base_label = (true + int(torch.randint(1, ds.num_classes, (1,), generator=g))) % (
                ds.num_classes
            )
            res = feature_collision(ds.x_train, ds.y_train, model=model, target_x=ds.x_test[t],
                                    base_label=base_label, bounds=ds.bounds, n_poisons=n_poisons,
                                    steps=steps, lr=lr, opacity=opacity, beta=beta)
            extra_x, extra_y = res.x[res.mask], res.y[res.mask]
            won = res.success(victim(extra_x, extra_y), ds.x_test, ds.y_test) == 1.0  # type: ignore[misc]
            successes += int(won)
            f_p = penultimate_features(model, extra_x[:1])
            f_t = penultimate_features(model, ds.x_test[t : t + 1])
            base_img = ds.x_train[res.metadata["base_indices"][0]].cpu()
            rows.append({"test_index": t, "true": true, "base": base_label, "success": won,
                         "feature_distance": float((f_p - f_t).norm()),
                         "target_feature_norm": float(f_t.norm()),
                         "image_distance": float((extra_x[0].cpu() - base_img).norm())})
            poisons.append(extra_x[0].cpu())
            bases.append(base_img)
            targets.append(ds.x_test[t].cpu())
            bar.advance(task)
    empty = ds.x_test[:0].cpu()
    return CollisionTrials(
        n_targets=len(rows), successes=successes, retrain=retrain, rows=rows,
        poisons=torch.stack(poisons) if poisons else empty,
        bases=torch.stack(bases) if bases else empty,
        targets=torch.stack(targets) if targets else empty,
    )
