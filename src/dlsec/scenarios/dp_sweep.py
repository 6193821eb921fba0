"""What differential privacy buys and costs: one DP-SGD model per epsilon, beside the
undefended one, each measured for accuracy, its accountant's epsilon, an empirical lower
bound on epsilon and membership inference.

For each target epsilon ONE DP-SGD run (Opacus) trains the audit's architecture (the card's)
on the audit's training split with the DP recipe of :class:`DPSweepOptions` (digits,
SimpleNet, 15 epochs, Adam lr 0.05, batch 64: test accuracy 0.78 / 0.91 / 0.94 at epsilon
1 / 3 / 8), with canaries planted (:func:`dlsec.scenarios.dp_audit.one_run_audit`, Steinke,
Nasr, Jagielski 2023), so the same model gives the accuracy, the empirical lower bound on
epsilon and the membership attacks. The undefended reference is retrained here with the
audited model's own recipe (its card) on the same split, with the same canaries; without
canaries (``canaries=()``) it is the audited model itself and no bound is drawn. Per model:
test accuracy on the test split, the accountant's epsilon (PRV, RDP beside it), the bound per
canary kind, and membership inference on its own training records
(:func:`dlsec.scenarios.membership.run_membership`: the loss attack, and LiRA with shadow
models trained like the model, DP-SGD at the same noise, clipping and sample rate).

Example:
    >>> res = dp_sweep(ctx, DPSweepOptions(epsilons=(1.0, 8.0)))          # doctest: +SKIP
    >>> res.metrics["accuracy@8"] > res.metrics["accuracy@1"]              # doctest: +SKIP
    True
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from dlsec.models import ModelCard
from dlsec.scenarios.context import ScenarioContext
from dlsec.scenarios.membership import MembershipOptions, run_membership
from dlsec.scenarios.result import ScenarioResult, Table
from dlsec.training import TrainConfig, evaluate

UNDEFENDED = "undefended"


@dataclass
class DPSweepOptions:
    """``epsilons``: target epsilons (each > 0) at ``delta``; ``include_undefended``: the
    audited model as the reference row. The DP recipe: ``epochs``, ``lr`` (Adam),
    ``batch_size`` (expected Poisson batch), ``max_grad_norm`` (clipping). Membership:
    ``members`` records tested (as many non-members), the loss attack always, LiRA at the
    epsilons in ``lira_epsilons`` (and on the undefended model) with ``shadows`` shadow
    models each (``lira_online``: the online variant, else offline; ``shadows`` 0: no LiRA)."""

    epsilons: tuple[float, ...] = (1.0, 3.0, 8.0)
    include_undefended: bool = True
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    epochs: int = 15
    lr: float = 0.05
    batch_size: int = 64
    members: int = 200
    shadows: int = 4
    lira_epsilons: tuple[float, ...] = (3.0,)
    lira_online: bool = False
    canaries: tuple[str, ...] = ("input", "gradient")
    canary_m: int = 1000
    confidence: float = 0.95

    def __post_init__(self) -> None:
        self.epsilons = tuple(float(e) for e in self.epsilons)
        self.lira_epsilons = tuple(float(e) for e in self.lira_epsilons)
        self.canaries = tuple(self.canaries)
        bad_kinds = [c for c in self.canaries if c not in ("input", "gradient")]
        if bad_kinds or len(set(self.canaries)) != len(self.canaries):
            raise ValueError(f"canaries: input and/or gradient, each once (empty: no bound), "
                             f"got {list(self.canaries)}")
        if self.canary_m < 10:
            raise ValueError(f"canary-m: must be >= 10, got {self.canary_m}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence: must be in (0, 1), got {self.confidence:g}")
        if not self.epsilons:
            raise ValueError("epsilons: name one or more target epsilons, e.g. [1, 3, 8]")
        bad = [e for e in self.epsilons if not (math.isfinite(e) and e > 0)]
        if bad:
            raise ValueError(f"epsilons: each must be a finite number > 0, got {bad[0]:g}")
        if len(set(self.epsilons)) != len(self.epsilons):
            raise ValueError("epsilons: each epsilon once")
        if not (0.0 < self.delta < 1.0):
            raise ValueError(f"delta: must be in (0, 1), got {self.delta:g}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"max-grad-norm: must be > 0, got {self.max_grad_norm:g}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: must be > 0, got {self.lr:g}")
        if self.epochs < 1 or self.batch_size < 1 or self.members < 1:
            raise ValueError("epochs, batch-size and members must be >= 1")
        if self.shadows < 0 or self.shadows == 1:
            raise ValueError("shadows: 0 (no LiRA) or >= 2")
        stray = [e for e in self.lira_epsilons if e not in self.epsilons]
        if stray:
            raise ValueError(f"lira-epsilons: {stray[0]:g} is not one of the epsilons "
                             f"{[f'{e:g}' for e in self.epsilons]}")

    def train_config(self, ctx: ScenarioContext) -> TrainConfig:
        """The DP recipe as a :class:`TrainConfig` (seed and device the context's)."""
        return TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                           seed=ctx.seed, device=str(ctx.device))


