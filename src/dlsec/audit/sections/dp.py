"""Section "Differential privacy": what DP-SGD would buy this model and what it would cost.

Options (``[dp]``) -> :func:`dlsec.scenarios.dp_sweep.dp_sweep` -> render: one table with a
row per model (test accuracy, the accountant's epsilon under PRV and RDP, membership
inference AUCs), each model's membership table, accuracy against epsilon (the audited,
undefended model as the reference line) and the empirical lower bound against the
accountant's epsilon (the y = x line: a bound above it means the guarantee is broken).

The default is a smaller configuration than the full one (LiRA offline with 4 shadow
models, at epsilon 3 and on the undefended model only) so the digits audit keeps within 90 s;
the section says so, and ``[dp] shadows = 16, lira-online = true, lira-epsilons = [1, 3, 8]``
runs the full one.

Gate keys: ``dp.accuracy@3``, ``dp.accuracy@undefended``, ``dp.epsilon@3`` (PRV),
``dp.loss_auc@3``, ``dp.lira_auc@3``, ``dp.lira_tpr_at_1_fpr@3``, ...
(``--fail-under dp.accuracy@3=0.8``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult
from dlsec.audit.sections import register_section
from dlsec.audit.sections._scale import is_large
from dlsec.audit.sections.privacy import interval_cells
from dlsec.intervals import rate_record
from dlsec.scenarios.dp_sweep import DPSweepOptions

LARGE_EPOCHS = 2  # DP epochs on large inputs when ``epochs`` is 0 (automatic)
SMALL_EPOCHS = 15
FULL = "[dp] shadows = 16, lira-online = true, lira-epsilons = [1, 3, 8]"
LARGE_NOTE = ("not run on large inputs by default: DP-SGD there costs minutes per epsilon on "
              "CPU (measured here: SmallCNN on 1000 Fashion-MNIST records, one epoch, 16.5 s "
              "against 8.9 s without DP; the default audit would need several full epochs per "
              "epsilon); set [dp] large-inputs = true to run it")


@dataclass
class DPOptions(DPSweepOptions):
    """``[dp]`` table of audit.toml: the fields of
    :class:`dlsec.scenarios.dp_sweep.DPSweepOptions` (``epsilons``, ``include-undefended``,
    ``delta``, ``max-grad-norm``, ``epochs`` (0: automatic: the audit's own ``epochs`` when
    it sets them, else 15 on small inputs and 2 on large ones), ``lr``, ``batch-size``, ``members``, ``shadows``, ``lira-epsilons``,
    ``lira-online``, ``canaries``, ``canary-m``, ``confidence``); ``large-inputs``: run on
    large inputs too (off by default: see :data:`LARGE_NOTE`)."""

    epochs: int = 0
    large_inputs: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs: must be >= 0 (0: automatic), got {self.epochs}")
        auto = self.epochs == 0
        if auto:
            self.epochs = SMALL_EPOCHS
        super().__post_init__()
        if auto:
            self.epochs = 0


def _settings(opt: DPSweepOptions, large: bool) -> str:
    lira = "online" if opt.lira_online else "offline"
    at = ", ".join(f"{e:g}" for e in opt.lira_epsilons)
    text = (f"DP-SGD (Opacus, Poisson sampling) {opt.epochs} epochs, Adam lr {opt.lr:g}, "
            f"expected batch {opt.batch_size}, clipping norm {opt.max_grad_norm:g}, "
            f"δ = {opt.delta:g}; membership: loss attack on every model")
    if opt.shadows >= 2:
        text += (f", LiRA ({lira}) with {opt.shadows} shadow models "
                 f"at ε = {at or 'none'} and on the undefended model (DP shadows trained with "
                 "the model's noise, clipping and sample rate)")
    if opt.canaries:
        text += (f"; one training run per model with {opt.canary_m} canaries of each kind "
                 f"({', '.join(opt.canaries)}), each in with probability 1/2, the lower bound at "
                 f"{opt.confidence:.0%} confidence; the undefended model retrained with the "
                 "audited model's recipe on the same split, with the canaries")
    else:
        text += "; no canaries (no lower bound); the undefended model is the audited one"
    if large:
        text += f"; large inputs ({opt.epochs} epochs unless set)"
    if (opt.shadows, opt.lira_online, opt.lira_epsilons) == (4, False, (3.0,)):
        text += ("; this is the smaller default configuration that keeps the whole audit "
                 "within 90 s (DP shadows train one after another, about 3 s each on digits); "
                 f"the full one is a config away: {FULL}")
    return text


@register_section("dp", title="Differential privacy", order=75, options=DPOptions, version=6)
def run(ctx: AuditContext, options: DPOptions | None) -> SectionResult:
    from dlsec.audit.report.plots import line_chart
    from dlsec.audit.sections.evasion_whitebox import bands
    from dlsec.scenarios.dp_sweep import dp_sweep

    opt = options or DPOptions()
    large = is_large(ctx.card)
    if large and not opt.large_inputs:
        return SectionResult(name="dp", title="Differential privacy",
                             summary=f"Differential privacy {LARGE_NOTE}.",
                             details={"options": dataclasses.asdict(opt), "skipped": LARGE_NOTE})
    epochs = opt.epochs or ctx.config.epochs or (LARGE_EPOCHS if large else SMALL_EPOCHS)
    fields = {f.name: getattr(opt, f.name) for f in dataclasses.fields(DPSweepOptions)}
    # DPOptions checked these in its __post_init__ already
    sweep_opt = DPSweepOptions(**{**fields, "epochs": epochs})
    res = dp_sweep(ctx.scenario(), sweep_opt)
    settings = _settings(sweep_opt, large)
    tables = list(res.tables)
    tables[0] = dataclasses.replace(tables[0], caption=f"{tables[0].caption} Settings: {settings}.")
    n_test = int(res.details["test_records"])  # every model is scored on the test set
    figures = [line_chart(
        res.figures["accuracy"], title="Test accuracy vs ε", xlabel="ε (PRV accountant)",
        ylabel="test accuracy",
        bands={name: bands(ys, n_test) for name, (_, ys) in res.figures["accuracy"].items()},
        caption="DP-SGD models at each target ε; the flat line is the undefended model. "
        f"Shaded: Wilson 95% intervals on the {n_test} test points.")]
    bounds = res.figures["epsilons"]
    if bounds:
        top = max([x for xs, _ in bounds.values() for x in xs] or [1.0])
        figures.append(line_chart(
            {**bounds, "y = x (the guarantee)": ([0.0, top], [0.0, top])},
            title="Empirical lower bound vs accountant ε", xlabel="accountant ε (PRV)",
            ylabel="empirical ε lower bound",
            caption="One training run with canaries (Steinke, Nasr, Jagielski 2023); "
            "points must stay below the line."))
    intervals = {k: rate_record(v, n_test) for k, v in res.metrics.items()
                 if k.startswith("accuracy@") and v is not None}
    generator = torch.Generator().manual_seed(ctx.config.seed)
    for run_ in res.artifacts.get("runs", []):
        if run_.membership is not None:
            intervals |= sweep_membership_intervals(
                run_.label, run_.membership.artifacts.get("results", []), res.metrics, generator)
    tables = [dataclasses.replace(
        t, rows=interval_cells(t.columns, t.rows, _cell_key(t.title), intervals),
        caption=(t.caption + " " if t.caption else "") + "Brackets: 95% intervals (Wilson "
        "for accuracies, bootstrap for AUCs and TPRs; an unresolved TPR is marked).")
        for t in tables]
    summary = (f"{res.summary}; test accuracies on the {n_test} test points (the undefended "
               "model's is retrained here when canaries run, so it differs from the clean "
               "accuracy section's)" if sweep_opt.canaries else
               f"{res.summary}; test accuracies on the {n_test} test points")
    return SectionResult(name="dp", title="Differential privacy", summary=summary,
                         metrics=res.metrics, tables=tables, figures=figures,
                         warnings=res.warnings, intervals=intervals,
                         details={**res.details, "settings": settings, "points": n_test})


_ATTACKS = (("loss", "loss"), ("lira-offline", "lira"), ("lira-online", "lira"),
            ("lira", "lira"))


def _label(model: str) -> str:
    """The metric label of a table's model cell: ``"DP-SGD ε=3"`` -> ``"3"``."""
    return model.rsplit("=", 1)[-1].strip() if "=" in model else "undefended"


