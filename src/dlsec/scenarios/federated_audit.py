"""What federated learning would do to this model: a grid of Flower federations (strategies x
attacks x fractions of malicious clients), a model-replacement backdoor against each strategy,
and gradient leakage from a client's update; the audit section ``federated`` renders it.

The audited model's architecture is federated from scratch over the audit's training split
(:func:`dlsec.scenarios.federated.run_federations`, ONE start of Flower's simulation engine
for every cell: Ray's start-up costs more than a small federation's rounds). Cells:

* clean FedAvg (always: the reference every other cell is compared with) and each strategy
  with no malicious client;
* each strategy against each attack at each fraction > 0 of malicious clients;
* with ``backdoor``, each strategy against the ``scale`` attack (model replacement with a
  trigger patch, Bagdasaryan et al. 2020) at ``backdoor_fraction``.

A cell a strategy cannot tolerate (Krum needs n > 2f + 2, Bulyan n >= 4f + 3, the median
f < n / 2) or one whose fraction rounds to no malicious client is skipped, with the reason
in a table, never an error. With ``leakage``, Inverting Gradients (Geiping et al. 2020)
reconstructs client batches from their gradient on the clean FedAvg global model
(:func:`dlsec.scenarios.gradient_leakage.gradient_leakage`).

Every rate carries a Wilson 95% interval over the points it counts (test images,
backdoored test images, reconstructed images).

Example:
    >>> res = federated_audit(ctx, FederatedAuditOptions(rounds=5))   # doctest: +SKIP
    >>> res.metrics["fedavg_accuracy"], res.metrics["backdoor_asr@fedavg"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dlsec.attacks.privacy.gradient_leakage import psnr
from dlsec.defenses.federated import (
    ATTACKS,
    PartitionError,
    check_attack,
    malicious_count,
    parse_partition,
)
from dlsec.errors import DlsecError
from dlsec.intervals import rate_interval, wilson_interval
from dlsec.models import ModelCard, build_model
from dlsec.scenarios.context import ScenarioContext, stream_seed
from dlsec.scenarios.federated import STRATEGY_NAMES, FederationCell, run_federations
from dlsec.scenarios.result import ScenarioResult, Table

REFERENCE = "fedavg"
BACKDOOR_ATTACK = "scale"
ROBUST_LOSS = 0.03  # a robust strategy losing more than this to clean FedAvg is a warning
@dataclass
class FederatedAuditOptions:
    """``clients`` (>= 2) federated over ``rounds`` rounds, partition ``partition`` (``iid``,
    ``dirichlet:<alpha>``, ``shards:<k>``), clients training ``local_epochs`` epochs of SGD at
    ``lr`` in batches of ``batch_size``; ``strategies`` (Flower's and dlsec's, clean FedAvg
    always runs) against ``attacks`` at each of ``fractions`` (in [0, 1); 0: the honest
    federation); ``backdoor``: the ``scale`` attack at ``backdoor_fraction`` against each
    strategy; ``leakage``: Inverting Gradients at ``leakage_batch_sizes``, ``leakage_trials``
    batches per size, ``leakage_iterations`` steps each."""

    clients: int = 10
    rounds: int = 10
    strategies: tuple[str, ...] = ("fedavg", "fedmedian", "multikrum", "clipping")
    attacks: tuple[str, ...] = ("sign-flip", "label-flip", "alie")
    fractions: tuple[float, ...] = (0.0, 0.1, 0.3)
    backdoor: bool = True
    backdoor_fraction: float = 0.1
    leakage: bool = True
    leakage_batch_sizes: tuple[int, ...] = (1, 4)
    leakage_trials: int = 4
    leakage_iterations: int = 300
    partition: str = "iid"
    local_epochs: int = 1
    lr: float = 0.1
    batch_size: int = 16

    def __post_init__(self) -> None:
        self.strategies = tuple(self.strategies)
        self.attacks = tuple(self.attacks)
        self.fractions = tuple(float(f) for f in self.fractions)
        self.leakage_batch_sizes = tuple(int(b) for b in self.leakage_batch_sizes)
        if not self.strategies or len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"strategies: name one or more of {', '.join(STRATEGY_NAMES)}, "
                             f"each once, got {list(self.strategies)}")
        bad = [s for s in self.strategies if s not in STRATEGY_NAMES]
        if bad:
            raise ValueError(f"strategies: unknown {bad} (choose from {', '.join(STRATEGY_NAMES)})")
        attacks = [a for a in ATTACKS if a != BACKDOOR_ATTACK]
        if len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"attacks: each once, got {list(self.attacks)}")
        for a in self.attacks:
            if a == BACKDOOR_ATTACK:
                raise ValueError("attacks: 'scale' is the backdoor: set backdoor = true "
                                 f"(attacks: choose from {', '.join(attacks)})")
            try:
                check_attack(a)
            except DlsecError:
                raise ValueError(f"attacks: unknown {a!r} (choose from {', '.join(attacks)})"
                                 ) from None
        for f in (*self.fractions, self.backdoor_fraction):
            if not 0.0 <= f < 1.0 or not math.isfinite(f):
                raise ValueError(f"fractions and backdoor-fraction: each in [0, 1), got {f:g}")
        if not self.fractions or len(set(self.fractions)) != len(self.fractions):
            raise ValueError(f"fractions: one or more distinct fractions in [0, 1), e.g. "
                             f"[0, 0.1, 0.3], got {list(self.fractions)}")
        if self.clients < 2:
            raise ValueError(f"clients: must be >= 2, got {self.clients}")
        if self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            raise ValueError("rounds, local-epochs and batch-size must be >= 1")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr: must be a positive number, got {self.lr}")
        try:
            parse_partition(self.partition)
        except PartitionError as e:
            raise ValueError(f"partition: {e}") from None
        if not self.leakage_batch_sizes or min(self.leakage_batch_sizes) < 1:
            raise ValueError(f"leakage-batch-sizes: one or more sizes >= 1, got "
                             f"{list(self.leakage_batch_sizes)}")
        if self.leakage_trials < 1 or self.leakage_iterations < 1:
            raise ValueError("leakage-trials and leakage-iterations must be >= 1")


@dataclass(frozen=True)
class Skipped:
    """A cell not run, and why."""

    cell: FederationCell
    reason: str


def plan_cells(opt: FederatedAuditOptions,
               tolerance: Any = None) -> tuple[list[FederationCell], list[Skipped]]:
    """The cells to run (clean FedAvg first, then each strategy's honest federation, the
    attack grid, the backdoor cells) and those skipped with their reason. ``tolerance``
    (strategy, clients, malicious) -> reason or None; default: Flower apps' rules."""
    if tolerance is None:
        from dlsec.defenses.federated.apps import tolerance_error as tolerance
    strategies = [REFERENCE, *(s for s in opt.strategies if s != REFERENCE)]
    wanted = [FederationCell(s) for s in strategies]
    for attack in opt.attacks:
        for frac in opt.fractions:
            if frac > 0:
                wanted += [FederationCell(s, frac, attack) for s in strategies]
    if opt.backdoor:
        wanted += [FederationCell(s, opt.backdoor_fraction, BACKDOOR_ATTACK) for s in strategies]
    cells: list[FederationCell] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for cell in wanted:
        if cell.key in seen:
            continue
        seen.add(cell.key)
        f = malicious_count(opt.clients, cell.malicious)
        if cell.malicious > 0 and f == 0:
            skipped.append(Skipped(cell, f"{cell.malicious:g} of {opt.clients} clients rounds to "
                                         "no malicious client"))
            continue
        reason = tolerance(cell.strategy, opt.clients, f)
        if reason:
            skipped.append(Skipped(cell, reason))
        else:
            cells.append(cell)
    return cells, skipped


