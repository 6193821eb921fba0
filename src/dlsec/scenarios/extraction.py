"""Model extraction: steal a substitute through the model's oracle.

The test split is cut in two at random (stream ``extraction/split``): one half is the
attacker's unlabeled data, the other (at most ``max_eval`` records) measures fidelity, the
share of inputs on which the substitute predicts what the model predicts. Each run is one
query strategy (:data:`STRATEGIES`) against one output policy, within the same budget and
from the same seeds (streams ``extraction/substitute`` and ``extraction/proposal``), so
runs differ only by what they measure.

The output of a run is any :class:`dlsec.output_policies.OutputPolicy` spec (``scores``,
``label``, ``topk:1``, ``rounded:1``, ``noise:0.1``, ``reverse-sigmoid:0.7,0.4``...), the
same degradation a served key gets. ``label`` trains the substitute on labels; every other
policy on the answered vectors (soft cross-entropy). ``topk`` and ``rounded`` answers do
not sum to 1, so the attacker renormalises each row first (``topk:1`` is then the one-hot
label); ``noise`` and ``reverse-sigmoid`` answers already sum to 1 and are used as sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from dlsec.attacks.surrogate import STRATEGIES, ExtractionResult, default_schedule, extract
from dlsec.errors import DlsecError
from dlsec.output_policies import SPEC_FORMS, OutputPolicy, PolicyError
from dlsec.scenarios.context import ScenarioContext
from dlsec.scenarios.result import ScenarioResult, Table
from dlsec.threat import Oracle, OracleWrapper
from dlsec.training import TrainConfig, predict_logits

OUTPUTS = ("scores", "label")  # the plain kinds; any OutputPolicy spec is accepted
EXTRACTION_EVAL = 2000  # held-out test inputs fidelity is measured on, at most (the audit's)


def output_policy(spec: str) -> OutputPolicy:
    """The output policy of a run's spec; a bad one is a one-line :class:`DlsecError`."""
    try:
        return OutputPolicy.parse(spec)
    except PolicyError:
        raise DlsecError(f"unknown oracle output {spec!r} (valid forms: {SPEC_FORMS})") from None


class _Renormalised(OracleWrapper):
    """What an attacker does with ``topk``/``rounded`` answers: each row divided by its sum
    (rows are never all zero: the top probability is at least 1/C and survives both)."""

    def query(self, x: torch.Tensor, *, ids: torch.Tensor | None = None) -> torch.Tensor:
        out = self.inner.query(x, ids=ids)
        return out / out.sum(1, keepdim=True).clamp_min(1e-12)


def attacker_view(oracle: Oracle) -> Oracle:
    """The oracle as a rational attacker trains on it: ``topk`` and ``rounded`` rows
    renormalised to sum to 1, every other kind as sent."""
    return _Renormalised(oracle) if oracle.output in ("topk", "rounded", "topk-rounded") else oracle


