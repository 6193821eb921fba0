"""Poisoning, wired once (the audit's Poisoning section, ``dlsec poison``/``dlsec sanitize``
and benchmarks/poisoning.py run through here): poison, train, measure; sanitize, retrain,
measure again. Seeds are named streams of the run seed (``poisoning/random-flip``,
``poisoning/victim``).

Example:
    >>> ds = load_dataset("digits")
    >>> poison = poison_dataset("random-flip", ds, seed=0, rate=0.2)
    >>> exp = run_poisoning_experiment(ds, poison, architecture="simplenet",
    ...                                sanitizers=("cleanlab",))        # doctest: +SKIP
    >>> exp.sanitized[0].detection.recall, exp.sanitized[0].recovered  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dlsec.attacks.poisoning import (
    PoisonError,
    PoisonResult,
    Trigger,
    backdoor,
    feature_collision,
    inject_mislabeled,
    optimized_flip,
    random_flip,
    targeted_flip,
)
from dlsec.attacks.poisoning._base import predictions
from dlsec.attacks.surrogate import train_config_from_card
from dlsec.data import Dataset, stratified_split
from dlsec.defenses.sanitization import (
    SANITIZERS,
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
from dlsec.scenarios.context import ScenarioContext, stream_seed
from dlsec.scenarios.result import ScenarioResult, Table
from dlsec.training import TrainConfig, evaluate, fit

POISON_ATTACKS = ("random-flip", "targeted-flip", "optimized-flip", "inject", "backdoor",
                  "feature-collision")
"""Attack names :func:`poison_dataset` builds."""
FLIP_ATTACKS = ("random-flip", "optimized-flip")
"""The label flips the audit's experiment runs at each rate."""
SURROGATE_ATTACKS = ("optimized-flip", "feature-collision")
"""Attacks that need a trained model (a surrogate of the victim)."""


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
        return {r.method: r for r in reversed(self.sanitized)}[method]  # the first


def _success(poison: PoisonResult, model: nn.Module, ds: Dataset) -> float | None:
    return None if poison.success is None else poison.success(model, ds.x_test, ds.y_test)


def run_poisoning_experiment(dataset: Dataset, poison: PoisonResult, *,
                             architecture: str = "simplenet", config: TrainConfig | None = None,
                             sanitizers: Sequence[str] = (),
                             settings: SanitizerSettings | None = None,
                             clean_model: nn.Module | None = None,
                             normalization: dict[str, list[float]] | None = None, seed: int = 0,
                             progress: bool = False) -> PoisoningExperiment:
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
    rows: list[dict[str, Any]]
    poisons: Tensor = field(repr=False)
    bases: Tensor = field(repr=False)
    targets: Tensor = field(repr=False)

    @property
    def success_rate(self) -> float:
        return self.successes / max(1, self.n_targets)