def _attack_name(cell: FederationCell) -> str:
    return cell.attack if cell.malicious > 0 else "none"


def summarize(cells: Sequence[FederationCell], skipped: Sequence[Skipped], fed: ScenarioResult,
              *, n_test: int, n_backdoor: int) -> ScenarioResult:
    """The audit's view of ``run_federations``' result: a row per cell with its interval and
    its loss to clean FedAvg, the backdoor per strategy, the skipped cells, the warnings
    (a robust strategy more than 3 pp under clean FedAvg under an attack) and gate keys
    ``backdoor_asr@<strategy>``, ``backdoor_accuracy@<strategy>`` beside the cells' own."""
    res = ScenarioResult(name="federated-audit", metrics=dict(fed.metrics),
                         warnings=list(fed.warnings))
    ref = fed.metrics[f"{REFERENCE}_accuracy"]
    rows = []
    for cell in cells:
        if cell.attack == BACKDOOR_ATTACK and cell.malicious > 0:
            continue
        acc = fed.metrics[f"{cell.key}_accuracy"]
        lo, hi = rate_interval(acc, n_test)
        loss = round(100 * (ref - acc), 2)
        rows.append([cell.strategy, _attack_name(cell), cell.malicious, cell.key, round(acc, 4),
                     f"[{lo:.3f}, {hi:.3f}]", loss])
        if cell.strategy != REFERENCE and cell.malicious > 0 and ref - acc > ROBUST_LOSS:
            res.warnings.append(
                f"{cell.strategy} under {cell.attack} at {cell.malicious:g}: accuracy {acc:.3f}, "
                f"{100 * (ref - acc):.1f} pp under clean FedAvg ({ref:.3f}): it does not hold")
    res.tables.append(Table(
        "Final test accuracy per federation", ["strategy", "attack", "malicious fraction", "cell",
                                               "accuracy", "95% interval", "loss to clean FedAvg (pp)"],
        rows, caption=f"Wilson 95% intervals over the {n_test} test images; the loss is "
                      f"clean FedAvg's accuracy ({ref:.4f}) minus the cell's, in points."))
    backdoor = [c for c in cells if c.attack == BACKDOOR_ATTACK and c.malicious > 0]
    if backdoor:
        brows = []
        for cell in backdoor:
            asr = fed.metrics[f"{cell.key}_backdoor_asr"]
            acc = fed.metrics[f"{cell.key}_accuracy"]
            base = fed.figures["backdoor_asr_per_round"].get(cell.strategy, [float("nan")])[-1]
            res.metrics[f"backdoor_asr@{cell.strategy}"] = asr
            res.metrics[f"backdoor_accuracy@{cell.strategy}"] = acc
            alo, ahi = rate_interval(asr, n_backdoor)
            clo, chi = rate_interval(acc, n_test)
            brows.append([cell.strategy, cell.malicious, round(asr, 4), f"[{alo:.3f}, {ahi:.3f}]",
                          round(base, 4), round(acc, 4), f"[{clo:.3f}, {chi:.3f}]",
                          round(100 * (ref - acc), 2)])
        res.tables.append(Table(
            "Model-replacement backdoor per strategy",
            ["strategy", "malicious fraction", "backdoor success", "95% interval",
             "without attack", "main accuracy", "95% interval", "cost to clean FedAvg (pp)"],
            brows, caption=f"Success: share of the {n_backdoor} test images not of the target "
                           "class that the final global model classifies as the target once "
                           "the trigger is stamped on; 'without attack': the same rate for the "
                           "strategy's honest federation (the trigger alone)."))
    if skipped:
        res.tables.append(Table(
            "Cells not run", ["strategy", "attack", "malicious fraction", "reason"],
            [[s.cell.strategy, s.cell.attack, s.cell.malicious, s.reason] for s in skipped],
            caption="Skipped because the strategy cannot tolerate that many malicious clients "
                    "(or none would be malicious): not an error."))
    res.figures = {"accuracy_per_round": fed.figures["accuracy_per_round"],
                   "backdoor_asr_per_round": fed.figures["backdoor_asr_per_round"]}
    return res