@dataclass
class SweepRun:
    """One model of the sweep: ``label`` (``"3"`` for epsilon 3, or ``"undefended"``)."""

    label: str
    epsilon: float | None
    model: nn.Module
    card: ModelCard
    test_accuracy: float
    epsilon_prv: float | None = None
    epsilon_rdp: float | None = None
    bounds: dict[str, float] = field(default_factory=dict)
    membership: ScenarioResult | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    audit: dict[str, Any] = field(default_factory=dict)


def label_of(epsilon: float | None) -> str:
    """The label a model has in metric keys: ``f"{epsilon:g}"`` or ``"undefended"``."""
    return UNDEFENDED if epsilon is None else f"{epsilon:g}"


def _train(ctx: ScenarioContext, epsilon: float | None, opt: DPSweepOptions) -> SweepRun:
    """One model of the sweep: DP-SGD at ``epsilon`` or (None) the undefended recipe, in
    one training run with the canaries when ``opt.canaries`` names any."""
    from dlsec.attacks.surrogate import train_config_from_card
    from dlsec.scenarios.dp import dp_training
    from dlsec.scenarios.dp_audit import one_run_audit

    t0 = time.perf_counter()
    ds = ctx.dataset
    if epsilon is None and not opt.canaries:
        acc = evaluate(ctx.model, ds.x_test, ds.y_test)["accuracy"]
        return SweepRun(UNDEFENDED, None, ctx.model, ctx.card, float(acc),
                        seconds=time.perf_counter() - t0)
    config = (opt.train_config(ctx) if epsilon is not None else
              train_config_from_card(ctx.card, device=str(ctx.device), seed=ctx.seed))
    if opt.canaries:
        one = one_run_audit(ds, ctx.card.architecture, config, epsilon=epsilon,
                            canaries=opt.canaries, m=opt.canary_m, confidence=opt.confidence,
                            delta=opt.delta, progress=False, max_grad_norm=opt.max_grad_norm)
        dp = one.card.training.get("dp") or {}
        return SweepRun(label_of(epsilon), epsilon, one.model, one.card, one.test_accuracy,
                        epsilon_prv=one.epsilon_accountant,  # the undefended: no accountant
                        epsilon_rdp=None if epsilon is None else dp.get("epsilon_rdp"),
                        bounds={k: float(a.epsilon_lower_bound) for k, a in one.audits.items()},
                        seconds=time.perf_counter() - t0, audit=one.details)
    res = dp_training(ds, ctx.card.architecture, config, epsilon=epsilon,
                      delta=opt.delta, max_grad_norm=opt.max_grad_norm, progress=False)
    dp = res.card.training["dp"]
    return SweepRun(label_of(epsilon), epsilon, res.model, res.card,
                    float(res.card.metrics["test_accuracy"]), epsilon_prv=dp["epsilon_prv"],
                    epsilon_rdp=dp["epsilon_rdp"], seconds=time.perf_counter() - t0,
                    notes=list(res.warnings))


def _attack(ctx: ScenarioContext, run: SweepRun, opt: DPSweepOptions) -> ScenarioResult:
    lira = run.epsilon is None or run.epsilon in opt.lira_epsilons
    attacks: tuple[str, ...] = ("loss",)
    if lira and opt.shadows >= 2:
        attacks += ("lira" if opt.lira_online else "lira-offline",)
    sub = ScenarioContext(model=run.model, card=run.card, dataset=ctx.dataset, seed=ctx.seed,
                          device=ctx.device, progress=False, executor=ctx.executor)
    return run_membership(sub, MembershipOptions(attacks=attacks, members=opt.members,
                                                 shadows=max(opt.shadows, 2)))


