"""Section "Poisoning": what poisoned training data does to this model's architecture, and
how much each sanitizer repairs (the experiment is
:func:`dlsec.scenarios.poisoning.run_poisoning`; this file resolves the options and renders).

Retrains the audited architecture (same card, normalization and training recipe,
``epochs`` from the options) on poisoned copies of the training set: label flipping
(random and surrogate-optimized, the audited model as the surrogate) at each rate, with
and without each label sanitizer; a BadNets backdoor with and without each
representation sanitizer; and clean-label feature collision against a few test samples
with the audited model as the fixed feature extractor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult
from dlsec.audit.sections import register_section
from dlsec.audit.sections._scale import auto, is_large, size_note
from dlsec.models import CardLike

if TYPE_CHECKING:
    from dlsec.scenarios.poisoning import PoisoningScenarioOptions


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
        from dlsec.scenarios.poisoning import FLIP_ATTACKS, SANITIZERS

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
class _Scaled:
    """The options' automatic values resolved for this input size."""

    epochs: int
    max_train: int
    max_test: int | None  # None: the whole test set
    sanitize_every_rate: bool = True  # else the label sanitizers run at the lowest rate only

    @classmethod
    def of(cls, o: PoisoningOptions, card: CardLike) -> _Scaled:
        large = is_large(card)
        return cls(auto(o.epochs, card, small=10, large=3),
                   auto(o.max_train, card, small=2000, large=1000),
                   o.max_test or (1000 if large else None), not large)


def scenario_options(o: PoisoningOptions, card: CardLike) -> PoisoningScenarioOptions:
    """The scenario's settings: the options with their automatic values resolved."""
    from dlsec.scenarios.poisoning import PoisoningScenarioOptions

    s = _Scaled.of(o, card)
    return PoisoningScenarioOptions(
        rates=list(o.rates), flip_attacks=list(o.flip_attacks),
        flip_sanitizers=list(o.flip_sanitizers), backdoor_rate=o.backdoor_rate,
        backdoor_target=o.backdoor_target, backdoor_sanitizers=list(o.backdoor_sanitizers),
        collision_targets=o.collision_targets, epochs=s.epochs, batch_size=o.batch_size,
        folds=o.folds, max_train=s.max_train, max_test=s.max_test,
        sanitize_every_rate=s.sanitize_every_rate, note=size_note(card))


@register_section("poisoning", title="Poisoning", order=60, options=PoisoningOptions,
                  version=3)
def run(ctx: AuditContext, options: PoisoningOptions) -> SectionResult:
    from dlsec.audit.report.plots import image_grid, line_chart
    from dlsec.scenarios.poisoning import run_poisoning

    o = options
    if o.backdoor_rate > 0 and o.backdoor_target >= ctx.dataset.num_classes:
        from dlsec.audit.config import ConfigError

        raise ConfigError(f"[poisoning] backdoor-target: {o.backdoor_target} is not a class of "
                          f"{ctx.dataset.name} (0..{ctx.dataset.num_classes - 1})")
    res = run_poisoning(ctx.scenario(), scenario_options(o, ctx.card))
    figures = []
    for fig in res.figures.values():
        spec = {k: v for k, v in fig.items() if k != "kind"}
        figures.append(line_chart(**spec) if fig["kind"] == "line" else image_grid(**spec))
    return SectionResult(name="poisoning", title="Poisoning", summary=res.summary,
                         metrics=res.metrics, tables=res.tables, figures=figures,
                         warnings=res.warnings, details=res.details)
