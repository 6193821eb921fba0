"""Section "Evasion (black-box)": what an attacker who sees only the model's API gets.

* Query attacks (score-based Square and NES; decision-based HopSkipJump and Boundary)
  through an oracle: robust accuracy against the number of queries per point, read off
  one run per attack at the largest budget.
* Transfer attacks: a surrogate per strategy (Jacobian augmentation from oracle labels;
  knockoff on out-of-distribution natural images; gray-box on same-distribution data the
  attacker holds), adversarials crafted on it and sent once to the model.
* The white-box comparison: a white-box PGD on the same points and radius. Black-box
  attacks can only use less information than white-box ones, so when they fool clearly
  more points the gradients are masked and the white-box numbers overstate robustness.

Attacked points are the first ``samples`` test points; the attacker's own data (the
Jacobian seed set, the gray-box training set) are the test points after them, never the
model's training data nor the attacked points.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult, Table
from dlsec.audit.sections import register_section
from dlsec.audit.sections._scale import auto, size_note

QUERY_ATTACKS = ("square", "nes", "hsja", "boundary")
DECISION_BASED = ("hsja", "boundary")
STRATEGIES = ("jacobian", "knockoff", "graybox")


@dataclass
class BlackBoxOptions:
    """``[blackbox]`` table of audit.toml.

    ``eps`` is in input units (0: 0.1 of the bounds' range for linf, 1.0 for l2, the
    white-box section's middle radius); ``budgets`` are the query budgets per point
    the curves are read at (the attacks run once, at the largest); ``attacks`` are query
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
    budgets: list[int] = field(default_factory=lambda: [10, 30, 100, 300, 1000])
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
        if not self.budgets or any(b < 1 for b in self.budgets):
            raise ValueError("budgets: one or more query budgets >= 1")
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
        from dlsec.attacks.evasion import attack_names

        bad = [a for a in self.craft if a not in attack_names()]
        if bad or (self.transfer and not self.craft):
            raise ValueError(f"craft: one or more white-box attacks (choose from {attack_names()})")


def _eps(options: BlackBoxOptions, bounds: tuple[float, float]) -> float:
    if options.eps:
        return float(options.eps)
    return round((0.1 if options.norm == "linf" else 1.0) * (bounds[1] - bounds[0]), 6)


def _query_attack(name: str, eps: float, norm: str, budget: int):
    from dlsec.attacks.blackbox import NESAttack, SquareAttack
    from dlsec.attacks.blackbox.boundary import BoundaryAttack
    from dlsec.attacks.blackbox.hsja import HopSkipJump

    if name == "square":
        return SquareAttack(eps=eps, norm=norm, max_queries=budget)  # type: ignore[arg-type]
    if name == "nes":
        return NESAttack(eps=eps, norm=norm, max_queries=budget)  # type: ignore[arg-type]
    if name == "hsja":
        return HopSkipJump(norm=norm, max_queries=budget, eps=eps)  # type: ignore[arg-type]
    return BoundaryAttack(max_queries=budget, eps=eps)


@register_section("blackbox", title="Evasion (black-box)", order=55, options=BlackBoxOptions,
                  version=2)
def run(ctx: AuditContext, options: BlackBoxOptions) -> SectionResult:
    from dlsec.attacks.blackbox import median
    from dlsec.audit.report.plots import bar_chart, line_chart

    ds, card = ctx.dataset, ctx.card
    n = min(options.samples, len(ds.y_test))
    x, y = ds.x_test[:n].to(ctx.device), ds.y_test[:n].to(ctx.device)
    eps, norm = _eps(options, card.bounds), options.norm
    budgets = sorted(set(options.budgets))
    ids = torch.arange(n)
    with torch.inference_mode():
        correct = ctx.model(x).argmax(1) == y
    clean = float(correct.double().mean())

    metrics: dict[str, float] = {"clean_accuracy": round(clean, 6), "eps": eps}
    curves: dict[str, tuple[list[int], list[float]]] = {}
    rows: list[list] = []
    fooled_bb = ~correct
    for i, name in enumerate(options.attacks):
        decision = name in DECISION_BASED
        oracle = ctx.oracle(output="label" if decision else "scores")
        attack = _query_attack(name, eps, norm, budgets[-1])
        res = attack(oracle, x, y, ids=ids, generator=ctx.generator(550 + i))
        within = _within(res, eps, norm) if decision else res.success
        robust = [1.0 - s for s in (res.success_at(budgets, eps=eps) if decision
                                     else res.success_at(budgets))]
        curves[name] = (budgets, [round(r, 6) for r in robust])
        fooled_bb |= within.to(fooled_bb.device) | ~correct
        dist = res.linf if norm == "linf" else res.l2
        med_dist = median(dist[res.success])
        metrics[f"{name}_robust_accuracy"] = round(robust[-1], 6)
        metrics[f"{name}_queries"] = float(oracle.queries_total)
        med_q = _queries_to_eps(res, eps) if decision else res.median_queries
        rows.append([name, "labels" if decision else "scores", budgets[-1], round(robust[-1], 4),
                     _num(med_q), _num(med_dist), oracle.queries_total])

    transfer_rows, transfer_best = _transfer(ctx, options, x, y, ids, eps, norm, n)
    for strategy, (best, fooled, queries) in transfer_best.items():
        metrics[f"transfer_{strategy}_success_rate"] = round(best, 6)
        metrics[f"transfer_{strategy}_queries"] = float(queries)
        fooled_bb |= fooled.to(fooled_bb.device)

    wb_fooled = _white_box(ctx, x, y, eps, norm) | ~correct
    wb_robust = float((~wb_fooled).double().mean())
    bb_robust = float((~fooled_bb).double().mean())
    gap = wb_robust - bb_robust
    only_bb = int((fooled_bb & ~wb_fooled).sum())
    metrics |= {"whitebox_robust_accuracy": round(wb_robust, 6),
                "blackbox_robust_accuracy": round(bb_robust, 6), "masking_gap": round(gap, 6)}
    warnings = []
    if gap > options.masking_margin:
        warnings.append(
            f"[gradient-masking] black-box attacks leave {bb_robust:.1%} robust at eps {eps:g} "
            f"but white-box PGD {wb_robust:.1%}: {only_bb} point(s) fall to black-box attacks "
            "only. The gradients mislead white-box attacks; trust the lower number."
        )

    figures = []
    if curves:
        figures.append(line_chart(
            curves, title=f"Robust accuracy vs queries per point ({norm}, eps {eps:g})",
            xlabel="queries per point", ylabel="accuracy under attack", logx=True,
            caption=f"{n} test points. Score-based attacks see class probabilities, "
            "decision-based ones only labels; each curve is read off one run at the largest "
            "budget (a point counts once the attack found an adversarial within eps).",
        ))
    if transfer_rows:
        crafts = list(dict.fromkeys(r[1] for r in transfer_rows))
        strategies = list(dict.fromkeys(r[0] for r in transfer_rows))
        values = {c: [next(r[2] for r in transfer_rows if r[0] == s and r[1] == c)
                      for s in strategies] for c in crafts}
        figures.append(bar_chart(
            strategies, values, title=f"Transfer success per surrogate ({norm}, eps {eps:g})",
            ylabel="share of points fooled", ylim=(0.0, 1.0),
            caption="Adversarials crafted on the attacker's surrogate and sent once to the model.",
        ))
    tables = [Table(
        "Query attacks",
        ["attack", "oracle", "budget per point", "robust accuracy", "median queries/success",
         f"median {norm} of successes", "queries spent"],
        rows, caption="Robust accuracy counts misclassified clean points as not robust.",
    )] if rows else []
    if transfer_rows:
        tables.append(Table(
            "Transfer attacks",
            ["surrogate", "crafted with", "success rate", "surrogate agreement",
             "training queries", "sending queries"],
            [r[:6] for r in transfer_rows],
            caption="Success rate over all attacked points (misclassified ones count as "
            "fooled); agreement is the surrogate's label agreement with the model on them. "
            f"Settings: {_settings(options, card, ds, n)}.",
        ))
    tables.append(Table(
        "White-box vs black-box", ["view", f"robust accuracy at eps {eps:g}"],
        [["white-box PGD", wb_robust], ["all black-box attacks", bb_robust],
         ["points fooled by black-box only", only_bb]],
    ))
    strongest = min(curves.items(), key=lambda kv: kv[1][1][-1])[0] if curves else None
    summary = f"{norm} eps {eps:g}: black-box robust accuracy {bb_robust:.1%} "
    summary += f"(white-box PGD {wb_robust:.1%})"
    if strongest is not None:
        summary += f"; strongest query attack {strongest}"
    if transfer_best:
        s, (best, _, _) = max(transfer_best.items(), key=lambda kv: kv[1][0])
        summary += f"; best transfer {s} {best:.1%}"
    return SectionResult(
        name="blackbox", title="Evasion (black-box)", summary=summary, metrics=metrics,
        tables=tables, figures=figures, warnings=warnings,
        details={"settings": _settings(options, card, ds, n), "eps": eps, "norm": norm,
                 "budgets": budgets,
                 "curves": {k: v[1] for k, v in curves.items()}},
    )


def _num(v: float) -> float | str:
    return "—" if v != v else round(v, 4)


def _queries_to_eps(res, eps: float) -> float:
    """Median queries a decision-based attack spent until its adversarial was within
    ``eps`` (over the points where it got there), from the result's trace."""
    from dlsec.attacks.blackbox import median

    inside = res.trace_dist <= eps * (1 + 1e-6)  # T x N
    reached = inside.any(0)
    if not bool(reached.any()):
        return float("nan")
    first = inside.to(torch.int64).argmax(0)  # the first iteration within eps
    spent = res.trace_queries.gather(0, first.view(1, -1)).squeeze(0)
    return median(spent[reached])


def _within(res, eps: float, norm: str) -> torch.Tensor:
    dist = res.linf if norm == "linf" else res.l2
    return res.success & (dist <= eps * (1 + 1e-6))


def _white_box(ctx: AuditContext, x, y, eps: float, norm: str) -> torch.Tensor:
    """Points white-box PGD (40 steps, random start) fools at ``eps``."""
    from dlsec.attacks.evasion import make_attack

    pgd = make_attack("pgd", norm=norm, steps=40)
    res = pgd(ctx.model, x, y, eps=[eps], card=ctx.card, generator=ctx.generator(560))
    return res.success[0].to(x.device)


def _surrogate_epochs(options: BlackBoxOptions, card) -> int:
    return auto(options.surrogate_epochs, card, small=30, large=10)


def _surrogate_config(ctx: AuditContext, options: BlackBoxOptions, strategy: str, epochs: int,
                      *, salt: int):
    """``train_surrogate``'s own default (None: 30 epochs) unless the epochs differ from it;
    then the same recipe (Adam, lr 3e-3, batch 64 gray-box / 128) with those epochs."""
    from dlsec.training import TrainConfig

    if options.surrogate_epochs == 0 and epochs == 30:
        return None
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator(salt)))
    return TrainConfig(epochs=epochs, lr=3e-3, batch_size=64 if strategy == "graybox" else 128,
                       val_fraction=0.0, seed=seed, device=str(ctx.device),
                       measure_train_accuracy=False)