def _cell_key(title: str) -> Callable[[list[Any], str], str | None]:
    """Which metric a cell of the sweep's tables shows: the main table (a row per model:
    test accuracy, loss and LiRA AUC, LiRA TPR) or one model's membership table (a row per
    attack, its label in the title)."""
    from dlsec.audit.sections.privacy import CELL_KEYS

    if title.startswith("Membership inference, "):
        label = _label(title.removeprefix("Membership inference, ").replace(" = ", "="))

        def member(row: list[Any], column: str) -> str | None:
            name = dict(_ATTACKS).get(str(row[0]))
            key = CELL_KEYS.get(column)
            return f"{name}_{key}@{label}" if name and key else None

        return member

    def main(row: list[Any], column: str) -> str | None:
        label = _label(str(row[0]))
        if column == "test accuracy":
            return f"accuracy@{label}"
        if column == "loss AUC":
            return f"loss_auc@{label}"
        if column.startswith("LiRA") and column.endswith(" AUC"):
            return f"lira_auc@{label}"
        if column.startswith("LiRA") and column.endswith("TPR @ 1% FPR"):
            return f"lira_tpr_at_1_fpr@{label}"
        return None

    return main


def sweep_membership_intervals(label: str, results: list[Any], metrics: dict[str, float],
                               generator: torch.Generator) -> dict[str, Any]:
    """The bootstrap intervals (:func:`dlsec.audit.sections.privacy.membership_intervals`)
    of one swept model's membership attacks, keyed as the sweep's metrics
    (``loss_auc@3``, ``lira_tpr_at_1_fpr@undefended``: every LiRA variant is ``lira``);
    only keys the metrics hold."""
    from dlsec.audit.sections.privacy import membership_intervals

    out: dict[str, Any] = {}
    for key, record in membership_intervals(results, generator).items():
        for attack, name in (("loss_", "loss_"), ("lira_offline_", "lira_"),
                             ("lira_online_", "lira_"), ("lira_", "lira_")):
            if key.startswith(attack):
                metric = f"{name}{key[len(attack):]}@{label}"
                if metric in metrics and metric not in out:
                    out[metric] = record
                break
    return out