def leakage_gallery(images: torch.Tensor, labels: Sequence[str], sizes: Sequence[int],
                    data_range: float) -> dict[str, Any]:
    """The gradient-leakage scenario's gallery (for each batch size: originals, then their
    matched reconstructions) laid out as two rows: the originals above, the reconstructions
    below, each reconstruction labelled with its PSNR."""
    originals, recs, olabels, rlabels = [], [], [], []
    at = 0
    for b in sizes:
        x, rec = images[at:at + b], images[at + b:at + 2 * b]
        originals.append(x)
        recs.append(rec)
        olabels += [str(s).replace(", original", "") for s in labels[at:at + b]]
        rlabels += [f"{p:.1f} dB" for p in psnr(rec, x, data_range=data_range).clamp(max=100.0).tolist()]
        at += 2 * b
    return {"images": torch.cat([*originals, *recs]), "labels": olabels + rlabels,
            "ncols": sum(sizes)}


def federated_audit(ctx: ScenarioContext, opt: FederatedAuditOptions) -> ScenarioResult:
    """Run the grid (one simulation), then gradient leakage; see the module docstring."""
    from dlsec.scenarios.gradient_leakage import gradient_leakage

    data = ctx.dataset
    cells, skipped = plan_cells(opt)
    arch = ctx.card.architecture
    fed = run_federations(data, arch, cells, clients=opt.clients, rounds=opt.rounds,
                          partition_spec=opt.partition, local_epochs=opt.local_epochs,
                          lr=opt.lr, batch_size=opt.batch_size, seed=ctx.seed,
                          device=str(ctx.device), progress=ctx.progress)
    target = int(fed.details["backdoor_target"])
    n_test = int(data.y_test.shape[0])
    n_backdoor = int((data.y_test != target).sum())
    res = summarize(cells, skipped, fed, n_test=n_test, n_backdoor=n_backdoor)
    res.details = {**fed.details, "n_test": n_test, "n_backdoor": n_backdoor,
                   "skipped": [{"key": s.cell.key, "reason": s.reason} for s in skipped]}
    if opt.leakage:
        card = ModelCard(architecture=arch, input_shape=list(data.input_shape),
                         classes=list(data.classes),
                         bounds=(float(data.bounds[0]), float(data.bounds[1])), dataset=data.name)
        model = build_model(card, factory=arch).to(ctx.device)
        model.load_state_dict(fed.artifacts["weights"][cells.index(FederationCell(REFERENCE))])
        model.eval()
        leak = gradient_leakage(data, model, card, batch_sizes=opt.leakage_batch_sizes,
                                iterations=opt.leakage_iterations, trials=opt.leakage_trials,
                                seed=stream_seed(ctx.seed, "federated/leakage") % 2**32)
        for b in opt.leakage_batch_sizes:
            n = b * opt.leakage_trials
            for name in ("recognised", "psnr", "ssim", "originals_recognised"):
                value = leak.metrics[f"{name}_b{b}"]
                if not math.isnan(value):
                    res.metrics[f"leakage_{name}@{b}"] = value
            lo, hi = rate_interval(leak.metrics[f"recognised_b{b}"], n)
            res.details[f"leakage_recognised_interval@{b}"] = [lo, hi]
        table = leak.tables[0]
        if not any("95%" in c for c in table.columns):  # the scenario's own interval, or ours
            table.columns.append("recognised 95% interval")
            for row in table.rows:
                lo, hi = res.details[f"leakage_recognised_interval@{row[0]}"]
                row.append(f"[{lo:.3f}, {hi:.3f}]")
        table.caption += (f"; the attacked weights: clean FedAvg's global model after "
                          f"{opt.rounds} rounds; {opt.leakage_trials} batches per size")
        res.tables.append(table)
        g = leak.figures["gallery"]
        lo_b, hi_b = g["bounds"]
        res.figures["gallery"] = {**leakage_gallery(g["images"], g["labels"],
                                                    opt.leakage_batch_sizes, hi_b - lo_b),
                                  "bounds": (lo_b, hi_b)}
        res.details["leakage"] = leak.details
    res.summary = _summary(res, cells, opt)
    return res