def dp_sweep(ctx: ScenarioContext, options: DPSweepOptions | None = None) -> ScenarioResult:
    """Train one DP-SGD model per epsilon (and take the audited model as the undefended
    reference); measure each. ``metrics`` per label ``L`` (``f"{eps:g}"`` or
    ``"undefended"``): ``accuracy@L``, ``epsilon@L`` (PRV) and ``epsilon_rdp@L``,
    ``loss_auc@L`` / ``loss_tpr_at_0_1_fpr@L`` / ``loss_tpr_at_1_fpr@L`` and the same for
    ``lira`` where LiRA ran. ``figures``: ``accuracy`` (series over epsilon),
    ``epsilons`` (empirical bound against the accountant's epsilon). ``artifacts["runs"]``:
    the :class:`SweepRun` of every model.
    """
    from rich.progress import Progress

    opt = options or DPSweepOptions()
    todo: list[float | None] = [*sorted(opt.epsilons)]
    if opt.include_undefended:
        todo.append(None)
    runs: list[SweepRun] = []
    # the trainings are independent: one task each on ctx.executor (the reference without
    # canaries is the audited model itself, nothing to train)
    trains = [eps for eps in todo if eps is not None or opt.canaries]
    sent = dataclasses.replace(ctx, progress=False)
    trained = dict(zip(trains, ctx.executor.map(
        _train, [(f"dp-sweep/{ctx.seed}/{label_of(eps)}", (sent, eps, opt)) for eps in trains]),
        strict=True))
    with Progress(disable=not ctx.progress, transient=True) as bar:
        task = bar.add_task("DP sweep", total=len(todo))
        for eps in todo:
            run = trained[eps] if eps in trained else _train(ctx, eps, opt)
            run.model.to(ctx.device)
            t0 = time.perf_counter()
            run.membership = _attack(ctx, run, opt)
            run.seconds += time.perf_counter() - t0
            runs.append(run)
            bar.update(task, advance=1)
    return _result(runs, opt, n_test=int(ctx.dataset.y_test.shape[0]))