def default_runs(strategies: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Every strategy on scores, and ``active`` on labels too when it is named."""
    runs = [(s, "scores") for s in strategies]
    if "active" in strategies:
        runs.append(("active", "label"))
    return tuple(runs)


@dataclass
class ExtractionOptions:
    """``runs``: ``(strategy, output)`` pairs, ``output`` an output-policy spec; ``budget``: queries per run; ``epochs``:
    substitute training per checkpoint (None: the attack's default recipe); ``rounds``:
    checkpoints (None: the attack's default schedule); ``max_eval``: held-out inputs at most
    (None: the whole other half)."""

    runs: tuple[tuple[str, str], ...] = field(
        default_factory=lambda: default_runs(("random", "natural", "active")))
    budget: int = 1000
    epochs: int | None = 10
    rounds: int | None = 3
    max_eval: int | None = EXTRACTION_EVAL

    def __post_init__(self) -> None:
        for strategy, output in self.runs:
            if strategy not in STRATEGIES:
                raise DlsecError(f"unknown extraction strategy {strategy!r} "
                                 f"(choose from {', '.join(STRATEGIES)})")
            output_policy(output)
        if not self.runs or self.budget < 1:
            raise DlsecError("extraction needs at least one run and a budget >= 1")


def run_extraction(ctx: ScenarioContext, options: ExtractionOptions | None = None
                   ) -> ScenarioResult:
    """Each run's fidelity and accuracy, fidelity-vs-queries data in ``figures["fidelity"]``.

    ``artifacts["results"]``: one :class:`~dlsec.attacks.surrogate.ExtractionResult` per run
    (its ``substitute`` is the stolen model).
    """
    opt = options or ExtractionOptions()
    ds = ctx.dataset
    n = len(ds.y_test)
    half = n // 2
    perm = torch.randperm(n, generator=ctx.generator("extraction/split"))
    pool, held = ds.x_test[perm[:half]], perm[half:]
    if opt.max_eval is not None:
        held = held[: opt.max_eval]
    eval_x, eval_y = ds.x_test[held].to(ctx.device), ds.y_test[held].to(ctx.device)
    victim_labels = predict_logits(ctx.model, eval_x).argmax(1)
    cfg = None if opt.epochs is None else TrainConfig(
        epochs=opt.epochs, lr=3e-3, batch_size=128, val_fraction=0.0,
        seed=ctx.seed_for("extraction/substitute"), device=str(ctx.device),
        measure_train_accuracy=False)
    schedule = None if opt.rounds is None else default_schedule(opt.budget, rounds=opt.rounds)
    series: dict[str, tuple[list[float], list[float]]] = {}
    rows: list[list] = []
    results: list[ExtractionResult] = []
    for strategy, output in opt.runs:
        policy = output if output in OUTPUTS else output_policy(output)
        oracle = attacker_view(ctx.oracle(output=policy, budget=opt.budget))
        res = extract(oracle, card=ctx.card, strategy=strategy,  # type: ignore[arg-type]
                      budget=opt.budget, x_pool=pool, eval_x=eval_x,
                      eval_victim_labels=victim_labels, eval_y=eval_y, schedule=schedule,
                      config=cfg, generator=ctx.generator("extraction/proposal"),
                      progress=ctx.progress)
        results.append(res)
        series[f"{strategy} ({output})"] = ([c["queries"] for c in res.curve],
                                            [c["fidelity"] for c in res.curve])
        rows.append([strategy, output, res.queries, round(res.fidelity, 4),
                     round(res.accuracy, 4)])
    metrics: dict[str, float] = {}
    scores = [r.fidelity for r, (_, o) in zip(results, opt.runs, strict=True) if o == "scores"]
    labels = [r.fidelity for r, (_, o) in zip(results, opt.runs, strict=True) if o == "label"]
    if scores:
        metrics["extraction_fidelity"] = round(max(scores), 6)
    if labels:
        metrics["extraction_fidelity_labels"] = round(labels[-1], 6)
    if scores or labels:
        kind = "score" if scores else "label"
        fidelity = max(scores) if scores else labels[-1]
    else:
        kind, fidelity = f"{opt.runs[-1][1]}", results[-1].fidelity
    summary = (f"a substitute agrees with the model on {fidelity:.1%} of held-out inputs after "
               f"{opt.budget} {kind} queries")
    stolen = metrics.get("extraction_fidelity", 0.0)
    warnings = [f"the model can be stolen through its scores: {stolen:.1%} fidelity with "
                f"{opt.budget} queries"] if stolen > 0.9 else []
    return ScenarioResult(
        name="extraction", summary=summary, metrics=metrics,
        tables=[Table("Model extraction", ["strategy", "output", "queries", "fidelity",
                                           "accuracy"], rows)],
        figures={"fidelity": series}, warnings=warnings,
        details={"held_out": int(held.numel()), "attacker_records": half, "budget": opt.budget},
        artifacts={"results": results})


__all__ = ["EXTRACTION_EVAL", "OUTPUTS", "STRATEGIES", "ExtractionOptions", "attacker_view",
           "default_runs", "output_policy", "run_extraction"]
