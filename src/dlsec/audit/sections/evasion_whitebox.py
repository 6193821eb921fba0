"""Section "Evasion (white-box)": robust accuracy vs epsilon per gradient attack, example
adversarials, and the warnings that say when the evaluation cannot be trusted (the
scenario :func:`dlsec.scenarios.whitebox.robustness`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dlsec.audit.context import AuditContext
from dlsec.audit.result import Figure, SectionResult
from dlsec.audit.sections import register_section
from dlsec.audit.sections.privacy import rate_cells
from dlsec.intervals import rate_interval, rate_record
from dlsec.scenarios.whitebox import WhiteBoxOptions, eps_grid, robustness
from dlsec.threat import ThreatModel


@dataclass
class EvasionOptions(WhiteBoxOptions):
    """``[evasion]`` table of audit.toml: the threat (``norm``; ``eps`` in input units,
    empty: a default grid scaled to the card's bounds) and the scenario's options
    (:class:`dlsec.scenarios.whitebox.WhiteBoxOptions`: ``attacks``, ``ensemble``,
    ``ensemble-eps``, ``samples``, ``steps``, ``adversarial-training``, ``at-eps``,
    ``at-epochs``, ``amp``: off, bf16 or fp16 on CUDA, the precision the attacks search in;
    verdicts are float32)."""

    norm: str = "linf"
    eps: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm: must be linf or l2, got {self.norm!r}")
        if any(not 0 <= e < float("inf") for e in (*self.eps, *self.ensemble_eps, self.at_eps)):
            raise ValueError("eps, ensemble-eps and at-eps: values must be finite and >= 0")
        super().__post_init__()
        self.check_attacks(self.norm)


def bands(ys: list[float], n: int) -> tuple[list[float], list[float]]:
    """The Wilson 95% band ``(lows, highs)`` of rates ``ys`` each measured on ``n`` points.

    Example:
        >>> [[round(v, 4) for v in side] for side in bands([0.5, 1.0], 10)]
        [[0.2366, 0.7225], [0.7634, 1.0]]
    """
    pairs = [rate_interval(float(y), n) for y in ys]
    return [lo for lo, _ in pairs], [hi for _, hi in pairs]


@register_section("evasion", title="Evasion (white-box)", order=50, options=EvasionOptions,
                  version=5)
def run(ctx: AuditContext, options: EvasionOptions) -> SectionResult:
    from dlsec.audit.report.plots import image_grid, line_chart
    from dlsec.audit.runner import train_config

    eps = sorted(float(e) for e in options.eps) or eps_grid(options.norm, ctx.card.bounds)
    threat = ThreatModel.from_card(ctx.card, norm=options.norm, eps=tuple(eps))
    config = train_config(ctx.config, ctx.dataset) if options.adversarial_training else None
    result = robustness(ctx.scenario(threat), options, train_config=config)
    plots: dict[str, Callable[..., Figure]] = {"line_chart": line_chart, "image_grid": image_grid}
    n = min(options.samples, len(ctx.dataset.y_test))  # the first test points (attacker_split)
    figures = []
    for data in result.figures.values():
        spec = {k: v for k, v in data.items() if k != "kind"}
        if data["kind"] == "line_chart":  # shade the "all attacks" curves' Wilson intervals
            spec["bands"] = {name: bands(ys, n) for name, (_, ys) in spec["series"].items()
                             if name.startswith("all attacks")}
            spec["caption"] = (spec.get("caption", "") + f" Shaded: Wilson 95% intervals on the "
                               f"{n} attacked test points.").strip()
        figures.append(plots[data["kind"]](**spec))
    intervals = {k: rate_record(v, n) for k, v in result.metrics.items()
                 if k.startswith(("clean_accuracy", "robust_accuracy"))}
    summary = result.summary
    clean = intervals.get("clean_accuracy")
    if clean is not None and summary.endswith(f"{result.metrics['clean_accuracy']:.1%}"):
        summary += f" [{clean['lower']:.1%}, {clean['upper']:.1%}]"
    return SectionResult(
        name="evasion", title="Evasion (white-box)", summary=summary,
        metrics=result.metrics, figures=figures,
        tables=[rate_cells(t, {"robust accuracy": n, "success rate": n}) for t in result.tables],
        warnings=result.warnings, details={**result.details, "points": n}, intervals=intervals,
    )
