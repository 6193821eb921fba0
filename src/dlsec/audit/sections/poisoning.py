"""Section "Poisoning": what poisoned training data does to this model's architecture, and
how much each sanitizer repairs.

Retrains the audited architecture (same card, normalization and audit training
settings, ``epochs`` from the options) on poisoned copies of the training set: label
flipping (random and surrogate-optimized, the audited model as the surrogate) at each
rate, with and without each label sanitizer; a BadNets backdoor with and without each
representation sanitizer; and clean-label feature collision against a few test samples
with the audited model as the fixed feature extractor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult, Table
from dlsec.audit.sections import register_section
from dlsec.audit.sections._scale import auto, is_large, size_note


@dataclass
class PoisoningOptions:
    """Keys of the ``[poisoning]`` table of ``audit.toml``.

    ``epochs``, ``max-train`` and ``max-test`` at 0 are automatic, scaled to the input
    size (see :mod:`dlsec.audit.sections._scale`): every retrained victim trains for 10
    epochs on up to 2,000 training samples and is scored on the whole test set for
    small inputs (the digits data), for 3 epochs on up to 1,000 samples scored on 1,000
    test samples for large ones (a 28 x 28 image), where the label sanitizers also run
    at the lowest rate only. The poisons are the same either way.
    """

    rates: list[float] = field(default_factory=lambda: [0.2, 0.4])
    flip_attacks: list[str] = field(default_factory=lambda: ["random-flip", "optimized-flip"])
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
        from dlsec.defenses.sanitization import SANITIZERS

        if any(not 0 < r < 1 for r in self.rates) or not 0 <= self.backdoor_rate < 1:
            raise ValueError("rates: each in (0, 1); backdoor-rate in [0, 1) (0: no backdoor)")
        bad = [a for a in self.flip_attacks if a not in ("random-flip", "optimized-flip")]
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
class _Scaled:
    """The options' automatic values resolved for this input size."""

    epochs: int
    max_train: int
    max_test: int | None  # None: the whole test set
    sanitize_every_rate: bool = True  # else the label sanitizers run at the lowest rate only

    @classmethod
    def of(cls, o: PoisoningOptions, card) -> _Scaled:
        large = is_large(card)
        return cls(auto(o.epochs, card, small=10, large=3),
                   auto(o.max_train, card, small=2000, large=1000),
                   o.max_test or (1000 if large else None), not large)

    def sanitizers(self, o: PoisoningOptions, rate: float) -> list[str]:
        """The label sanitizers run against flips at ``rate``."""
        return list(o.flip_sanitizers) if self.sanitize_every_rate or rate == min(o.rates) else []

    def text(self, ds, card) -> str:
        test = "the whole test set" if self.max_test is None else f"{ds.y_test.numel()} test samples"
        where = "every rate" if self.sanitize_every_rate else "the lowest rate only"
        return (f"each victim trains for {self.epochs} epochs on {ds.y_train.numel()} training "
                f"samples (at most {self.max_train}) and is scored on {test}; label "
                f"sanitizers run at {where}; {size_note(card)}")


def _subsample(ds, max_train: int, g: torch.Generator, max_test: int | None = None):
    """A stratified subsample of the training set (and of the test set, with ``max_test``)."""
    from dlsec.data import stratified_split

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


@register_section("poisoning", title="Poisoning", order=60, options=PoisoningOptions,
                  version=2)
