"""Section "Poisoning": what poisoned training data does to this model's architecture, and
how much each sanitizer repairs. The experiment is
:func:`dlsec.scenarios.poisoning.run_poisoning` and the ``[poisoning]`` keys are its
:class:`~dlsec.scenarios.poisoning.PoisoningOptions`; this file resolves them and renders.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult
from dlsec.audit.sections import register_section
from dlsec.audit.sections._scale import auto, is_large, size_note
from dlsec.audit.sections.privacy import interval_cells
from dlsec.intervals import rate_record
from dlsec.models import CardLike
from dlsec.scenarios.poisoning import PoisoningOptions, Sizes, run_poisoning


def sizes(o: PoisoningOptions, card: CardLike) -> Sizes:
    """The victims' budget: 10 epochs on up to 2,000 training samples scored on the whole
    test set for small inputs; for large ones as the README's audit section says. The
    poisons are the same either way."""
    large = is_large(card)
    return Sizes(auto(o.epochs, card, small=10, large=3),
                 auto(o.max_train, card, small=2000, large=1000),
                 o.max_test or (1000 if large else None), not large)


@register_section("poisoning", title="Poisoning", order=60, options=PoisoningOptions,
                  version=6)
def run(ctx: AuditContext, options: PoisoningOptions) -> SectionResult:
    from dlsec.audit.report.plots import image_grid, line_chart

    o = options
    if o.backdoor_rate > 0 and o.backdoor_target >= ctx.dataset.num_classes:
        from dlsec.audit.config import ConfigError

        raise ConfigError(f"[poisoning] backdoor-target: {o.backdoor_target} is not a class of "
                          f"{ctx.dataset.name} (0..{ctx.dataset.num_classes - 1})")
    res = run_poisoning(ctx.scenario(), o, sizes(o, ctx.card), note=size_note(ctx.card))
    figures = []
    for fig in res.figures.values():
        spec = {k: v for k, v in fig.items() if k != "kind"}
        figures.append(line_chart(**spec) if fig["kind"] == "line" else image_grid(**spec))
    intervals = rate_intervals(res.metrics, res.details)
    n_test = int(res.details["test_samples"])
    summary = res.summary + (f"; the retrained victims' accuracies on {n_test} test points "
                             "(not the audited model's clean accuracy)")
    for key, what, points in (("backdoor_asr", "backdoor success", "triggered test points"),
                      ("collision_success_rate", "feature collision", "targets")):
        if key in intervals:
            rec = intervals[key]
            summary += (f"; {what} 95% interval [{rec['lower']:.1%}, {rec['upper']:.1%}] on "
                        f"{rec['n']} {points}")
    tables = [dataclasses.replace(t, rows=interval_cells(t.columns, t.rows, _cell_key, intervals),
                                  caption=(t.caption + " " if t.caption else "")
                                  + "Brackets: Wilson 95% intervals.")
              if t.title.startswith(_INTERVAL_TABLES) else t for t in res.tables]
    return SectionResult(name="poisoning", title="Poisoning", summary=summary,
                         metrics=res.metrics, tables=tables, figures=figures,
                         warnings=res.warnings, details={**res.details, "points": n_test},
                         intervals=intervals)


_INTERVAL_TABLES = ("Accuracy after label poisoning", "Backdoor", "Detection of poisoned")


def _cell_key(row: list[Any], column: str) -> str | None:
    """The metric a cell of the scenario's tables shows (see :func:`rate_intervals`):
    label-flip rows ``[attack, "20%", ...]`` (poisoned, ``+ <sanitizer>``), backdoor rows
    ``[sanitizer or "none", ...]`` (attack success), detection rows ``[what, sanitizer, ...]``
    (precision, recall)."""
    first = str(row[0])
    if column == "attack success rate":
        return "backdoor_asr" if first == "none" else f"backdoor_{first}_asr"
    if column == "recall" and len(row) == 5:  # the backdoor table
        return None if first == "none" else f"backdoor_{first}_recall"
    if column in ("precision", "recall") and len(row) == 6:  # the detection table
        what = first.rsplit(" ", 1)
        if what[0] == "backdoor":
            key = "backdoor"
        elif len(what) == 2 and what[1].endswith("%"):
            key = f"{what[0].replace('-', '_')}_{what[1][:-1]}"
        else:
            return None
        return f"{key}_{row[1]}_{column}"
    if column == "poisoned" or column.startswith("+ "):
        rate = str(row[1])
        if not rate.endswith("%"):
            return None
        key = f"{first.replace('-', '_')}_{rate[:-1]}"
        return f"{key}_accuracy" if column == "poisoned" else f"{key}_{column[2:]}_accuracy"
    return None


def rate_intervals(metrics: dict[str, float], details: dict[str, Any]) -> dict[str, Any]:
    """Wilson intervals of every rate the poisoning scenario measured: the victims'
    accuracies on its test set (``details["test_samples"]``), and each rate in
    ``details["rate_points"]`` (a sanitizer's recall on the poisoned points, its precision
    on the flagged ones, backdoor success on the triggered test points, feature-collision
    success on the targets) on its own points. Drops (differences) get none."""
    n_test = int(details["test_samples"])
    out = {k: rate_record(v, n_test) for k, v in metrics.items()
           if k.endswith("_accuracy") and not k.endswith("_accuracy_drop")}
    for key, n in details.get("rate_points", {}).items():
        if key in metrics:
            out[key] = rate_record(metrics[key], int(n))
    return out
