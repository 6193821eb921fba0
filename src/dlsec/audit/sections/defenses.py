"""Section "Defenses (matrix)": every defense of ``--defenses`` built and attacked the same
way, one row each (the scenario :func:`dlsec.scenarios.matrix.run_matrix`), with the table,
each cell's 95% interval, and a plot per trade-off: clean accuracy against each risk, one
point per defense, the Pareto front marked.

Not a default section: ``dlsec audit --defenses none,pgd-at,trades,fgsm-rs,dp:3,...`` (or a
``[defenses]`` table in audit.toml, whose ``names`` default to :data:`DEFAULT_NAMES`) adds
it. Each row's model and each row's experiment is
cached under ``<run>/defenses/<row>/`` (the model as a model directory, the results as
checked JSON), so an interrupted matrix resumes where it stopped.

Gate keys: ``defenses.<column>@<defense>``, e.g. ``defenses.whitebox_robust_accuracy@pgd-at``
(columns: :data:`dlsec.scenarios.matrix_columns.COLUMNS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from dlsec.audit.cache import (
    CacheDamaged,
    install_model,
    load_cached_model,
    read_entry,
    section_entry,
    write_json,
)
from dlsec.audit.context import AuditContext
from dlsec.audit.result import Figure, SectionResult, Table
from dlsec.audit.sections import register_section
from dlsec.errors import DlsecError
from dlsec.models import ModelCard, load
from dlsec.scenarios.defended import parse_defenses
from dlsec.scenarios.matrix import MatrixOptions, run_matrix
from dlsec.scenarios.matrix_columns import COLUMN

DEFAULT_NAMES = ["none", "pgd-at", "trades", "fgsm-rs", "dp:3", "dp:8", "sanitize:cleanlab",
                 "policy:label-only", "policy:top1-rounded"]
"""The rows of a ``[defenses]`` table without ``names`` (the README's digits matrix)."""


@dataclass
class DefensesOptions(MatrixOptions):
    """``[defenses]`` table of audit.toml: ``names`` (the rows, as ``--defenses`` gives them)
    and the fields of :class:`dlsec.scenarios.matrix.MatrixOptions` (``eps``, ``norm``,
    ``samples``, ``max-queries``, ``transfer-budget``, ``backdoor-rate``,
    ``backdoor-target``, ``flip-rate``, ``members``, ``shadows``, ``inversion-iters``,
    ``extraction-budget``, ``extraction-strategy``, ``groups``)."""

    names: list[str] = field(default_factory=lambda: list(DEFAULT_NAMES))

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            parse_defenses(self.names)
        except DlsecError as exc:
            raise ValueError(str(exc)) from None

    def matrix(self) -> MatrixOptions:
        return MatrixOptions(**{f.name: getattr(self, f.name)
                                for f in dataclasses.fields(MatrixOptions)})


class DiskStore:
    """Rows' models as model directories and experiments as checked JSON under ``root``
    (``<run>/defenses``); a damaged file is recomputed and reported through ``notice``, once
    (the matrix asks the store what it holds before it asks for the entries)."""

    def __init__(self, root: Path, ctx: AuditContext, notice: Callable[[str], None]) -> None:
        self.root, self.ctx, self._notice = root, ctx, notice
        self._told: set[str] = set()

    def notice(self, text: str) -> None:
        if text not in self._told:
            self._told.add(text)
            self._notice(text)

    def _dir(self, key: str) -> Path:
        return self.root / key

    def model(self, key: str, build: Callable[[], tuple[nn.Module, ModelCard, float]]
              ) -> tuple[nn.Module, ModelCard, float]:
        row_dir = self._dir(key)
        cfg = self.ctx.config
        try:
            cached = load_cached_model(row_dir / "model", key, lambda d: load(
                d, device=self.ctx.device, trust_code=cfg.trust_code, factory=cfg.model))
        except CacheDamaged as exc:
            self.notice(f"defenses: the cached model in {row_dir} is damaged ({exc}); retraining")
            cached = None
        if cached is not None:
            return cached.model, cached.card, float(cached.card.metrics.get("train_seconds", 0.0))
        model, card, seconds = build()
        card.metrics = {**card.metrics, "train_seconds": round(seconds, 3)}
        row_dir.mkdir(parents=True, exist_ok=True)
        install_model(row_dir, model, card, [], key)
        return model, card, seconds

    def cell(self, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = self.root / "cells" / f"{key}.json"
        try:
            cached = read_entry(path, key)
        except CacheDamaged as exc:
            self.notice(f"defenses: the cached result {path} is damaged ({exc}); recomputing")
            cached = None
        if isinstance(cached, dict):
            return cached
        result = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, section_entry(key, result))
        return result


def cell_text(value: Any, record: dict[str, Any] | None, unit: str) -> str:
    """A matrix cell as the table shows it: a rate ``44.0% [34.7, 53.8]`` (percent), a
    flip damage in points ``15.9 pp [10.6, 21.0]``, an AUC ``0.517 [0.465, 0.575]``, seconds
    ``12.3``; ``unresolved:`` before a TPR its non-members cannot resolve; ``n/a`` when not
    measured."""
    if value is None:
        return "n/a"
    if unit == "seconds":
        return f"{value:.1f}"
    if unit == "auc":
        text, bounds = f"{value:.3f}", "[{lower:.3f}, {upper:.3f}]"
    elif unit == "difference":
        text, bounds = f"{100 * value:.1f} pp", "[{lower:.1f}, {upper:.1f}]"
    else:
        text, bounds = f"{value:.1%}", "[{lower:.1f}, {upper:.1f}]"
    if not record:
        return text
    scale = 1.0 if unit == "auc" else 100.0
    text += " " + bounds.format(lower=scale * record["lower"], upper=scale * record["upper"])
    return f"unresolved: {text}" if record.get("unresolved") else text


def _pareto_figures(matrix: dict[str, Any], intervals: dict[str, Any]) -> list[Figure]:
    try:
        from dlsec.audit.report.plots import pareto_chart
    except ImportError:  # the plot lands with the scorecard
        return []
    rows = matrix["rows"]
    figures = []
    for column in matrix["columns"]:
        if column["threat"] is None:
            continue
        key = column["key"]
        points: dict[str, tuple[float, float]] = {}
        xerr: dict[str, tuple[float, float]] = {}
        yerr: dict[str, tuple[float, float]] = {}
        for r in rows:
            x, y = r["cells"].get(key), r["cells"].get("clean_accuracy")
            if x is None or y is None:
                continue
            points[r["defense"]] = (x, y)
            for err, k in ((xerr, key), (yerr, "clean_accuracy")):
                rec = intervals.get(f"{k}@{r['defense']}")
                if rec is not None:
                    err[r["defense"]] = (rec["lower"], rec["upper"])
        if len(points) < 2:
            continue
        figures.append(pareto_chart(
            points, title=f"Clean accuracy vs {column['label']}", xlabel=column["label"],
            ylabel="clean accuracy", x_better=column["better"], y_better="higher",
            xerr=xerr, yerr=yerr,
            caption="One point per defense (95% intervals as bars); the marked points are the "
            "Pareto front: no other defense is better on both axes."))
    return figures


@register_section("defenses", title="Defenses (matrix)", order=95, options=DefensesOptions,
                  default=False, version=1)
def run(ctx: AuditContext, options: DefensesOptions | None) -> SectionResult:
    from rich.console import Console

    opt = options or DefensesOptions()
    notices = Console(stderr=True, highlight=False, soft_wrap=True)
    store = DiskStore(ctx.run_dir / "defenses", ctx, lambda text: notices.print(text))
    res = run_matrix(ctx.scenario(), opt.names, opt.matrix(), store=store)
    matrix = res.details["matrix"]
    intervals = res.details["intervals"]
    none = next((r for r in matrix["rows"] if r["defense"] == "none"), None)
    labels = [c["label"] for c in matrix["columns"]]
    rows = []
    for r in matrix["rows"]:
        cells = [cell_text(r["cells"][c["key"]], intervals.get(f"{c['key']}@{r['defense']}"),
                         c["unit"]) for c in matrix["columns"]]
        change = ""
        if none is not None and r is not none and r["cells"].get("clean_accuracy") is not None:
            change = f"{100 * (r['cells']['clean_accuracy'] - none['cells']['clean_accuracy']):+.1f} pp"
        rows.append([r["defense"], *cells, change])
    described = "; ".join(f"{r['defense']}: {r['describe']}" for r in matrix["rows"])
    table = Table("Defense x attack matrix", ["defense", *labels, "clean accuracy vs none"], rows,
                  caption=f"{res.tables[0].caption} Brackets: 95% intervals (Wilson; bootstrap "
                  "for AUC and TPR; Newcombe for the flip damage); n/a: the experiment does not "
                  f"apply to the row (see report.json notes). Rows: {described}.")
    notes = Table("How each cell was measured", ["defense", "column", "note"],
                  [[r["defense"], COLUMN[k].label, n] for r in matrix["rows"]
                   for k, n in r["notes"].items()])
    return SectionResult(
        name="defenses", title="Defenses (matrix)", summary=res.summary, metrics=res.metrics,
        tables=[table, notes], figures=_pareto_figures(matrix, intervals),
        warnings=res.warnings, intervals=intervals,
        details={"matrix": matrix, "eps": res.details["eps"], "norm": res.details["norm"],
                 "options": res.details["options"]})

