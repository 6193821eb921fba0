"""Poisoning, wired once (the audit's Poisoning section, ``dlsec poison``/``dlsec sanitize``
and benchmarks/poisoning.py run through here): poison, train, measure; sanitize, retrain,
measure again. Seeds are named streams of the run seed (``poisoning/random-flip``,
``poisoning/victim``). Every training (victims, cross-validation folds, retrains) is a
named task on an executor (:mod:`dlsec.executor`; ``ScenarioContext.executor`` in
:func:`run_poisoning`), batched so that a Ray executor trains them in parallel.

Example:
    >>> ds = load_dataset("digits")
    >>> poison = poison_dataset("random-flip", ds, seed=0, rate=0.2)
    >>> exp = run_poisoning_experiment(ds, poison, architecture="simplenet",
    ...                                sanitizers=("cleanlab",))        # doctest: +SKIP
    >>> exp.sanitized[0].detection.recall, exp.sanitized[0].recovered  # doctest: +SKIP
"""

from __future__ import annotations

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
from dlsec.attacks.surrogate import train_config_from_card
from dlsec.data import Dataset, stratified_split
from dlsec.defenses.sanitization import (
    SANITIZERS,
    Detection,
    SanitizationResult,
    SanitizerSettings,
    detection_metrics,
    model_factory,
    sanitize,
    stratified_folds,
    train_on,
)
from dlsec.executor import Executor, SequentialExecutor, Task
from dlsec.scenarios.collision import CollisionTrials, run_collision_trials
from dlsec.scenarios.context import ScenarioContext, stream_seed
from dlsec.scenarios.result import ScenarioResult, Table
from dlsec.training import TrainConfig, evaluate, predict_logits, resolve_device

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


@dataclass(frozen=True)
class _Builder:
    """Fresh, untrained networks of one architecture (what ``model_factory`` builds), as a
    picklable object so that a training can run as an executor's task."""

    architecture: str
    input_shape: tuple[int, ...]
    classes: tuple[str, ...]
    bounds: tuple[float, float]
    normalization: dict[str, list[float]] | None = None

    def __call__(self) -> nn.Module:
        return model_factory(self.architecture, input_shape=self.input_shape,
                             classes=self.classes, bounds=self.bounds,
                             normalization=self.normalization)()


def _builder(architecture: str, ds: Dataset,
             normalization: dict[str, list[float]] | None = None) -> _Builder:
    return _Builder(architecture, tuple(ds.input_shape), tuple(ds.classes),
                    (float(ds.bounds[0]), float(ds.bounds[1])), normalization)


def _train(make: _Builder, x: Tensor, y: Tensor, config: TrainConfig,
           seed: int) -> tuple[nn.Module, float]:
    """One training (an executor's task, here or in a Ray worker): :func:`train_on` under
    ``seed``; the model handed back on the CPU with the seconds it took."""
    t0 = time.perf_counter()
    model = train_on(x, y, make_model=make, config=config, seed=seed)
    return model.cpu(), time.perf_counter() - t0


def _task(name: str, make: _Builder, x: Tensor, y: Tensor, config: TrainConfig,
          seed: int) -> Task:
    return name, (make, x.detach().cpu(), y.cpu(), config, seed)


def _fold_tasks(name: str, make: _Builder, x: Tensor, y: Tensor, config: TrainConfig,
                folds: int) -> tuple[list[Task], Tensor]:
    """The trainings of :func:`cross_val_probs` as tasks ``<name>/fold<f>`` (fold ``f``'s
    model on the other folds under seed ``config.seed + f``), and the fold of each sample."""
    fold = stratified_folds(y, folds, seed=config.seed)
    tasks = []
    for f in range(folds):
        idx = torch.nonzero(fold != f).flatten()
        tasks.append(_task(f"{name}/fold{f}", make, x[idx.to(x.device)], y[idx.to(y.device)],
                           config, config.seed + f))
    return tasks, fold


def _fold_probs(models: Sequence[nn.Module], fold: Tensor, x: Tensor,
                num_classes: int) -> Tensor:
    """What :func:`cross_val_probs` returns, from the models of :func:`_fold_tasks`."""
    probs = torch.zeros(fold.numel(), num_classes)
    for f, model in enumerate(models):
        idx = torch.nonzero(fold == f).flatten()
        probs[idx] = predict_logits(model, x[idx.to(x.device)]).softmax(1).float().cpu()
    return probs


