"""Section "Evasion (white-box)": robust accuracy vs epsilon per gradient attack, example
adversarials, and the warnings that say when the evaluation cannot be trusted."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult, Table
from dlsec.audit.sections import register_section

LINF_EPS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
L2_EPS = (0.25, 0.5, 1.0, 2.0, 3.0)


@dataclass
class EvasionOptions:
    """``[evasion]`` table of audit.toml.

    ``eps`` is in input units (empty: a default grid scaled to the card's bounds);
    ``attacks`` are registered evasion attacks, weakest first, each run on every point;
    ``ensemble`` adds the AutoAttack-style ensemble (APGD-CE, then APGD-T on the points
    still robust, plus any registered black-box stage) at ``ensemble-eps`` (default: the
    middle of the grid, as the ensemble is the costly part); ``samples`` test points
    are attacked (the first ones of the seeded test split). ``adversarial-training``
    (``pgd``, ``fgsm-rs`` or ``trades``) also trains a hardened copy of the model at
    ``at-eps`` (default: the middle of the grid) for ``at-epochs`` and shows the same
    curves after it.
    """

    norm: str = "linf"
    eps: list[float] = field(default_factory=list)
    attacks: list[str] = field(default_factory=lambda: ["fgsm", "pgd"])
    ensemble: bool = True
    ensemble_eps: list[float] = field(default_factory=list)
    samples: int = 200
    steps: int = 40
    adversarial_training: str = ""
    at_eps: float = 0.0
    at_epochs: int = 20

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm: must be linf or l2, got {self.norm!r}")
        if self.adversarial_training not in ("", "pgd", "fgsm-rs", "trades"):
            raise ValueError(
                "adversarial-training: must be pgd, fgsm-rs or trades, got "
                f"{self.adversarial_training!r}"
            )
        if self.at_eps < 0 or self.at_epochs < 1:
            raise ValueError("at-eps must be >= 0 and at-epochs >= 1")
        if self.samples < 1 or self.steps < 1:
            raise ValueError("samples and steps must be >= 1")
        if any(not 0 <= e < float("inf") for e in (*self.eps, *self.ensemble_eps, self.at_eps)):
            raise ValueError("eps, ensemble-eps and at-eps: values must be finite and >= 0")
        if not self.attacks:
            raise ValueError('attacks: name one or more attacks, e.g. ["fgsm", "pgd"]')
        from dlsec.attacks.evasion import AttackError

        for name in self.attacks:  # unknown names and unsupported norms, before any work
            try:
                _attack(name, self)
            except AttackError as exc:
                raise ValueError(f"attacks: {exc}") from None


def _eps_grid(options: EvasionOptions, bounds: tuple[float, float]) -> list[float]:
    if options.eps:
        return sorted(float(e) for e in options.eps)
    span = bounds[1] - bounds[0]
    base = LINF_EPS if options.norm == "linf" else L2_EPS
    return [round(e * span, 6) for e in base]


def _attack(name: str, options: EvasionOptions):
    from dlsec.attacks.evasion import make_attack

    kwargs: dict[str, object] = {"norm": options.norm}
    if name in ("pgd", "bim", "mifgsm"):
        kwargs["steps"] = options.steps
    if name in ("cw", "deepfool") and options.norm != "l2":
        raise ValueError(f"attacks: {name} is an L2 attack; set norm = \"l2\" to use it")
    if name == "cw":
        kwargs.pop("norm")  # L2 only: it takes no norm
    return make_attack(name, **kwargs)


@register_section("evasion", title="Evasion (white-box)", order=50, options=EvasionOptions)
def run(ctx: AuditContext, options: EvasionOptions) -> SectionResult:
    from dlsec.audit.report.plots import image_grid, line_chart

    ds, card = ctx.dataset, ctx.card
    n = min(options.samples, len(ds.y_test))
    x, y = ds.x_test[:n].to(ctx.device), ds.y_test[:n].to(ctx.device)
    eps = _eps_grid(options, card.bounds)
    results, robust_all, clean = _evaluate(ctx, ctx.model, x, y, eps, options)

    metrics: dict[str, float] = {"clean_accuracy": clean}
    for e, ra in zip(eps, robust_all, strict=True):
        metrics[f"robust_accuracy@{e:g}"] = ra
    rows = _rows(results, "")
    warnings = _warnings(ctx, results, x, y, eps, options.norm)

    series = {name: (res.eps, res.robust_accuracy) for name, res in results.items()}
    series["all attacks"] = (eps, robust_all)
    summary_after = ""
    if options.adversarial_training:
        hardened = _harden(ctx, options, eps)
        after, robust_after, clean_after = _evaluate(ctx, hardened, x, y, eps, options)
        method = options.adversarial_training
        series[f"all attacks, after {method} training"] = (eps, robust_after)
        metrics["clean_accuracy_after_at"] = clean_after
        for e, ra in zip(eps, robust_after, strict=True):
            metrics[f"robust_accuracy_after_at@{e:g}"] = ra
        rows += _rows(after, f" (after {method})")
        summary_after = (
            f"; after {method} adversarial training {robust_after[len(eps) // 2]:.1%} "
            f"(clean {clean_after:.1%})"
        )
    figures = [
        line_chart(
            series, title=f"Robust accuracy vs epsilon ({options.norm})", xlabel="epsilon",
            ylabel="accuracy under attack",
            caption="Share of test points still classified correctly under each attack; "
            "'all attacks' counts a point robust only if every attack failed on it.",
        )
    ]
    grid = _example_grid(ctx, results[options.attacks[-1]], x, y, eps) if options.attacks else None
    if grid is not None:
        figures.append(image_grid(**grid))
    mid = eps[len(eps) // 2]
    return SectionResult(
        name="evasion",
        title="Evasion (white-box)",
        summary=f"{options.norm} robust accuracy {robust_all[len(eps) // 2]:.1%} at eps {mid:g} "
        f"(clean {clean:.1%}); {robust_all[-1]:.1%} at eps {eps[-1]:g}{summary_after}",
        metrics=metrics,
        tables=[
            Table(
                "Robust accuracy per attack",
                ["attack", "epsilon", "robust accuracy", "success rate", "gradients"],
                rows,
                caption=f"{n} test points; gradients = forward+backward passes spent.",
            )
        ],
        figures=figures,
        warnings=warnings,
        details={name: r.summary() for name, r in results.items()} | {"eps": eps},
    )


def _evaluate(ctx: AuditContext, model, x, y, eps: list[float], options: EvasionOptions):
    """Run every configured attack; a point is robust at eps only if no attack fooled it."""
    results = {}
    for i, name in enumerate(options.attacks):
        attack = _attack(name, options)
        results[name] = attack(model, x, y, eps=eps, card=ctx.card, generator=ctx.generator(50 + i))
    fooled_any = torch.stack([r.success for r in results.values()]).any(0)
    clean = float(next(iter(results.values())).clean_correct.double().mean())
    if options.ensemble:
        from dlsec.attacks.evasion.ensemble import evaluate_robustness

        mid = eps[len(eps) // 2]
        ens_eps = sorted(options.ensemble_eps) if options.ensemble_eps else [mid]
        report = evaluate_robustness(
            model, x, y, norm=options.norm, eps=ens_eps, card=ctx.card,
            generator=ctx.generator(49), checks=False, progress=False,
        )
        full = torch.zeros_like(fooled_any)
        for j, e in enumerate(ens_eps):
            for k, ek in enumerate(eps):
                if ek >= e:  # an adversarial inside a ball is inside every larger one
                    full[k] |= ~report.robust[j].to(full.device)
        fooled_any = fooled_any | full
        results["ensemble"] = _EnsembleView(report)
    robust_all = [float((~f).double().mean()) for f in fooled_any]
    return results, robust_all, clean


class _EnsembleView:
    """The ensemble's report seen through the fields the section reads of an EvasionResult."""

    def __init__(self, report) -> None:
        self.attack = "ensemble"
        self.eps = list(report.eps)
        self.success = ~report.robust
        self.clean_correct = report.clean_correct
        self.robust_accuracy = list(report.robust_accuracy)
        self.success_rate = [1.0 - a for a in report.robust_accuracy]
        self.stages = " -> ".join(report.attacks)
        self.stage_accuracy = report.stage_accuracy

    def summary(self) -> dict:
        return {"attack": "ensemble", "stages": self.stages, "eps": self.eps,
                "robust_accuracy": self.robust_accuracy,
                "stage_accuracy": self.stage_accuracy}


def _rows(results: dict, suffix: str) -> list[list]:
    rows = []
    for name, res in results.items():
        grads = getattr(res, "gradients", None)
        for k, e in enumerate(res.eps):
            spent = "—" if grads is None else int(grads[k].sum())
            rows.append([name + suffix, e, res.robust_accuracy[k], res.success_rate[k], spent])
    return rows


def _harden(ctx: AuditContext, options: EvasionOptions, eps: list[float]):
    """A copy of the audited architecture trained adversarially on the same data."""
    from dlsec.audit.runner import train_config
    from dlsec.defenses.adversarial_training import adversarial_train

    at_eps = options.at_eps or eps[len(eps) // 2]
    config = train_config(ctx.config, ctx.dataset)
    config.epochs = options.at_epochs
    config.device = str(ctx.device)
    model, _, _ = adversarial_train(
        ctx.dataset, ctx.card.architecture, method=options.adversarial_training, eps=at_eps,
        norm="l2" if options.norm == "l2" else "linf", config=config, normalization=ctx.card.normalization,
        progress=ctx.progress,
    )
    return model.eval()


def _warnings(ctx: AuditContext, results: dict, x, y, eps: list[float], norm: str) -> list[str]:
    """Signs that the evaluation may be unreliable (the sanity checks of
    :mod:`dlsec.attacks.evasion.sanity`, plus weaker-vs-stronger on the results at hand)."""
    from dlsec.attacks.evasion.sanity import check_curve, large_eps_check, model_checks

    out = model_checks(ctx.model, x[:100], y[:100])
    out += large_eps_check(ctx.model, x[:100], y[:100], norm=norm, bounds=ctx.card.bounds)
    per_attack = {k: v for k, v in results.items() if k != "ensemble"}
    for name, res in per_attack.items():
        out += [f"{name}: {w}" for w in check_curve(res.eps, res.robust_accuracy)]
    for weak, strong in itertools.pairwise(per_attack):
        beats = per_attack[weak].success[-1] & ~per_attack[strong].success[-1]
        if bool(beats.any()):
            out.append(
                f"[weaker-attack] {weak} fooled {int(beats.sum())} point(s) that {strong} did "
                f"not at eps {eps[-1]:g}: the stronger attack may be hampered by masked gradients"
            )
    return out


def _example_grid(ctx: AuditContext, res, x, y, eps) -> dict | None:
    """Clean / amplified perturbation / adversarial rows for up to 8 fooled points."""
    if len(ctx.card.input_shape) != 3:
        return None
    k = min(range(len(eps)), key=lambda i: abs(res.robust_accuracy[i] - 0.5))
    fooled = torch.nonzero(res.success[k] & res.clean_correct).flatten()[:8]
    if fooled.numel() == 0:
        return None
    classes = ctx.card.classes
    lo, hi = ctx.card.bounds
    clean_x, adv_x = x[fooled], res.x_adv[k][fooled]
    delta = adv_x - clean_x
    scale = delta.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    amplified = lo + (hi - lo) * (0.5 + 0.5 * delta / scale)
    with torch.inference_mode():
        pred = ctx.model(adv_x).argmax(1)
    images = torch.cat([clean_x, amplified, adv_x]).cpu()
    labels = (
        [f"clean: {classes[int(c)]}" for c in y[fooled]]
        + ["perturbation" for _ in fooled]
        + [f"adv: {classes[int(p)]}" for p in pred]
    )
    return {
        "images": images, "labels": labels, "ncols": fooled.numel(), "bounds": (lo, hi),
        "title": f"Adversarial examples ({res.attack}, eps {eps[k]:g})",
        "caption": "Top: clean inputs with their true labels. Middle: the perturbation, "
        "amplified to the full range. Bottom: the adversarial inputs with the model's prediction.",
    }