def _metrics(run: SweepRun) -> dict[str, float]:
    at = f"@{run.label}"
    out = {f"accuracy{at}": round(run.test_accuracy, 6)}
    if run.epsilon_prv is not None:
        out[f"epsilon{at}"] = round(run.epsilon_prv, 6)
    if run.epsilon_rdp is not None:
        out[f"epsilon_rdp{at}"] = round(run.epsilon_rdp, 6)
    if run.bounds:
        out[f"epsilon_lower_bound{at}"] = round(max(run.bounds.values()), 6)
        for kind, b in run.bounds.items():
            out[f"epsilon_lower_bound_{kind}{at}"] = round(b, 6)
    assert run.membership is not None
    for key, v in run.membership.metrics.items():
        for attack, name in (("loss_", "loss_"), ("lira_offline_", "lira_"),
                             ("lira_online_", "lira_"), ("lira_", "lira_")):
            if key.startswith(attack):
                out[f"{name}{key[len(attack):]}{at}"] = v
                break
    return out


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def _result(runs: list[SweepRun], opt: DPSweepOptions, *, n_test: int) -> ScenarioResult:
    metrics: dict[str, float] = {}
    for run in runs:
        metrics.update(_metrics(run))
    kinds = sorted({k for r in runs for k in r.bounds})
    rows = []
    for r in runs:
        m = _metrics(r)
        rows.append([
            "undefended" if r.epsilon is None else f"DP-SGD ε={r.label}",
            round(r.test_accuracy, 4), _fmt(r.epsilon_prv), _fmt(r.epsilon_rdp),
            *[_fmt(r.bounds.get(k)) for k in kinds],
            _fmt(m.get(f"loss_auc@{r.label}")), _fmt(m.get(f"lira_auc@{r.label}")),
            _fmt(m.get(f"lira_tpr_at_1_fpr@{r.label}")),
        ])
    lira_name = "LiRA (online)" if opt.lira_online else "LiRA (offline)"
    table = Table(
        "Differential privacy: accuracy, epsilon and membership inference",
        ["model", "test accuracy", "ε (PRV)", "ε (RDP)",
         *[f"ε lower bound ({k} canaries)" for k in kinds], "loss AUC", f"{lira_name} AUC",
         f"{lira_name} TPR @ 1% FPR"],
        rows,
        caption=(f"Test accuracy on the {n_test} test records; ε at δ = {opt.delta:g}. "
                 f"Membership inference: {opt.members} training records against as many "
                 "test records (chance: AUC 0.5)."),
    )
    tables = [table]
    for r in runs:
        assert r.membership is not None
        t = r.membership.tables[0]
        name = "undefended model" if r.epsilon is None else f"DP-SGD ε = {r.label}"
        tables.append(dataclasses.replace(t, title=f"Membership inference, {name}"))
    dp_runs = [r for r in runs if r.epsilon is not None]
    undefended = next((r for r in runs if r.epsilon is None), None)
    accuracy: dict[str, Any] = {"DP-SGD": ([r.epsilon_prv for r in dp_runs],
                                           [r.test_accuracy for r in dp_runs])}
    if undefended is not None:
        xs = [min(r.epsilon_prv or 0.0 for r in dp_runs), max(r.epsilon_prv or 0.0 for r in dp_runs)]
        accuracy["undefended"] = (xs, [undefended.test_accuracy] * 2)
    bound_series: dict[str, Any] = {
        f"{k} canaries": ([r.epsilon_prv for r in dp_runs if k in r.bounds],
                          [r.bounds[k] for r in dp_runs if k in r.bounds]) for k in kinds}
    warnings = [f"ε={r.label}: {note}" for r in dp_runs for note in r.notes]
    records = [int(r.card.training.get("dp", {}).get("training_records", 0)) for r in dp_runs]
    n = min([k for k in records if k > 0], default=0)
    if n and opt.delta >= 1.0 / n and not any("delta" in w for w in warnings):
        warnings.append(f"delta {opt.delta:g} >= 1/n = {1.0 / n:.3g} ({n} training records): a "
                        "mechanism that publishes one record outright meets it; use delta < 1/n")
    for r in dp_runs:
        for k, b in r.bounds.items():
            if r.epsilon_prv is not None and b > r.epsilon_prv:
                warnings.append(
                    f"ε={r.label}: the empirical lower bound from {k} canaries ({b:.3f}) exceeds "
                    f"the accountant's ε ({r.epsilon_prv:.3f}): the guarantee does not hold "
                    "(a bug in the training, the sampler or the accountant)")
    def joined(values: list[str]) -> str:
        return " / ".join(values)

    labels = joined([r.label for r in dp_runs])
    parts = [f"accuracy {joined([f'{r.test_accuracy:.3f}' for r in dp_runs])} at ε {labels}"
             + (f" (undefended {undefended.test_accuracy:.3f})" if undefended else "")]
    if any(r.bounds for r in dp_runs):
        parts.append("measured ε ≥ " + joined([f"{max(r.bounds.values()):.2f}" if r.bounds
                                               else "-" for r in dp_runs])
                     + (f" (undefended {max(undefended.bounds.values()):.2f})"
                        if undefended and undefended.bounds else ""))
    loss = [v for r in runs if (v := metrics.get(f"loss_auc@{r.label}")) is not None]
    if loss:
        parts.append(f"loss-attack AUC ≤ {max(loss):.3f}")
    summary = "; ".join(parts)
    details = {
        "options": dataclasses.asdict(opt), "test_records": n_test,
        "undefended": None if undefended is None else
        "retrained here with the audited model's recipe and the canaries" if opt.canaries
        else "the audited model itself",
        # no timings: a report is the same from run to run
        "runs": [{"label": r.label, "epsilon": r.epsilon,
                  "canary_audit": {k: v for k, v in r.audit.items() if k != "seconds"},
                  "training": r.card.training, "membership": r.membership.details
                  if r.membership else None} for r in runs],
    }
    return ScenarioResult(name="dp", summary=summary, metrics=metrics, tables=tables,
                          figures={"accuracy": accuracy, "epsilons": bound_series},
                          warnings=warnings, details=details, artifacts={"runs": runs})


__all__ = ["UNDEFENDED", "DPSweepOptions", "SweepRun", "dp_sweep", "label_of"]