def _trained(executor: Executor, tasks: list[Task], device: torch.device, what: str,
             progress: bool) -> list[tuple[nn.Module, float]]:
    """``tasks`` (of :func:`_train`) run on ``executor``; the models moved to ``device``."""
    if not tasks:
        return []
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        bar.add_task(f"{what} ({len(tasks)} trainings, {executor.describe()})", total=None)
        done = executor.map(_train, tasks)
    return [(model.to(device), seconds) for model, seconds in done]


class _Experiment:
    """One poisoned set's trainings and measurements (:func:`run_poisoning_experiment`), in
    the two phases :func:`_run_experiments` batches over many sets: the poisoned victim and
    the cross-validation folds, then one retrain per sanitizer. Task names start with
    ``name``: ``<name>/victim``, ``<name>/fold<f>``, ``<name>/<sanitizer>/retrain``."""

    def __init__(self, name: str, dataset: Dataset, poison: PoisonResult, *, make: _Builder,
                 config: TrainConfig, sanitizers: Sequence[str],
                 settings: SanitizerSettings | None, seed: int) -> None:
        self.name, self.ds, self.poison = name, dataset, poison
        self.make, self.config = make, config
        self.sanitizers, self.settings, self.seed = list(sanitizers), settings, seed
        self.folds = (settings or SanitizerSettings()).folds if any(
            m in ("cleanlab", "loss") for m in self.sanitizers) else 0
        self.fold: Tensor | None = None
        self.exp: PoisoningExperiment | None = None
        self.results: dict[str, tuple[SanitizationResult, float]] = {}

    def trainings(self) -> list[Task]:
        """Phase 1: the poisoned victim, then the folds."""
        p = self.poison
        tasks = [_task(f"{self.name}/victim", self.make, p.x, p.y, self.config, self.config.seed)]
        if self.folds:
            folds, self.fold = _fold_tasks(self.name, self.make, p.x, p.y, self.config,
                                           self.folds)
            tasks += folds
        return tasks

    def retrains(self, clean: nn.Module, trained: list[tuple[nn.Module, float]]) -> list[Task]:
        """Phase 2, given ``clean`` and what :meth:`trainings` trained: measure the victim,
        run each sanitizer here, and return the retrains on what each keeps."""
        p, ds = self.poison, self.ds
        victim = trained[0][0]
        self.exp = PoisoningExperiment(
            attack=p.attack, rate=p.rate, n_poisoned=p.n_poisoned,
            clean_accuracy=evaluate(clean, ds.x_test, ds.y_test)["accuracy"],
            poisoned_accuracy=evaluate(victim, ds.x_test, ds.y_test)["accuracy"],
            clean_success=_success(p, clean, ds), poisoned_success=_success(p, victim, ds),
            poison=p, poisoned_model=victim,
        )
        probs = None
        if self.fold is not None:
            probs = _fold_probs([m for m, _ in trained[1:]], self.fold, p.x, ds.num_classes)
        tasks = []
        for method in dict.fromkeys(self.sanitizers):
            t0 = time.perf_counter()
            res = sanitize(method, p.x, p.y, num_classes=ds.num_classes, make_model=self.make,
                           config=self.config, model=victim, pred_probs=probs,
                           settings=self.settings, seed=self.seed)
            keep = res.keep().to(p.x.device)
            if keep.numel() == 0:
                raise PoisonError(f"sanitizer {method!r} removed every sample")
            self.results[method] = res, time.perf_counter() - t0
            tasks.append(_task(f"{self.name}/{method}/retrain", self.make, p.x[keep],
                               p.y[keep.to(p.y.device)], self.config, self.config.seed))
        return tasks

    def finish(self, retrained: list[tuple[nn.Module, float]]) -> PoisoningExperiment:
        """The experiment, given the models :meth:`retrains` asked for."""
        exp, p, ds = self.exp, self.poison, self.ds
        assert exp is not None
        models = dict(zip(self.results, retrained, strict=True))
        drop = exp.clean_accuracy - exp.poisoned_accuracy
        for method in self.sanitizers:
            (model, train_seconds), (res, seconds) = models[method], self.results[method]
            acc = evaluate(model, ds.x_test, ds.y_test)["accuracy"]
            exp.sanitized.append(SanitizedRun(
                method=method, detection=detection_metrics(res.mask, p.mask.cpu()),
                accuracy=acc, success=_success(p, model, ds),
                recovered=(acc - exp.poisoned_accuracy) / drop if drop > 0 else None,
                seconds=seconds + train_seconds, result=res,
            ))
        return exp