def run_collision_trials(dataset: Dataset, model: nn.Module, *, n_targets: int = 20,
                         n_poisons: int = 20, config: TrainConfig | None = None, steps: int = 200,
                         lr: float = 0.1, opacity: float = 0.0, beta: float | None = None,
                         generator: torch.Generator | None = None,
                         progress: bool = False) -> CollisionTrials:
    """Poison Frogs against ``n_targets`` random test samples, one poison set per target.

    Targets are test samples that ``model`` and the victim retrained *without* poisons
    both classify correctly; each gets a random other class as its base class. The victim
    (the paper's transfer-learning setting) re-trains the last layer, starting from
    ``model``'s, on the penultimate features of the clean training set plus the poisons.
    Success: the victim classifies the target as the base class. Defaults (measured on
    digits/SimpleNet, 128 features): 20 poisons per target, the head re-trained for 60
    epochs (Adam, lr 1e-2, batches of 256) — with 128 features instead of the paper's 2048
    one poison is rarely enough.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    config = config or TrainConfig(epochs=60, lr=1e-2, batch_size=256)
    ds = dataset
    device = next(model.parameters()).device
    base_head = last_linear(model)
    feats = penultimate_features(model, ds.x_train)

    def victim(x_extra: Tensor, y_extra: Tensor) -> nn.Module:
        head = copy.deepcopy(base_head)
        fx = torch.cat([feats, penultimate_features(model, x_extra)]) if len(y_extra) else feats
        fy = torch.cat([ds.y_train.to(device), y_extra.to(device)])
        fit(head, fx, fy, config=config, progress=False)
        out = copy.deepcopy(model)
        last_linear(out).load_state_dict(head.state_dict())
        return out

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
                         "image_distance": float((extra_x[0].cpu() - base_img).norm())})
            poisons.append(extra_x[0].cpu())
            bases.append(base_img)
            targets.append(ds.x_test[t].cpu())
            bar.advance(task)
    empty = ds.x_test[:0].cpu()
    return CollisionTrials(
        n_targets=len(rows), successes=successes, rows=rows,
        poisons=torch.stack(poisons) if poisons else empty,
        bases=torch.stack(bases) if bases else empty,
        targets=torch.stack(targets) if targets else empty,
    )


# -- one attack or one sanitizer by name (no model under audit) ------------------------------
def poison_dataset(attack: str, dataset: Dataset, *, seed: int = 0,
                   surrogate: nn.Module | None = None, **settings: Any) -> PoisonResult:
    """Poison ``dataset``'s training split with the attack named ``attack``.

    ``settings`` are the attack's own keywords (``rate``; ``source``/``target`` for
    targeted-flip; ``label`` for inject; ``target``, ``trigger_size``, ``pattern``, ``mode``
    for backdoor; ``target_index``, ``base_label`` (default: the next class), ``n_poisons``,
    ``steps``, ``opacity`` for feature-collision). Randomness comes from the stream
    ``poisoning/<attack>`` of ``seed``. :data:`SURROGATE_ATTACKS` need ``surrogate``, a
    model trained on the clean data standing in for the victim.
    """
    if attack not in POISON_ATTACKS:
        raise PoisonError(f"unknown poisoning attack {attack!r} (choose from "
                          f"{', '.join(POISON_ATTACKS)})")
    if attack in SURROGATE_ATTACKS and surrogate is None:
        raise PoisonError(f"{attack} needs a surrogate model")
    ds = dataset
    x, y, k = ds.x_train, ds.y_train, ds.num_classes
    g = torch.Generator().manual_seed(stream_seed(seed, f"poisoning/{attack}"))
    if attack == "random-flip":
        return random_flip(x, y, num_classes=k, generator=g, **settings)
    if attack == "targeted-flip":
        return targeted_flip(x, y, num_classes=k, generator=g, **settings)
    if attack == "inject":
        return inject_mislabeled(x, y, num_classes=k, generator=g, **settings)
    if attack == "backdoor":
        trigger = Trigger(size=settings.pop("trigger_size", None),
                          pattern=settings.pop("pattern", "checker"))
        if trigger.pattern not in ("checker", "square"):
            raise PoisonError(f"unknown trigger pattern {trigger.pattern!r} (checker, square)")
        return backdoor(x, y, trigger=trigger, bounds=ds.bounds, num_classes=k, generator=g,
                        **settings)
    assert surrogate is not None
    if attack == "optimized-flip":
        return optimized_flip(x, y, surrogate=surrogate, num_classes=k, **settings)
    t = int(settings.pop("target_index", 0))
    if not 0 <= t < ds.y_test.numel():
        raise PoisonError(f"target index must be in 0..{ds.y_test.numel() - 1}, got {t}")
    base = settings.pop("base_label", None)
    base = (int(ds.y_test[t]) + 1) % k if base is None else int(base)
    return feature_collision(x, y, model=surrogate, target_x=ds.x_test[t], base_label=base,
                             bounds=ds.bounds, **settings)


def sanitize_dataset(dataset: Dataset, method: str, *, architecture: str = "simplenet",
                     epochs: int = 30, folds: int = 5, seed: int = 0, truth: Tensor | None = None,
                     progress: bool = False) -> tuple[SanitizationResult, Detection | None]:
    """Run sanitizer ``method`` on ``dataset``'s training split; score it against ``truth``
    (the attack's poison mask) when given. The sanitizer's models are ``architecture``
    networks trained for ``epochs`` (lr 3e-3); their seeds are the streams
    ``poisoning/sanitizer-models`` and ``poisoning/sanitizer`` of ``seed``."""
    if method not in SANITIZERS:
        raise PoisonError(f"unknown sanitizer {method!r} (choose from {', '.join(SANITIZERS)})")
    ds = dataset
    make = model_factory(architecture, input_shape=ds.input_shape, classes=ds.classes,
                         bounds=ds.bounds)
    config = TrainConfig(epochs=epochs, lr=3e-3, seed=_seed31(seed, "poisoning/sanitizer-models"))
    res = sanitize(method, ds.x_train, ds.y_train, num_classes=ds.num_classes, make_model=make,
                   config=config, settings=SanitizerSettings(folds=folds),
                   seed=_seed31(seed, "poisoning/sanitizer"), progress=progress)
    return res, None if truth is None else detection_metrics(res.mask, truth)


def _seed31(seed: int, stream: str) -> int:
    """A stream's seed cut to 31 bits (scikit-learn's k-means takes at most 32)."""
    return stream_seed(seed, stream) % 2**31


# -- the audit's experiment -------------------------------------------------------------------
@dataclass
class PoisoningOptions:
    """What :func:`run_poisoning` runs (the keys of the audit's ``[poisoning]`` table).

    ``epochs``, ``max_train`` and ``max_test`` at 0 are automatic: the front-end resolves
    them into :class:`Sizes` (the audit scales them to the input size).
    """

    rates: list[float] = field(default_factory=lambda: [0.2, 0.4])
    flip_attacks: list[str] = field(default_factory=lambda: list(FLIP_ATTACKS))
    flip_sanitizers: list[str] = field(default_factory=lambda: ["cleanlab"])
    backdoor_rate: float = 0.05
    backdoor_target: int = 0
    backdoor_sanitizers: list[str] = field(default_factory=lambda: ["spectral", "activation"])
    collision_targets: int = 2
    epochs: int = 0
    batch_size: int = 128
    folds: int = 3
    max_train: int = 0
    max_test: int = 0

    def __post_init__(self) -> None:
        if any(not 0 < r < 1 for r in self.rates) or not 0 <= self.backdoor_rate < 1:
            raise ValueError("rates: each in (0, 1); backdoor-rate in [0, 1) (0: no backdoor)")
        bad = [a for a in self.flip_attacks if a not in FLIP_ATTACKS]
        if bad or (self.flip_attacks and not self.rates):
            raise ValueError(f"flip-attacks: random-flip and/or optimized-flip with rates, got {bad}")
        bad = [m for m in (*self.flip_sanitizers, *self.backdoor_sanitizers) if m not in SANITIZERS]
        if bad:
            raise ValueError(f"sanitizers: unknown {bad} (choose from {list(SANITIZERS)})")
        if self.backdoor_target < 0 or self.collision_targets < 0:
            raise ValueError("backdoor-target and collision-targets must be >= 0")
        if self.epochs < 0 or self.batch_size < 1 or self.folds < 2:
            raise ValueError("epochs and batch-size must be >= 1, folds >= 2 (epochs 0: "
                             "automatic)")
        if any(v < 0 or 0 < v < 10 for v in (self.max_train, self.max_test)):
            raise ValueError("max-train and max-test must be >= 10 (0: automatic)")


@dataclass(frozen=True)
class Sizes:
    """The victims' budget: ``epochs`` on at most ``max_train`` training samples, scored on
    ``max_test`` test samples (None: all); the label sanitizers run at every rate, or with
    ``sanitize_every_rate=False`` at the lowest only."""

    epochs: int
    max_train: int
    max_test: int | None
    sanitize_every_rate: bool = True

    def label_sanitizers(self, o: PoisoningOptions, rate: float) -> list[str]:
        """The label sanitizers run against flips at ``rate``."""
        every = self.sanitize_every_rate or rate == min(o.rates)
        return list(o.flip_sanitizers) if every else []

    def text(self, ds: Dataset, note: str = "") -> str:
        """The settings as the report states them, for the (subsampled) data ``ds``."""
        test = "the whole test set" if self.max_test is None else f"{ds.y_test.numel()} test samples"
        where = "every rate" if self.sanitize_every_rate else "the lowest rate only"
        text = (f"each victim trains for {self.epochs} epochs on {ds.y_train.numel()} training "
                f"samples (at most {self.max_train}) and is scored on {test}; label "
                f"sanitizers run at {where}")
        return f"{text}; {note}" if note else text


def subsample(ds: Dataset, max_train: int, g: torch.Generator,
              max_test: int | None = None) -> Dataset:
    """A stratified subsample of the training set (and of the test set, with ``max_test``)."""
    if ds.y_train.numel() > max_train:
        _, keep = stratified_split(ds.y_train, test_size=max_train / ds.y_train.numel(),
                                   seed=int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        ds = dataclasses.replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep])
    if max_test is not None and ds.y_test.numel() > max_test:
        _, keep = stratified_split(ds.y_test, test_size=max_test / ds.y_test.numel(),
                                   seed=int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        ds = dataclasses.replace(ds, x_test=ds.x_test[keep], y_test=ds.y_test[keep])
    return ds


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1%}"


def _images(images: Tensor, labels: list[str], title: str, bounds: tuple[float, float],
            **kw: Any) -> dict[str, Any]:
    return {"kind": "images", "images": images, "labels": labels, "title": title,
            "bounds": bounds, **kw}


def _detection_row(what: str, r: SanitizedRun) -> list[Any]:
    d = r.detection
    return [what, r.method, d.flagged, d.poisoned, round(d.precision, 4), round(d.recall, 4)]


class _Run:
    """State of one :func:`run_poisoning` call (the parts append to it)."""

    def __init__(self, ctx: ScenarioContext, o: PoisoningOptions, sizes: Sizes) -> None:
        self.ctx, self.o, self.sizes = ctx, o, sizes
        self.ds = subsample(ctx.dataset, sizes.max_train, ctx.generator("poisoning/subsample"),
                            sizes.max_test)
        self.cfg = train_config_from_card(  # the audited model's own training recipe
            ctx.card, epochs=sizes.epochs, batch_size=o.batch_size, measure_train_accuracy=False,
            seed=_seed31(ctx.seed, "poisoning/victim"), device=str(ctx.device))
        self.arch, self.norm = ctx.card.architecture, ctx.card.normalization
        make = model_factory(self.arch, input_shape=self.ds.input_shape, classes=self.ds.classes,
                             bounds=self.ds.bounds, normalization=self.norm)
        self.clean = train_on(self.ds.x_train, self.ds.y_train, make_model=make, config=self.cfg)
        self.res = ScenarioResult(name="poisoning")
        self.detections: list[list[Any]] = []
        self.stated = ""
        self.points: dict[str, int] = {}  # rate metric -> the points it was measured on

    def experiment(self, poison: PoisonResult, sanitizers: Sequence[str]) -> PoisoningExperiment:
        return run_poisoning_experiment(
            self.ds, poison, architecture=self.arch, config=self.cfg, sanitizers=sanitizers,
            settings=SanitizerSettings(folds=self.o.folds), clean_model=self.clean,
            normalization=self.norm, seed=_seed31(self.ctx.seed, "poisoning/sanitizer"),
            progress=self.ctx.progress)

    def flips(self) -> None:
        o, ds, ctx, metrics = self.o, self.ds, self.ctx, self.res.metrics
        rows: list[list[Any]] = []
        curves: dict[str, tuple[list[float], list[float]]] = {}
        for attack in o.flip_attacks:
            for san in [None, *o.flip_sanitizers]:
                curves[attack + ("" if san is None else f" + {san}")] = ([], [])
            for rate in o.rates:
                if attack == "random-flip":
                    poison = random_flip(ds.x_train, ds.y_train, rate=rate,
                                         num_classes=ds.num_classes,
                                         generator=ctx.generator(f"poisoning/random-flip/{rate:g}"))
                else:
                    poison = optimized_flip(ds.x_train, ds.y_train, rate=rate,
                                            surrogate=ctx.model, num_classes=ds.num_classes)
                exp = self.experiment(poison, self.sizes.label_sanitizers(o, rate))
                key = f"{attack.replace('-', '_')}_{round(rate * 100)}"
                metrics[f"{key}_accuracy"] = exp.poisoned_accuracy
                metrics[f"{key}_accuracy_drop"] = exp.accuracy_drop
                curves[attack][0].append(rate)
                curves[attack][1].append(exp.poisoned_accuracy)
                row = [attack, f"{rate:.0%}", _pct(exp.clean_accuracy), _pct(exp.poisoned_accuracy)]
                for r in exp.sanitized:
                    curves[f"{attack} + {r.method}"][0].append(rate)
                    curves[f"{attack} + {r.method}"][1].append(r.accuracy)
                    metrics[f"{key}_{r.method}_accuracy"] = r.accuracy
                    metrics[f"{key}_{r.method}_recall"] = r.detection.recall
                    metrics[f"{key}_{r.method}_precision"] = r.detection.precision
                    self.points[f"{key}_{r.method}_recall"] = r.detection.poisoned
                    self.points[f"{key}_{r.method}_precision"] = r.detection.flagged
                    row.append(_pct(r.accuracy))
                    self.detections.append(_detection_row(f"{attack} {rate:.0%}", r))
                row += ["–"] * (len(o.flip_sanitizers) - len(exp.sanitized))  # not run here
                rows.append(row)
                if "flagged" not in self.res.figures and exp.sanitized:
                    self._flagged(poison, exp.sanitized[0], f"{attack} {rate:.0%}")
        columns = ["attack", "rate", "clean model", "poisoned",
                   *[f"+ {s}" for s in o.flip_sanitizers]]
        self.res.tables.append(Table(
            "Accuracy after label poisoning, with and without sanitization", columns, rows,
            caption="Test accuracy of the audited architecture retrained on the poisoned set, "
            f"then on what each sanitizer keeps. Settings: {self.stated}."))
        if any(xs for xs, _ in curves.values()):
            self.res.figures["accuracy_vs_rate"] = {
                "kind": "line", "series": {k: v for k, v in curves.items() if v[0]},
                "title": "Accuracy vs poison rate", "xlabel": "poison rate",
                "ylabel": "test accuracy"}

    def _flagged(self, poison: PoisonResult, first: SanitizedRun, what: str) -> None:
        idx = torch.nonzero(first.result.mask).flatten()[:20]
        if idx.numel():
            classes = self.ds.classes
            labels = [f"{classes[int(poison.y[i])]}{'*' if bool(poison.mask[i]) else ''}"
                      for i in idx]
            self.res.figures["flagged"] = _images(
                poison.x[idx], labels, f"Samples {first.method} flags ({what})", self.ds.bounds,
                caption="Given (poisoned) label above each image; * marks samples the attack "
                "really flipped.")

    def backdoor(self) -> None:
        o, ds, metrics = self.o, self.ds, self.res.metrics
        poison = backdoor(ds.x_train, ds.y_train, target=o.backdoor_target, rate=o.backdoor_rate,
                          bounds=ds.bounds, num_classes=ds.num_classes,
                          generator=self.ctx.generator("poisoning/backdoor"))
        exp = self.experiment(poison, o.backdoor_sanitizers)
        metrics["backdoor_asr"] = float(exp.poisoned_success or 0.0)
        metrics["backdoor_clean_accuracy_drop"] = exp.accuracy_drop
        triggered = int((ds.y_test != o.backdoor_target).sum())  # what the success rate uses
        self.points["backdoor_asr"] = triggered
        rows: list[list[Any]] = [["none", _pct(exp.poisoned_accuracy),
                                  _pct(exp.poisoned_success), "–", "–"]]
        for r in exp.sanitized:
            metrics[f"backdoor_{r.method}_recall"] = r.detection.recall
            metrics[f"backdoor_{r.method}_asr"] = float(r.success or 0.0)
            self.points[f"backdoor_{r.method}_recall"] = r.detection.poisoned
            self.points[f"backdoor_{r.method}_asr"] = triggered
            rows.append([r.method, _pct(r.accuracy), _pct(r.success),
                         round(r.detection.precision, 4), round(r.detection.recall, 4)])
            self.detections.append(_detection_row(f"backdoor {o.backdoor_rate:.0%}", r))
        self.res.tables.append(Table(
            f"Backdoor (BadNets patch, target class {ds.classes[o.backdoor_target]}, "
            f"{o.backdoor_rate:.0%} poisoned)",
            ["sanitizer", "clean accuracy", "attack success rate", "precision", "recall"], rows,
            caption=f"Clean model: accuracy {_pct(exp.clean_accuracy)}, attack success "
            f"{_pct(exp.clean_success)}."))
        if exp.poisoned_success is not None and exp.poisoned_success > 0.5:
            self.res.warnings.append(f"a {o.backdoor_rate:.0%} backdoor reaches "
                                     f"{exp.poisoned_success:.0%} attack success on this "
                                     "architecture")
        shown = torch.nonzero(poison.mask).flatten()[:10]
        self.res.figures["backdoor_poisons"] = _images(
            poison.x[shown], [ds.classes[int(poison.y[i])] for i in shown],
            "Backdoor poisons (trigger stamped)", ds.bounds)

    def collisions(self) -> None:
        ds = self.ds
        trials = run_collision_trials(ds, self.ctx.model, n_targets=self.o.collision_targets,
                                      generator=self.ctx.generator("poisoning/feature-collision"))
        self.res.metrics["collision_success_rate"] = trials.success_rate
        self.points["collision_success_rate"] = trials.n_targets
        self.res.tables.append(Table(
            "Clean-label feature collision (Poison Frogs, last layer retrained)",
            ["test sample", "true class", "base class", "success", "feature distance"],
            [[r["test_index"], ds.classes[r["true"]], ds.classes[r["base"]],
              "yes" if r["success"] else "no", round(r["feature_distance"], 4)]
             for r in trials.rows]))
        if trials.n_targets:
            k = min(5, trials.n_targets)
            rows = trials.rows[:k]
            labels = ([f"target {ds.classes[r['true']]}" for r in rows]
                      + [f"base {ds.classes[r['base']]}" for r in rows]
                      + [f"poison {'✓' if r['success'] else '✗'}" for r in rows])
            imgs = torch.cat([trials.targets[:k], trials.bases[:k], trials.poisons[:k]])
            self.res.figures["collisions"] = _images(
                imgs, labels, "Feature collision: targets, bases, poisons", ds.bounds, ncols=k)


def run_poisoning(ctx: ScenarioContext, options: PoisoningOptions, sizes: Sizes, *,
                  note: str = "") -> ScenarioResult:
    """What poisoned training data does to the audited architecture, and what each sanitizer
    repairs: label flips (:data:`FLIP_ATTACKS`, the audited model as optimized flipping's
    surrogate) at each rate, a BadNets backdoor on image inputs (``backdoor_rate`` > 0), and
    feature collision against ``collision_targets`` test samples with the audited model as
    the fixed feature extractor, within ``sizes``; ``note`` ends the stated settings.
    Figures are data: ``kind`` "line" (``series``) or "images".
    """
    o = options
    if o.backdoor_rate > 0 and not 0 <= o.backdoor_target < ctx.dataset.num_classes:
        raise PoisonError(f"backdoor target {o.backdoor_target} is not a class "
                          f"(0..{ctx.dataset.num_classes - 1})")
    run = _Run(ctx, o, sizes)
    run.stated = sizes.text(run.ds, note)
    run.flips()
    if len(run.ds.input_shape) == 3 and o.backdoor_rate > 0:
        run.backdoor()
    if o.collision_targets > 0:
        run.collisions()
    res, metrics = run.res, run.res.metrics
    res.tables.append(Table("Detection of poisoned samples",
                            ["attack", "sanitizer", "flagged", "poisoned", "precision", "recall"],
                            run.detections))
    worst = max((v for k, v in metrics.items() if k.endswith("_accuracy_drop")), default=0.0)
    res.summary = f"worst accuracy drop from label poisoning {worst:.1%}"
    if "backdoor_asr" in metrics:
        res.summary += f"; backdoor attack success {metrics['backdoor_asr']:.0%}"
    if "collision_success_rate" in metrics:
        res.summary += f"; feature collision {metrics['collision_success_rate']:.0%}"
    res.details = {"settings": run.stated,
                   "training_samples": int(run.ds.y_train.numel()),
                   "test_samples": int(run.ds.y_test.numel()), "epochs": sizes.epochs,
                   "rate_points": run.points}
    return res


__all__ = ["FLIP_ATTACKS", "POISON_ATTACKS", "SANITIZERS", "SURROGATE_ATTACKS", "CollisionTrials",
           "PoisonError", "PoisonResult", "PoisoningExperiment", "PoisoningOptions",
           "SanitizedRun", "Sizes", "Trigger", "poison_dataset", "run_collision_trials",
           "run_poisoning", "run_poisoning_experiment", "sanitize_dataset", "subsample"]
