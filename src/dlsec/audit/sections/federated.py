"""Section "Federated learning": if this model were trained by federated learning, what would
malicious clients do to it, and which aggregation would hold.

Options (``[federated]``) -> :func:`dlsec.scenarios.federated_audit.federated_audit` ->
render. The audited model's architecture is federated from scratch on the audit's data
(Flower's simulation engine, one start for every cell): clean FedAvg and each strategy with
0 and each fraction of malicious clients per attack, the model-replacement backdoor against
each strategy, and Inverting Gradients on a client's update. Rendered: the table of every
cell (final accuracy with its Wilson 95% interval and its loss to clean FedAvg), the cells a
strategy cannot tolerate (skipped, with the reason), accuracy per round (one chart for the
honest federations, one per attack and fraction), backdoor success and main-task accuracy
per strategy (bars with intervals), and the reconstructed client inputs under the originals
(PSNR above each reconstruction). A robust strategy more than 3 pp under clean FedAvg
under an attack is a warning (ALIE is known to defeat Krum and the median: it shows).

The section is not a default one (Ray's start-up alone costs 20-70 s): select it with
``dlsec audit --sections accuracy,federated`` or ``sections = ["accuracy", "federated"]``
in audit.toml. Options: ``clients`` (10), ``rounds`` (10), ``strategies`` (fedavg,
fedmedian, multikrum, clipping), ``attacks`` (sign-flip, label-flip, alie), ``fractions``
(0, 0.1, 0.3), ``backdoor`` (true; ``backdoor-fraction`` 0.1), ``leakage`` (true;
``leakage-batch-sizes`` [1, 4], ``leakage-trials`` 4, ``leakage-iterations`` 300),
``partition`` (iid, dirichlet:<alpha>, shards:<k>), ``local-epochs`` (1), ``lr`` (0.1),
``batch-size`` (16).

Gate keys: ``federated.fedavg_accuracy``, ``federated.<strategy>_<attack>_<fraction>_accuracy``
(e.g. ``federated.multikrum_sign-flip_0.3_accuracy``), ``federated.backdoor_asr@<strategy>``,
``federated.backdoor_accuracy@<strategy>``, ``federated.leakage_recognised@1``,
``federated.leakage_psnr@1`` (``--fail-under federated.multikrum_sign-flip_0.3_accuracy=0.85``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dlsec.audit.context import AuditContext
from dlsec.audit.result import Figure, SectionResult
from dlsec.audit.sections import register_section
from dlsec.intervals import rate_record
from dlsec.scenarios.federated_audit import (
    BACKDOOR_ATTACK,
    REFERENCE,
    FederatedAuditOptions,
    rate_interval,
)
from dlsec.scenarios.result import ScenarioResult

TITLE = "Federated learning"
FULL_ROUNDS = 20  # the anchors (and benchmarks/federated.py) federate for 20 rounds


@dataclasses.dataclass
class FederatedOptions(FederatedAuditOptions):
    """``[federated]`` table of audit.toml: the fields of
    :class:`dlsec.scenarios.federated_audit.FederatedAuditOptions`."""


def _cell(key: str, details: dict) -> dict:
    return next(c for c in details["cells"] if c["key"] == key)


def render_figures(res: ScenarioResult, opt: FederatedAuditOptions, *, image_input: bool
                   ) -> list[Figure]:
    """The section's plots from the scenario's figure data (no simulation needed)."""
    from dlsec.audit.report.plots import bar_chart, image_grid, line_chart

    curves: dict[str, list[float]] = res.figures["accuracy_per_round"]
    cells = res.details["cells"]
    rounds = list(range(len(curves[REFERENCE])))
    ref_name = "FedAvg, no attack"
    figures = [line_chart(
        {c["key"]: (rounds, curves[c["key"]]) for c in cells if c["malicious_fraction"] == 0},
        title="Accuracy per round, honest federations", xlabel="round", ylabel="test accuracy",
        caption="Every client honest; round 0 is the initial model.")]
    groups: dict[tuple[str, float], list[dict]] = {}
    for c in cells:
        if c["malicious_fraction"] > 0 and c["attack"] != BACKDOOR_ATTACK:
            groups.setdefault((c["attack"], c["malicious_fraction"]), []).append(c)
    for (attack, frac), group in groups.items():
        series = {ref_name: (rounds, curves[REFERENCE])}
        series.update({c["strategy"]: (rounds, curves[c["key"]]) for c in group})
        n_bad = len(group[0]["malicious_clients"])
        figures.append(line_chart(
            series, title=f"Accuracy per round, {attack} at {frac:g}", xlabel="round",
            ylabel="test accuracy",
            caption=f"{n_bad} of {res.details['clients']} clients run {attack}; the first line "
                    "is clean FedAvg for reference."))
    backdoor = [c for c in cells if c["attack"] == BACKDOOR_ATTACK and c["malicious_fraction"] > 0]
    if backdoor:
        names = [c["strategy"] for c in backdoor]
        asr = [res.metrics[f"backdoor_asr@{s}"] for s in names]
        acc = [res.metrics[f"backdoor_accuracy@{s}"] for s in names]
        n_test, n_bd = res.details["n_test"], res.details["n_backdoor"]
        figures.append(bar_chart(
            names, {"backdoor success": asr, "main-task accuracy": acc},
            intervals={"backdoor success": [rate_interval(a, n_bd) for a in asr],
                       "main-task accuracy": [rate_interval(a, n_test) for a in acc]},
            title="Model-replacement backdoor per strategy", xlabel="strategy", ylim=(0.0, 1.05),
            caption=f"{len(backdoor[0]['malicious_clients'])} of {res.details['clients']} "
                    f"clients boost a backdoored update; clean FedAvg's accuracy is "
                    f"{res.metrics[f'{REFERENCE}_accuracy']:.3f} (the cost is the gap to it). "
                    "Bars: Wilson 95% intervals."))
    gallery = res.figures.get("gallery")
    if gallery is not None and image_input:
        figures.append(image_grid(
            gallery["images"], gallery["labels"], ncols=gallery["ncols"],
            bounds=gallery["bounds"], title="Gradient leakage: client inputs reconstructed",
            caption="Top row: a client's training images (class, batch size); bottom row: what "
                    "Inverting Gradients rebuilt from the client's gradient on clean FedAvg's "
                    "global model, the PSNR to its original above each."))
    return figures


@register_section("federated", title=TITLE, order=80, options=FederatedOptions, default=False,
                  version=2)
def run(ctx: AuditContext, options: FederatedOptions | None) -> SectionResult:
    from dlsec.scenarios.federated_audit import federated_audit

    opt = options or FederatedOptions()
    res = federated_audit(ctx.scenario(), opt)
    figures = render_figures(res, opt, image_input=len(ctx.dataset.input_shape) == 3)
    settings = (f"{opt.clients} clients, {opt.rounds} rounds, partition {res.details['partition']}, "
                f"{opt.local_epochs} local epoch(s) of SGD lr {opt.lr:g} batch {opt.batch_size}; "
                f"architecture {ctx.card.architecture} federated from scratch; "
                f"{len(res.details['cells'])} cells in one Flower simulation, "
                f"{len(res.details['skipped'])} skipped")
    if opt.rounds < FULL_ROUNDS:
        settings += (f"; {opt.rounds} rounds is a smaller configuration than the benchmark's "
                     f"{FULL_ROUNDS} (measured on digits: 32 cells in about 4 min on 2 busy "
                     f"cores); [federated] rounds = {FULL_ROUNDS} runs the full one")
    tables = list(res.tables)
    tables[0] = dataclasses.replace(tables[0], caption=f"{tables[0].caption} Settings: {settings}.")
    n_test = int(res.details["n_test"])
    return SectionResult(name="federated", title=TITLE,
                         summary=f"{res.summary}; the federated models' accuracies on the "
                         f"{n_test} test points",
                         metrics=res.metrics, tables=tables, figures=figures,
                         warnings=res.warnings,
                         intervals=federated_intervals(res.metrics, res.details, opt),
                         details={**res.details, "options": dataclasses.asdict(opt),
                                  "settings": settings, "points": n_test})


def federated_intervals(metrics: dict[str, float], details: dict[str, Any],
                        opt: FederatedAuditOptions) -> dict[str, Any]:
    """Wilson intervals of the section's rates: each federation's accuracy on the
    ``n_test`` test points, backdoor success on the ``n_backdoor`` test points not of the
    target class, and gradient leakage's recognition rates on the ``b * trials``
    reconstructed inputs of batch size ``b``. PSNR and SSIM are not rates: none."""
    n_test, n_backdoor = int(details["n_test"]), int(details["n_backdoor"])
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if key.startswith("leakage_") and "recognised@" in key:
            batch = int(key.rsplit("@", 1)[1])
            out[key] = rate_record(value, batch * opt.leakage_trials)
        elif key.endswith("_backdoor_asr") or key.startswith("backdoor_asr@"):
            out[key] = rate_record(value, n_backdoor)
        elif key.endswith("_accuracy") or key.startswith("backdoor_accuracy@"):
            out[key] = rate_record(value, n_test)
    return out