def _run_experiments(experiments: Sequence[_Experiment], *, clean: nn.Module | None,
                     executor: Executor, progress: bool) -> list[PoisoningExperiment]:
    """Every training of ``experiments`` (all sharing one dataset, architecture and
    recipe) in two :meth:`Executor.map` calls: the clean model (task ``poisoning/clean``,
    unless given), the victims and the folds; then every sanitizer's retrain."""
    if not experiments:
        return []
    first = experiments[0]
    device = resolve_device(first.config.device)
    tasks = [] if clean is not None else [
        _task("poisoning/clean", first.make, first.ds.x_train, first.ds.y_train, first.config,
              first.config.seed)]
    per = [e.trainings() for e in experiments]
    done = _trained(executor, tasks + [t for ts in per for t in ts], device,
                    "poisoned victims", progress)
    if clean is None:
        clean = done.pop(0)[0]
    retrains, at = [], 0
    for e, ts in zip(experiments, per, strict=True):
        retrains.append(e.retrains(clean, done[at : at + len(ts)]))
        at += len(ts)
    done = _trained(executor, [t for ts in retrains for t in ts], device,
                    "retraining on what the sanitizers kept", progress)
    out, at = [], 0
    for e, ts in zip(experiments, retrains, strict=True):
        out.append(e.finish(done[at : at + len(ts)]))
        at += len(ts)
    return out


