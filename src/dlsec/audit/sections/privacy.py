"""Section "Privacy": membership inference, model inversion and model extraction.

Options -> the three scenarios (:mod:`dlsec.scenarios.membership`, ``.inversion``,
``.extraction``) -> render: a risk summary, each scenario's table, ROC curves on log axes,
the reconstructions beside the class means, fidelity against queries. The defaults keep
the digits audit to a few seconds; raise ``shadows``, ``members`` and
``extraction_budget`` in ``[privacy]`` for a stronger audit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult, Table
from dlsec.audit.sections import register_section
from dlsec.audit.sections._scale import is_large
from dlsec.intervals import membership_intervals as attack_intervals
from dlsec.intervals import rate_record

MEMBERSHIP_FPRS = {"tpr_at_0_1_fpr": 0.001, "tpr_at_1_fpr": 0.01}


def membership_intervals(results: list[Any], generator: torch.Generator) -> dict[str, Any]:
    """Seeded bootstrap 95% intervals (:func:`dlsec.intervals.membership_intervals`) of each
    attack's AUC and TPRs at :data:`MEMBERSHIP_FPRS`, keyed as the membership metrics,
    plus ``membership_auc`` (the best attack's). A TPR at an FPR the non-members cannot
    resolve (:func:`dlsec.intervals.fpr_resolved`) is flagged ``unresolved``."""
    out: dict[str, Any] = {}
    best_auc = -1.0
    for r in results:
        if r.is_member is None or r.metrics is None:
            continue
        records = attack_intervals(r.scores, r.is_member, MEMBERSHIP_FPRS, generator=generator)
        if not records:
            continue
        name = r.attack.replace("-", "_")
        out[f"{name}_auc"] = records.pop("auc")
        if r.metrics.auc > best_auc:
            best_auc, out["membership_auc"] = r.metrics.auc, out[f"{name}_auc"]
        out |= {f"{name}_{key}": record for key, record in records.items()}
    return out


@dataclass
class PrivacyOptions:
    members: int = 200
    shadows: int = 8
    label_only_noise: int = 10
    extraction_budget: int = 1000
    extraction_strategies: tuple[str, ...] = ("random", "natural", "active")
    extraction_epochs: int = 10
    inversion: bool = True
    inversion_black_box_iters: int = 100
    evaluator: str = "simplenet"
    evaluator_epochs: int = 0

    def __post_init__(self) -> None:
        from dlsec.models import model_names
        from dlsec.scenarios.extraction import STRATEGIES

        if self.members < 2 or self.shadows < 2 or self.extraction_budget < 8:
            raise ValueError("members and shadows must be >= 2, extraction-budget >= 8")
        if self.label_only_noise < 1 or self.extraction_epochs < 1 or self.evaluator_epochs < 0:
            raise ValueError("label-only-noise, extraction-epochs and evaluator-epochs must be "
                             ">= 1 (evaluator-epochs 0: automatic)")
        if self.inversion_black_box_iters < 0:
            raise ValueError("inversion-black-box-iters must be >= 0 (0: white-box only)")
        if not self.extraction_strategies:
            raise ValueError(f"extraction-strategies: name one or more of {list(STRATEGIES)}")
        if self.evaluator not in model_names() and ":" not in self.evaluator:
            raise ValueError(f"evaluator: unknown model {self.evaluator!r} (choose from "
                             f"{model_names()} or name a module:factory)")
        bad = [s for s in self.extraction_strategies if s not in STRATEGIES]
        if bad:
            raise ValueError(f"unknown extraction strategies {bad} (choose from {list(STRATEGIES)})")


def _bracket(record: dict[str, Any] | None, what: str) -> str:
    """`` [lo%, hi%] on n <what>`` for a summary, or nothing without a record."""
    if record is None:
        return ""
    return f" [{record['lower']:.1%}, {record['upper']:.1%}] on {record['n']} {what}"


CELL_KEYS = {"AUC": "auc", "TPR @ 0.1% FPR": "tpr_at_0_1_fpr", "TPR @ 1% FPR": "tpr_at_1_fpr"}


def with_intervals(columns: list[str], rows: list[list[Any]],
                   intervals: dict[str, Any]) -> list[list[Any]]:
    """The membership table's rows with each AUC and TPR cell as ``value [lower, upper]``
    (text), an unresolved TPR as ``unresolved: value [lower, upper]``; the values as they
    were. Rows (or columns) without an interval are left as they are."""
    def key_of(row: list[Any], column: str) -> str | None:
        key = CELL_KEYS.get(column)
        return f"{str(row[0]).replace('-', '_')}_{key}" if key else None

    return interval_cells(columns, rows, key_of, intervals)


def rate_cells(table: Table, columns: dict[str, int], *, rows: slice = slice(None)) -> Table:
    """``table`` with each numeric cell in ``[0, 1]`` of the named ``columns`` (column ->
    the points its rates were measured on) written ``value [lower, upper]`` (Wilson 95%),
    in the ``rows`` selected; a caption says so.

    Example:
        >>> t = rate_cells(Table("t", ["attack", "robust accuracy"], [["pgd", 0.5]]),
        ...                {"robust accuracy": 10})
        >>> t.rows
        [['pgd', '0.5 [0.2366, 0.7634]']]
    """
    from dlsec.audit.report.html import format_interval, format_value

    index = {i: columns[c] for i, c in enumerate(table.columns) if c in columns}
    out = [list(r) for r in table.rows]
    for row in out[rows]:
        for i, n in index.items():
            v = row[i] if i < len(row) else None
            if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 and n:
                row[i] = format_interval(format_value(v), rate_record(float(v), n))
    if out == table.rows:
        return table
    points = sorted(set(index.values()))
    caption = (f"{table.caption} " if table.caption else "") + (
        f"Brackets: Wilson 95% intervals on {' / '.join(map(str, points))} points.")
    return dataclasses.replace(table, rows=out, caption=caption)


def interval_cells(columns: list[str], rows: list[list[Any]],
                   key_of: Callable[[list[Any], str], str | None],
                   intervals: dict[str, Any]) -> list[list[Any]]:
    """``rows`` with each cell whose metric key (``key_of(row, column)``) has an interval
    record written ``value [lower, upper]`` (text, in percent where the cell is; prefixed
    ``unresolved:`` when flagged); the other cells as they were.

    Example:
        >>> from dlsec.intervals import interval_record
        >>> interval_cells(["model", "acc"], [["a", 0.5], ["b", 0.7]],
        ...                lambda row, col: f"{row[0]}_{col}" if col == "acc" else None,
        ...                {"a_acc": interval_record(0.4, 0.6, 96, "wilson")})
        [['a', '0.5 [0.4, 0.6]'], ['b', 0.7]]
        >>> interval_cells(["model", "acc"], [["a", "50.0%"]],
        ...                lambda row, col: "a_acc" if col == "acc" else None, {"a_acc": interval_record(0.4, 0.6, 96, "wilson")})
        [['a', '50.0% [40.0%, 60.0%]']]
    """
    from dlsec.audit.report.html import format_interval, format_value

    out = []
    for row in rows:
        row = list(row)
        for i, column in enumerate(columns):
            key = key_of(row, column) if i < len(row) else None
            record = intervals.get(key) if key else None
            if record is not None and isinstance(row[i], str) and row[i].endswith("%"):
                row[i] = (("unresolved: " if record.get("unresolved") else "") + f"{row[i]} "
                          f"[{record['lower']:.1%}, {record['upper']:.1%}]")  # as percentages
            elif record is not None:
                cell = row[i] if isinstance(row[i], str) else format_value(row[i])
                row[i] = format_interval(cell, record)
        out.append(row)
    return out


@register_section("privacy", title="Privacy", order=70, options=PrivacyOptions, version=6)
def run(ctx: AuditContext, options: PrivacyOptions | None) -> SectionResult:
    from dlsec.audit.report.plots import image_grid, line_chart, roc_curve
    from dlsec.scenarios.extraction import (
        EXTRACTION_EVAL,
        ExtractionOptions,
        default_runs,
        run_extraction,
    )
    from dlsec.scenarios.inversion import InversionOptions, evaluator_epochs, run_inversion
    from dlsec.scenarios.membership import MembershipOptions, run_membership

    opt = options or PrivacyOptions()
    sc = ctx.scenario()
    # on large inputs the shadows train one after another: training them as one stacked
    # module computes every record in every model (twice the rows), and stacked
    # convolutions are slower still (measured: 4.7x the CPU time for 8 SmallCNNs on 28 x 28)
    mem = run_membership(sc, MembershipOptions(
        members=opt.members, shadows=opt.shadows, label_only_noise=opt.label_only_noise,
        stacked=False if is_large(ctx.card) else None))
    ext = run_extraction(sc, ExtractionOptions(
        runs=default_runs(opt.extraction_strategies), budget=opt.extraction_budget,
        epochs=opt.extraction_epochs, rounds=3, max_eval=EXTRACTION_EVAL))
    d = mem.details
    ev = evaluator_epochs(opt.evaluator_epochs, len(ctx.dataset.y_train))
    settings = (f"{opt.shadows} shadow models, {d['shadow_epochs']} epochs each on "
                f"{d['shadow_records']} records (the target's recipe"
                + ("; its epochs were scaled to its training set, the shadows' to theirs"
                   if d["shadow_epochs_scaled"] else "") + ")"
                + (f"; the inversion's evaluation model trains for {ev} epoch"
                   f"{'' if ev == 1 else 's'}" if opt.inversion else "")
                + f"; extraction fidelity on {ext.details['held_out']} held-out test inputs")
    metrics: dict[str, float] = dict(mem.metrics)
    generator = torch.Generator().manual_seed(ctx.config.seed)
    intervals = membership_intervals(mem.artifacts.get("results", []), generator)
    mem_summary = mem.summary
    if "membership_auc" in intervals:
        auc = intervals["membership_auc"]
        mem_summary += f" (95% interval {auc['lower']:.3f} to {auc['upper']:.3f})"
        if auc["lower"] <= 0.5 <= auc["upper"]:
            mem_summary += ": no measurable leakage"
    figures = [roc_curve(mem.figures["roc"], title="Membership inference ROC",
                         caption="Log-scale axes: what matters is the true-positive rate at "
                         "low false-positive rates (Carlini et al. 2022).")]
    mem_table = mem.tables[0]
    tables = [dataclasses.replace(
        mem_table, rows=with_intervals(mem_table.columns, mem_table.rows, intervals),
        caption=f"{mem_table.caption[:-1]}. Settings: {settings}. Brackets: bootstrap 95% "
        "intervals; a TPR at an FPR the non-members cannot resolve (fewer than 10 expected "
        "false positives) is marked unresolved.")]
    risks = [["membership inference", mem_summary]]
    warnings = list(mem.warnings)
    if opt.inversion:
        inv = run_inversion(sc, InversionOptions(
            black_box_iters=opt.inversion_black_box_iters, evaluator=opt.evaluator,
            evaluator_epochs=opt.evaluator_epochs))
        metrics.update(inv.metrics)
        found = inv.artifacts.get("results", {})
        for variant, key in (("white-box", "inversion"), ("black-box", "inversion_black_box")):
            if f"{key}_eval_accuracy" in inv.metrics and variant in found:
                intervals[f"{key}_eval_accuracy"] = rate_record(  # one per reconstruction
                    inv.metrics[f"{key}_eval_accuracy"], len(found[variant].classes))
        grid = inv.figures["reconstructions"]
        if len(ctx.dataset.input_shape) == 3:
            figures.append(image_grid(
                grid["images"], grid["labels"], title="Model inversion (MI-Face)",
                caption="One reconstruction per class (white-box, then black-box), then the "
                "class means of the training data for comparison.",
                ncols=grid["ncols"], bounds=grid["bounds"]))
        n_rec = {v: len(r.classes) for v, r in found.items()}
        tables += [rate_cells(t, {"evaluation-model accuracy": min(n_rec.values())})
                   if n_rec and len(set(n_rec.values())) == 1 else t for t in inv.tables]
        risks.append(["model inversion", inv.summary + _bracket(intervals.get(
            "inversion_eval_accuracy"), "reconstructions")])
    metrics.update(ext.metrics)
    held_out = int(ext.details["held_out"])
    for key in ("extraction_fidelity", "extraction_fidelity_labels"):
        if key in ext.metrics:
            intervals[key] = rate_record(ext.metrics[key], held_out)
    figures.append(line_chart(ext.figures["fidelity"], title="Extraction fidelity vs queries",
                              xlabel="queries", ylabel="agreement with the model", logx=True,
                              caption="Share of held-out test inputs on which the stolen "
                              "substitute predicts what the audited model predicts."))
    tables += [rate_cells(t, {"fidelity": held_out, "accuracy": held_out})
               if t.title == "Model extraction" else t for t in ext.tables]
    risks.append(["model extraction", ext.summary + _bracket(intervals.get(
        "extraction_fidelity"), "held-out inputs")])
    warnings += ext.warnings
    tables.insert(0, Table("Risk summary", ["threat", "finding"], risks))
    return SectionResult(name="privacy", title="Privacy", summary="; ".join(r[1] for r in risks),
                         metrics=metrics, tables=tables, figures=figures, warnings=warnings,
                         intervals=intervals,
                         details={"options": dataclasses.asdict(opt), "settings": settings,
                                  "points": intervals.get("membership_auc", {}).get("n", 0),
                                  "extraction_points": held_out})