def run(ctx: AuditContext, options: PoisoningOptions) -> SectionResult:
    from dlsec.attacks.poisoning import (
        backdoor,
        optimized_flip,
        random_flip,
        run_collision_trials,
        run_poisoning_experiment,
    )
    from dlsec.audit.report.plots import image_grid, line_chart
    from dlsec.defenses.sanitization import SanitizerSettings, model_factory, train_on
    from dlsec.training import TrainConfig

    o = options
    if o.backdoor_rate > 0 and o.backdoor_target >= ctx.dataset.num_classes:
        from dlsec.audit.config import ConfigError

        raise ConfigError(f"[poisoning] backdoor-target: {o.backdoor_target} is not a class of "
                          f"{ctx.dataset.name} (0..{ctx.dataset.num_classes - 1})")
    scaled = _Scaled.of(o, ctx.card)
    ds = _subsample(ctx.dataset, scaled.max_train, ctx.generator(60), scaled.max_test)
    stated = scaled.text(ds, ctx.card)
    cfg = TrainConfig(epochs=scaled.epochs, batch_size=o.batch_size, lr=ctx.config.lr,
                      optimizer=ctx.config.optimizer,  # type: ignore[arg-type]
                      seed=ctx.config.seed, device=str(ctx.device),
                      measure_train_accuracy=False)
    settings = SanitizerSettings(folds=o.folds)
    arch, norm = ctx.card.architecture, ctx.card.normalization
    make = model_factory(arch, input_shape=ds.input_shape, classes=ds.classes, bounds=ds.bounds,
                         normalization=norm)
    clean = train_on(ds.x_train, ds.y_train, make_model=make, config=cfg)
    metrics: dict[str, float] = {}
    rows, det_rows, warnings = [], [], []
    curves: dict[str, tuple[list[float], list[float]]] = {}
    flagged_fig = None
    for attack in o.flip_attacks:
        for san in [None, *o.flip_sanitizers]:
            curves[attack + ("" if san is None else f" + {san}")] = ([], [])
        for j, rate in enumerate(o.rates):
            if attack == "random-flip":
                poison = random_flip(ds.x_train, ds.y_train, rate=rate, num_classes=ds.num_classes,
                                     generator=ctx.generator(600 + j))
            elif attack == "optimized-flip":
                poison = optimized_flip(ds.x_train, ds.y_train, rate=rate, surrogate=ctx.model,
                                        num_classes=ds.num_classes)
            else:
                warnings.append(f"unknown flip attack {attack!r} skipped")
                break
            exp = run_poisoning_experiment(ds, poison, architecture=arch, config=cfg,
                                           sanitizers=scaled.sanitizers(o, rate),
                                           settings=settings,
                                           clean_model=clean, normalization=norm,
                                           seed=ctx.config.seed)
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
                row.append(_pct(r.accuracy))
                det_rows.append([f"{attack} {rate:.0%}", r.method, r.detection.flagged,
                                 r.detection.poisoned, round(r.detection.precision, 4),
                                 round(r.detection.recall, 4)])
            row += ["–"] * (len(o.flip_sanitizers) - len(exp.sanitized))  # not run at this rate
            rows.append(row)
            if flagged_fig is None and exp.sanitized:
                first = exp.sanitized[0]
                idx = torch.nonzero(first.result.mask).flatten()[:20]
                if idx.numel():
                    labels = [f"{ds.classes[int(poison.y[i])]}"
                              f"{'*' if bool(poison.mask[i]) else ''}" for i in idx]
                    flagged_fig = image_grid(
                        poison.x[idx], labels, bounds=ds.bounds,
                        title=f"Samples {first.method} flags ({attack} {rate:.0%})",
                        caption="Given (poisoned) label above each image; * marks samples the "
                        "attack really flipped.")
    columns = ["attack", "rate", "clean model", "poisoned", *[f"+ {s}" for s in o.flip_sanitizers]]
    tables = [Table("Accuracy after label poisoning, with and without sanitization", columns,
                    rows, caption="Test accuracy of the audited architecture retrained on the "
                    f"poisoned set, then on what each sanitizer keeps. Settings: {stated}.")]
    figures = []
    if any(xs for xs, _ in curves.values()):
        figures.append(line_chart({k: v for k, v in curves.items() if v[0]},
                                  title="Accuracy vs poison rate", xlabel="poison rate",
                                  ylabel="test accuracy"))
    if flagged_fig is not None:
        figures.append(flagged_fig)

    if len(ds.input_shape) == 3 and o.backdoor_rate > 0:
        poison = backdoor(ds.x_train, ds.y_train, target=o.backdoor_target, rate=o.backdoor_rate,
                          bounds=ds.bounds, num_classes=ds.num_classes,
                          generator=ctx.generator(610))
        exp = run_poisoning_experiment(ds, poison, architecture=arch, config=cfg,
                                       sanitizers=o.backdoor_sanitizers, settings=settings,
                                       clean_model=clean, normalization=norm,
                                       seed=ctx.config.seed)
        metrics["backdoor_asr"] = float(exp.poisoned_success or 0.0)
        metrics["backdoor_clean_accuracy_drop"] = exp.accuracy_drop
        bd_rows: list[list[Any]] = [["none", _pct(exp.poisoned_accuracy), _pct(exp.poisoned_success), "–", "–"]]
        for r in exp.sanitized:
            metrics[f"backdoor_{r.method}_recall"] = r.detection.recall
            metrics[f"backdoor_{r.method}_asr"] = float(r.success or 0.0)
            bd_rows.append([r.method, _pct(r.accuracy), _pct(r.success),
                            round(r.detection.precision, 4), round(r.detection.recall, 4)])
            det_rows.append([f"backdoor {o.backdoor_rate:.0%}", r.method, r.detection.flagged,
                             r.detection.poisoned, round(r.detection.precision, 4),
                             round(r.detection.recall, 4)])
        tables.append(Table(
            f"Backdoor (BadNets patch, target class {ds.classes[o.backdoor_target]}, "
            f"{o.backdoor_rate:.0%} poisoned)",
            ["sanitizer", "clean accuracy", "attack success rate", "precision", "recall"], bd_rows,
            caption=f"Clean model: accuracy {_pct(exp.clean_accuracy)}, attack success "
            f"{_pct(exp.clean_success)}."))
        if exp.poisoned_success is not None and exp.poisoned_success > 0.5:
            warnings.append(f"a {o.backdoor_rate:.0%} backdoor reaches {exp.poisoned_success:.0%} "
                            "attack success on this architecture")
        shown = torch.nonzero(poison.mask).flatten()[:10]
        figures.append(image_grid(poison.x[shown], [ds.classes[int(poison.y[i])] for i in shown],
                                  bounds=ds.bounds, title="Backdoor poisons (trigger stamped)"))
    if o.collision_targets > 0:
        trials = run_collision_trials(ds, ctx.model, n_targets=o.collision_targets,
                                      generator=ctx.generator(620))
        metrics["collision_success_rate"] = trials.success_rate
        tables.append(Table(
            "Clean-label feature collision (Poison Frogs, last layer retrained)",
            ["test sample", "true class", "base class", "success", "feature distance"],
            [[r["test_index"], ds.classes[r["true"]], ds.classes[r["base"]],
              "yes" if r["success"] else "no", round(r["feature_distance"], 4)]
             for r in trials.rows]))
        if trials.n_targets:
            k = min(5, trials.n_targets)
            imgs = torch.cat([trials.targets[:k], trials.bases[:k], trials.poisons[:k]])
            labels = ([f"target {ds.classes[r['true']]}" for r in trials.rows[:k]]
                      + [f"base {ds.classes[r['base']]}" for r in trials.rows[:k]]
                      + [f"poison {'✓' if r['success'] else '✗'}" for r in trials.rows[:k]])
            figures.append(image_grid(imgs, labels, ncols=k, bounds=ds.bounds,
                                      title="Feature collision: targets, bases, poisons"))
    tables.append(Table("Detection of poisoned samples",
                        ["attack", "sanitizer", "flagged", "poisoned", "precision", "recall"],
                        det_rows))
    worst = max((v for k, v in metrics.items() if k.endswith("_accuracy_drop")), default=0.0)
    summary = f"worst accuracy drop from label poisoning {worst:.1%}"
    if "backdoor_asr" in metrics:
        summary += f"; backdoor attack success {metrics['backdoor_asr']:.0%}"
    if "collision_success_rate" in metrics:
        summary += f"; feature collision {metrics['collision_success_rate']:.0%}"
    return SectionResult(name="poisoning", title="Poisoning", summary=summary, metrics=metrics,
                         tables=tables, figures=figures, warnings=warnings,
                         details={"settings": stated,
                                  "training_samples": int(ds.y_train.numel()),
                                  "test_samples": int(ds.y_test.numel()),
                                  "epochs": scaled.epochs})
