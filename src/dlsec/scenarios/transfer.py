"""The transfer threat: the attacker trains a surrogate of the model, crafts adversarials on
it with white-box attacks and sends each one to the model once.

Per surrogate strategy (:data:`dlsec.attacks.surrogate.SURROGATE_STRATEGIES`: ``jacobian``
learns from the oracle's labels, ``knockoff`` from its probabilities on natural images,
``graybox`` from labelled data the attacker holds, no query): a surrogate trained within
``budget`` oracle answers (an oracle total), then each crafting attack at every eps of
the threat (:func:`dlsec.attacks.blackbox.transfer.transfer_attack`).

Data: the attacked points are the first ``samples`` test points; the attacker's own
records (the Jacobian seed set, the gray-box training set, as many as it may buy answers)
are the test points after them, never the model's training data nor the attacked points.
When no test point is left, the attacked points are cut in half and the attacker holds
the second half. Each strategy draws from the stream ``"transfer/<strategy>"`` (its
surrogate's training seed from ``"transfer/<strategy>/training"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dlsec.attacks import attack_names
from dlsec.attacks.blackbox.transfer import TransferResult, train_surrogate, transfer_attack
from dlsec.attacks.surrogate import SURROGATE_STRATEGIES
from dlsec.scenarios.context import ScenarioContext
from dlsec.scenarios.result import ScenarioResult, Table
from dlsec.training import TrainConfig


def crafting_attack_names() -> list[str]:
    """White-box attacks a surrogate can craft with."""
    return attack_names("white-box")


@dataclass
class TransferOptions:
    """``strategies``: surrogate strategies; ``craft``: white-box attacks run on the
    surrogate; ``samples``: the first test points attacked; ``budget``: oracle answers a
    surrogate may buy (the gray-box attacker holds as many labelled records);
    ``surrogate_epochs``: ``None`` for :func:`train_surrogate`'s own recipe (30 epochs),
    else the same recipe with that many epochs; ``watch``: a context each surrogate trains
    in (oracle, label, most queries)."""

    strategies: Sequence[str] = SURROGATE_STRATEGIES
    craft: Sequence[str] = ("pgd", "mifgsm", "difgsm")
    samples: int = 50
    budget: int = 1600
    surrogate_epochs: int | None = None
    watch: Callable[[Any, str, int], AbstractContextManager[Any]] | None = None


def _config(ctx: ScenarioContext, strategy: str, epochs: int | None) -> TrainConfig | None:
    if epochs is None:
        return None
    return TrainConfig(epochs=epochs, lr=3e-3, batch_size=64 if strategy == "graybox" else 128,
                       val_fraction=0.0, seed=ctx.seed_for(f"transfer/{strategy}/training"),
                       device=str(ctx.device), measure_train_accuracy=False)


def attacker_data(ctx: ScenarioContext, samples: int, budget: int
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x, y, x_attacker, y_attacker)``: the attacked points and the attacker's records
    (see the module)."""
    attacked, rest = ctx.attacker_split(samples)
    ds = ctx.dataset
    x, y = ds.x_test[attacked].to(ctx.device), ds.y_test[attacked].to(ctx.device)
    held = rest[:budget]
    if held.numel():
        return x, y, ds.x_test[held].to(ctx.device), ds.y_test[held].to(ctx.device)
    half = len(y) // 2
    return x[:half], y[:half], x[half:], y[half:]


def transfer_threat(ctx: ScenarioContext, options: TransferOptions) -> ScenarioResult:
    """Train one surrogate per strategy and transfer from it at every eps of the threat.

    Metrics per strategy (at the last eps): ``transfer_<strategy>_success_rate`` (the best
    crafting attack's), ``transfer_<strategy>_queries`` (training and sending).
    ``artifacts``: ``x``, ``y``, ``results[strategy]`` (a :class:`TransferResult` per
    eps), ``fooled[strategy]`` (fooled by any crafting attack at the last eps),
    ``training_queries[strategy]``."""
    assert ctx.threat is not None
    eps, norm = [float(e) for e in ctx.threat.eps], ctx.threat.norm
    x, y, x_att, y_att = attacker_data(ctx, options.samples, options.budget)
    ids = torch.arange(len(y))
    metrics: dict[str, float] = {}
    rows: list[list[Any]] = []
    results: dict[str, list[TransferResult]] = {}
    fooled: dict[str, Tensor] = {}
    trained_q: dict[str, int] = {}
    watch = options.watch or (lambda *_: nullcontext())
    for strategy in options.strategies:
        # Papernot et al.'s substitute learns from labels; Knockoff Nets from probabilities
        oracle = ctx.oracle(output="scores" if strategy == "knockoff" else "label")
        g = ctx.generator(f"transfer/{strategy}")
        with watch(oracle, f"{strategy} surrogate", options.budget):
            surrogate = train_surrogate(
                strategy, oracle, card=ctx.card, x_attacker=x_att,
                y_attacker=y_att if strategy == "graybox" else None, budget=options.budget,
                generator=g, config=_config(ctx, strategy, options.surrogate_epochs),
                progress=ctx.progress,
            )
        trained = trained_q[strategy] = oracle.queries_total
        per_eps = transfer_attack(oracle, surrogate, x, y, eps=eps, norm=norm,
                                  attacks=tuple(options.craft), ids=ids, generator=g)
        results[strategy] = per_eps
        with torch.inference_mode():
            agree = float((surrogate.model(x).argmax(1) == ctx.model(x).argmax(1))
                          .double().mean())
        sent = oracle.queries_total - trained
        for e, res in zip(eps, per_eps, strict=True):
            for craft, r in res.results.items():
                rows.append([strategy, craft, e, r.success_rate, agree, trained, sent])
        last = per_eps[-1].results
        fooled[strategy] = torch.stack([r.success for r in last.values()]).any(0)
        metrics[f"transfer_{strategy}_success_rate"] = round(per_eps[-1].best_success_rate, 6)
        metrics[f"transfer_{strategy}_queries"] = float(oracle.queries_total)
    crafts = list(options.craft)
    figures = {"strategies": list(options.strategies), "eps": eps[-1], "norm": norm,
               "success": {c: [results[s][-1].results[c].success_rate for s in options.strategies]
                           for c in crafts}}
    tables = [Table(
        "Transfer attacks",
        ["surrogate", "crafted with", "eps", "success rate", "surrogate agreement",
         "training queries", "sending queries"], rows,
        caption="Success rate over all attacked points (misclassified ones count as fooled); "
        "agreement is the surrogate's label agreement with the model on them.",
    )] if rows else []
    summary = ", ".join(f"{s} {metrics[f'transfer_{s}_success_rate']:.1%}"
                        for s in options.strategies)
    return ScenarioResult(
        name="transfer", summary=f"{norm} eps {eps[-1]:g}: transfer success {summary}",
        metrics=metrics, tables=tables, figures=figures,
        details={"samples": len(y), "attacker_records": len(y_att), "budget": options.budget},
        artifacts={"x": x, "y": y, "results": results, "fooled": fooled,
                   "training_queries": trained_q},
    )


__all__ = ["TransferOptions", "attacker_data", "crafting_attack_names", "transfer_threat"]
