"""Section "Evasion (black-box)": what an attacker who sees only the model's API gets: query
attacks, transfer attacks and the white-box comparison that flags gradient masking.

The experiment is :func:`dlsec.scenarios.blackbox.evaluate` (its module and
:mod:`dlsec.scenarios.transfer` say which points are attacked and which the attacker
holds); this section maps its options onto it and renders the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult
from dlsec.audit.sections import register_section
from dlsec.audit.sections._scale import auto, size_note
from dlsec.audit.sections.privacy import rate_cells
from dlsec.intervals import rate_interval, rate_record
from dlsec.scenarios.blackbox import QueryOptions, evaluate
from dlsec.scenarios.transfer import TransferOptions, crafting_attack_names
from dlsec.threat import ThreatModel

QUERY_ATTACKS = ("square", "nes", "hsja", "boundary")
STRATEGIES = ("jacobian", "knockoff", "graybox")


@dataclass
class BlackBoxOptions:
    """``[blackbox]`` table of audit.toml.

    ``eps`` is in input units (0: 0.1 of the bounds' range for linf, 1.0 for l2, the
    white-box section's middle radius); ``max-queries`` are the queries per point the
    curves are read at (the attacks run once, at the largest; ``budgets``, the old name,
    works for this release with a warning: a budget is an oracle's total); ``attacks`` are query
    attacks (``square``, ``nes`` on scores; ``hsja``, ``boundary`` (l2) on labels);
    ``transfer`` lists surrogate strategies (``jacobian``, ``knockoff``, ``graybox``),
    trained on at most ``transfer-budget`` oracle answers and attacked with ``craft``
    (white-box attacks run on the surrogate); the gray-box attacker holds as many
    labelled records as the others buy answers (``transfer-budget``, or fewer when the
    test set has fewer left). ``surrogate-epochs`` (0: automatic) trains each surrogate
    for 30 epochs on small inputs (the digits data), 10 on large ones (a 28 x 28 image,
    where a CNN surrogate costs over ten times as much per sample; see
    :mod:`dlsec.audit.sections._scale`). ``masking-margin`` is the gap in robust
    accuracy (black-box below white-box) flagged as gradient masking.
    """

    norm: str = "linf"
    eps: float = 0.0
    samples: int = 50
    max_queries: list[int] = field(default_factory=lambda: [10, 30, 100, 300, 1000])
    budgets: list[int] = field(default_factory=list)  # deprecated name of max_queries
    attacks: list[str] = field(default_factory=lambda: ["square", "hsja"])
    transfer: list[str] = field(default_factory=lambda: list(STRATEGIES))
    transfer_budget: int = 1600
    craft: list[str] = field(default_factory=lambda: ["pgd", "mifgsm", "difgsm"])
    surrogate_epochs: int = 0
    masking_margin: float = 0.05

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm: must be linf or l2, got {self.norm!r}")
        if self.eps < 0 or self.samples < 1 or self.transfer_budget < 1:
            raise ValueError("eps must be >= 0, samples and transfer-budget >= 1")
        if self.surrogate_epochs < 0:
            raise ValueError("surrogate-epochs must be >= 1 (0: automatic)")
        key = "budgets" if self.budgets else "max-queries"
        self.max_queries = list(self.budgets or self.max_queries)
        if not self.max_queries or any(b < 1 for b in self.max_queries):
            raise ValueError(f"{key}: one or more query counts per point >= 1")
        bad = [a for a in self.attacks if a not in QUERY_ATTACKS]
        if bad:
            raise ValueError(f"attacks: unknown {bad} (choose from {list(QUERY_ATTACKS)})")
        bad = [s for s in self.transfer if s not in STRATEGIES]
        if bad:
            raise ValueError(f"transfer: unknown {bad} (choose from {list(STRATEGIES)})")
        if self.norm != "l2" and "boundary" in self.attacks:
            raise ValueError('attacks: boundary is an L2 attack; set norm = "l2" to use it')
        if not self.attacks and not self.transfer:
            raise ValueError("attacks and transfer: both empty; name one or more of either")
        if not 0 <= self.eps < float("inf") or not 0 <= self.masking_margin <= 1:
            raise ValueError("eps must be finite and >= 0, masking-margin in [0, 1]")
        names = crafting_attack_names()
        bad = [a for a in self.craft if a not in names]
        if bad or (self.transfer and not self.craft):
            raise ValueError(f"craft: one or more white-box attacks (choose from {names})")


def _eps(options: BlackBoxOptions, bounds: tuple[float, float]) -> float:
    if options.eps:
        return float(options.eps)
    return round((0.1 if options.norm == "linf" else 1.0) * (bounds[1] - bounds[0]), 6)


@register_section("blackbox", title="Evasion (black-box)", order=55, options=BlackBoxOptions,
                  version=7)
def run(ctx: AuditContext, options: BlackBoxOptions) -> SectionResult:
    from dlsec.audit.report.plots import bar_chart, line_chart

    card, ds = ctx.card, ctx.dataset
    n = min(options.samples, len(ds.y_test))
    eps, norm = _eps(options, card.bounds), options.norm
    threat = ThreatModel.from_card(card, knowledge="black-box", norm=norm, eps=(eps,))
    levels = sorted(set(options.max_queries))
    query = QueryOptions(attacks=tuple(options.attacks), samples=n, max_queries=levels[-1],
                         curve_queries=levels)
    epochs = _surrogate_epochs(options, card)  # None: train_surrogate's own 30 epochs
    transfer = TransferOptions(
        strategies=tuple(options.transfer), craft=tuple(options.craft), samples=n,
        budget=options.transfer_budget,
        surrogate_epochs=None if options.surrogate_epochs == 0 and epochs == 30 else epochs,
    ) if options.transfer and options.craft else None
    res = evaluate(ctx.scenario(threat), query, transfer, masking_margin=options.masking_margin)
    deprecated = ["[blackbox] budgets is deprecated: name it max-queries (queries per point; a "
                  "budget is an oracle's total)"] if options.budgets else []
    figures = []
    if "queries" in res.figures:
        curves = {name: (levels, per_eps[eps])
                  for name, per_eps in res.figures["queries"]["curves"].items()}
        figures.append(line_chart(
            curves, title=f"Robust accuracy vs queries per point ({norm}, eps {eps:g})",
            xlabel="queries per point", ylabel="accuracy under attack", logx=True,
            caption=f"The first {n} test points (a subset). Score-based attacks see class probabilities, "
            "decision-based ones only labels; each curve is read off one run at the largest "
            "budget (a point counts once the attack found an adversarial within eps).",
        ))
    if "transfer" in res.figures:
        t = res.figures["transfer"]
        success = t["success"]
        bars = success if isinstance(success, dict) else {"": success}
        figures.append(bar_chart(
            t["strategies"], success,
            intervals={k: [rate_interval(v, n) for v in vs] for k, vs in bars.items()},
            title=f"Transfer success per surrogate ({norm}, eps {eps:g})",
            ylabel="share of points fooled", ylim=(0.0, 1.0),
            caption="Adversarials crafted on the attacker's surrogate and sent once to the "
            f"model; bars: Wilson 95% intervals on the {n} attacked test points.",
        ))
    for table in res.tables:
        if table.title == "Transfer attacks":
            table.caption += f" Settings: {_settings(options, card, ds, n)}."
    intervals = {k: rate_record(v, n) for k, v in res.metrics.items()  # rates on the n points
                 if k.endswith(("robust_accuracy", "clean_accuracy", "_success_rate"))}
    summary = res.summary
    if "clean_accuracy" in intervals:
        rec = intervals["clean_accuracy"]
        summary += (f"; clean accuracy on the {n} attacked test points (subset): "
                    f"{res.metrics['clean_accuracy']:.1%} [{rec['lower']:.1%}, {rec['upper']:.1%}]")
    return SectionResult(
        name="blackbox", title="Evasion (black-box)", summary=summary,
        metrics=res.metrics, figures=figures,
        tables=[rate_cells(t, {"robust accuracy": n, "success rate": n,
                               "surrogate agreement": n, f"robust accuracy at eps {eps:g}": n},
                           rows=slice(0, 2) if t.title == "White-box vs black-box" else slice(None))
                for t in res.tables],
        warnings=[*deprecated, *res.warnings], intervals=intervals,
        details={"settings": _settings(options, card, ds, n), "eps": eps, "norm": norm, "points": n,
                 "max_queries": levels, "curves": res.details.get("curves", {})},
    )


def _surrogate_epochs(options: BlackBoxOptions, card) -> int:
    return auto(options.surrogate_epochs, card, small=30, large=10)


def _settings(options: BlackBoxOptions, card, ds, n: int) -> str:
    text = f"{n} attacked test points"
    if options.transfer:
        held = max(0, min(options.transfer_budget, len(ds.y_test) - n))
        text += (f"; transfer surrogates train for {_surrogate_epochs(options, card)} epochs on "
                 f"at most {options.transfer_budget} oracle answers (gray-box: on {held} labelled "
                 "test records after the attacked ones)")
    return f"{text}; {size_note(card)}"