def _summary(res: ScenarioResult, cells: Sequence[FederationCell],
             opt: FederatedAuditOptions) -> str:
    m = res.metrics
    parts = [f"clean FedAvg {m[f'{REFERENCE}_accuracy']:.3f}"]
    for attack in opt.attacks:
        hit = [c for c in cells if c.attack == attack and c.malicious > 0]
        robust = [c.malicious for c in hit if c.strategy != REFERENCE]
        if not hit:
            continue
        top = max(robust or [c.malicious for c in hit])  # the largest fraction compared
        here = [c for c in hit if c.malicious == top]
        best = max(here, key=lambda c: m[f"{c.key}_accuracy"])
        avg = next((c for c in here if c.strategy == REFERENCE), None)
        text = f"{attack} at {top:g}: "
        if avg is not None:
            text += f"FedAvg {m[f'{avg.key}_accuracy']:.3f}, "
        if best.strategy != REFERENCE:
            text += f"best {best.strategy} {m[f'{best.key}_accuracy']:.3f}"
        parts.append(text.rstrip(", "))
    asr = {k.split("@", 1)[1]: v for k, v in m.items() if k.startswith("backdoor_asr@")}
    if asr:
        low = min(asr, key=lambda s: asr[s])
        parts.append(f"backdoor success FedAvg {asr.get(REFERENCE, float('nan')):.3f}, "
                     f"lowest {low} {asr[low]:.3f}")
    b = opt.leakage_batch_sizes[0]
    if f"leakage_recognised@{b}" in m:
        parts.append(f"gradient leakage at batch {b}: {m[f'leakage_recognised@{b}']:.0%} "
                     f"recognised, PSNR {m[f'leakage_psnr@{b}']:.1f} dB")
    return "; ".join(parts)


__all__ = ["FederatedAuditOptions", "Skipped", "federated_audit", "leakage_gallery",
           "plan_cells", "rate_interval", "summarize", "wilson_interval"]