def _settings(options: BlackBoxOptions, card, ds, n: int) -> str:
    text = f"{n} attacked test points"
    if options.transfer:
        held = max(0, min(options.transfer_budget, len(ds.y_test) - n))
        text += (f"; transfer surrogates train for {_surrogate_epochs(options, card)} epochs on "
                 f"at most {options.transfer_budget} oracle answers (gray-box: on {held} labelled "
                 "test records after the attacked ones)")
    return f"{text}; {size_note(card)}"


def _transfer(ctx: AuditContext, options: BlackBoxOptions, x, y, ids, eps: float, norm: str,
              n: int) -> tuple[list[list], dict[str, tuple[float, torch.Tensor, int]]]:
    """Per strategy and crafting attack: ``[strategy, craft, success, agreement,
    training queries, sending queries]``; per strategy the best success, its fooled mask
    and the queries spent."""
    if not options.transfer or not options.craft:
        return [], {}
    from dlsec.attacks.blackbox.transfer import train_surrogate, transfer_attack

    ds = ctx.dataset
    # the attacker's own records: test points after the attacked ones, as many as the
    # other strategies buy answers
    end = n + options.transfer_budget
    x_att, y_att = ds.x_test[n:end].to(ctx.device), ds.y_test[n:end].to(ctx.device)
    epochs = _surrogate_epochs(options, ctx.card)
    rows: list[list] = []
    best: dict[str, tuple[float, torch.Tensor, int]] = {}
    for j, strategy in enumerate(options.transfer):
        # Papernot et al.'s substitute learns from labels; Knockoff Nets from probabilities
        oracle = ctx.oracle(output="scores" if strategy == "knockoff" else "label")
        surrogate = train_surrogate(
            strategy, oracle, card=ctx.card, x_attacker=x_att,
            y_attacker=y_att if strategy == "graybox" else None,
            budget=options.transfer_budget, generator=ctx.generator(570 + j),
            config=_surrogate_config(ctx, options, strategy, epochs, salt=590 + j),
        )
        trained = oracle.queries_total
        res = transfer_attack(oracle, surrogate, x, y, eps=eps, norm=norm,
                              attacks=tuple(options.craft), ids=ids,
                              generator=ctx.generator(580 + j))
        with torch.inference_mode():
            agree = float((surrogate.model(x).argmax(1) == ctx.model(x).argmax(1)).double().mean())
        sent = oracle.queries_total - trained
        per = res.results
        for craft, r in per.items():
            rows.append([strategy, craft, r.success_rate, agree, trained, sent])
        top = max(per, key=lambda c: per[c].success_rate)
        fooled = torch.stack([r.success for r in per.values()]).any(0)
        best[strategy] = (per[top].success_rate, fooled, oracle.queries_total)
    return rows, best