def run_poisoning_experiment(dataset: Dataset, poison: PoisonResult, *,
                             architecture: str = "simplenet", config: TrainConfig | None = None,
                             sanitizers: Sequence[str] = (),
                             settings: SanitizerSettings | None = None,
                             clean_model: nn.Module | None = None,
                             normalization: dict[str, list[float]] | None = None, seed: int = 0,
                             progress: bool = False,
                             executor: Executor | None = None) -> PoisoningExperiment:
    """Measure ``poison``'s damage and what each sanitizer in ``sanitizers`` repairs.

    Every model is a task on ``executor`` (default: a
    :class:`~dlsec.executor.SequentialExecutor` here; a Ray executor trains them in
    parallel, with bit-identical weights): first the clean model (``poisoning/clean``), the
    poisoned one (``poisoning/<attack>/<rate>/victim``) and the cross-validation folds of
    cleanlab and loss (``.../fold<f>``), then one retrain per sanitizer
    (``.../<sanitizer>/retrain``). The sanitizers themselves run here.

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
        executor: where the trainings run.
    """
    config = config or TrainConfig(epochs=30, lr=3e-3)
    exp = _Experiment(f"poisoning/{poison.attack}/{poison.rate:g}", dataset, poison,
                      make=_builder(architecture, dataset, normalization), config=config,
                      sanitizers=sanitizers, settings=settings, seed=seed)
    return _run_experiments([exp], clean=clean_model, executor=executor or SequentialExecutor(),
                            progress=progress)[0]


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
                     progress: bool = False, executor: Executor | None = None,
                     ) -> tuple[SanitizationResult, Detection | None]:
    """Run sanitizer ``method`` on ``dataset``'s training split; score it against ``truth``
    (the attack's poison mask) when given. The sanitizer's models are ``architecture``
    networks trained for ``epochs`` (lr 3e-3), as tasks on ``executor`` (default: one after
    another here): the cross-validation folds of cleanlab and loss
    (``sanitize/<method>/fold<f>``) or the model whose features spectral and activation
    read (``sanitize/<method>/model``). Their seeds are the streams
    ``poisoning/sanitizer-models`` and ``poisoning/sanitizer`` of ``seed``."""
    if method not in SANITIZERS:
        raise PoisonError(f"unknown sanitizer {method!r} (choose from {', '.join(SANITIZERS)})")
    ds = dataset
    make = _builder(architecture, ds)
    config = TrainConfig(epochs=epochs, lr=3e-3, seed=_seed31(seed, "poisoning/sanitizer-models"))
    x, y, name = ds.x_train, ds.y_train, f"sanitize/{method}"
    tasks: list[Task] = []
    fold = None
    if method in ("cleanlab", "loss"):
        tasks, fold = _fold_tasks(name, make, x, y, config, folds)
    elif method in ("spectral", "activation"):
        tasks = [_task(f"{name}/model", make, x, y, config, config.seed)]
    models = [m for m, _ in _trained(executor or SequentialExecutor(), tasks,
                                     resolve_device(config.device), f"sanitizer {method}",
                                     progress)]
    probs = None if fold is None else _fold_probs(models, fold, x, ds.num_classes)
    res = sanitize(method, x, y, num_classes=ds.num_classes, make_model=make, config=config,
                   model=models[0] if fold is None and models else None, pred_probs=probs,
                   settings=SanitizerSettings(folds=folds),
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
        self.make = _builder(ctx.card.architecture, self.ds, ctx.card.normalization)
        self.res = ScenarioResult(name="poisoning")
        self.detections: list[list[Any]] = []
        self.stated = ""
        self.points: dict[str, int] = {}  # rate metric -> the points it was measured on

    def experiment(self, name: str, poison: PoisonResult,
                   sanitizers: Sequence[str]) -> _Experiment:
        """The experiment on ``poison`` (its tasks named ``poisoning/<name>/...``)."""
        return _Experiment(f"poisoning/{name}", self.ds, poison, make=self.make, config=self.cfg,
                           sanitizers=sanitizers, settings=SanitizerSettings(folds=self.o.folds),
                           seed=_seed31(self.ctx.seed, "poisoning/sanitizer"))

    def flip_experiments(self) -> list[_Experiment]:
        """One experiment per flip attack and rate, in the order :meth:`flips` reports them."""
        o, ds, ctx = self.o, self.ds, self.ctx
        out = []
        for attack in o.flip_attacks:
            for rate in o.rates:
                if attack == "random-flip":
                    poison = random_flip(ds.x_train, ds.y_train, rate=rate,
                                         num_classes=ds.num_classes,
                                         generator=ctx.generator(f"poisoning/random-flip/{rate:g}"))
                else:
                    poison = optimized_flip(ds.x_train, ds.y_train, rate=rate,
                                            surrogate=ctx.model, num_classes=ds.num_classes)
                out.append(self.experiment(f"{attack}/{rate:g}", poison,
                                           self.sizes.label_sanitizers(o, rate)))
        return out

    def flips(self, experiments: Sequence[PoisoningExperiment]) -> None:
        o, metrics = self.o, self.res.metrics
        rows: list[list[Any]] = []
        curves: dict[str, tuple[list[float], list[float]]] = {}
        done = iter(experiments)
        for attack in o.flip_attacks:
            for san in [None, *o.flip_sanitizers]:
                curves[attack + ("" if san is None else f" + {san}")] = ([], [])
            for rate in o.rates:
                exp = next(done)
                poison = exp.poison
                assert poison is not None
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

    def backdoor_experiment(self) -> _Experiment:
        o, ds = self.o, self.ds
        poison = backdoor(ds.x_train, ds.y_train, target=o.backdoor_target, rate=o.backdoor_rate,
                          bounds=ds.bounds, num_classes=ds.num_classes,
                          generator=self.ctx.generator("poisoning/backdoor"))
        return self.experiment(f"backdoor/{o.backdoor_rate:g}", poison, o.backdoor_sanitizers)

    def backdoor(self, exp: PoisoningExperiment) -> None:
        o, ds, metrics = self.o, self.ds, self.res.metrics
        poison = exp.poison
        assert poison is not None
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
    experiments = run.flip_experiments()
    with_backdoor = len(run.ds.input_shape) == 3 and o.backdoor_rate > 0
    if with_backdoor:
        experiments.append(run.backdoor_experiment())
    done = _run_experiments(experiments, clean=None, executor=ctx.executor,
                            progress=ctx.progress)
    run.flips(done[: len(done) - with_backdoor])
    if with_backdoor:
        run.backdoor(done[-1])
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
