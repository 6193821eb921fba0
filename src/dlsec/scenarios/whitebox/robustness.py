"""White-box evasion, wired once for the audit, the CLI and the benchmarks.

Three entry points, each a function of a :class:`ScenarioContext` (the threat model gives
the norm, the epsilons, targeted or not, and the bounds; the first test points are
attacked):

* :func:`robustness`: the audit's evaluation: each named attack over the epsilon grid, the
  AutoAttack-style ensemble (:mod:`.ensemble`) at a few of them, the gradient-masking
  checks, and optionally the same after adversarial training;
* :func:`ensemble_evaluation`: the ensemble alone with its own checks and a resume file
  (``dlsec evaluate``);
* :func:`single_attack`: one registered white-box attack by name (``dlsec attack NAME``).

Seeds are named streams of the run seed: ``whitebox/<attack>``, ``whitebox/ensemble``.

``amp`` (``"bf16"``, or ``"fp16"`` on CUDA) runs the attacks' search under autocast
(:class:`dlsec.training.AutocastModel`); clean accuracy and every verdict are float32: a
single attack's adversarials are re-checked by the float32 model (:func:`verify_float32`)
and the ensemble checks its own (:mod:`.ensemble`), so half precision may miss an
adversarial but never reports one that the float32 model does not confirm.

Example:
    >>> ctx = ScenarioContext(model, card, dataset, ThreatModel.from_card(card, eps=(0.1, 0.2)))
    >>> result = robustness(ctx, WhiteBoxOptions(attacks=["fgsm", "pgd"]))   # doctest: +SKIP
    >>> result.metrics["robust_accuracy@0.2"]                                # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from dlsec.attacks.core import AttackError, TargetSpec, is_adversarial, module_mode
from dlsec.attacks.evasion import EvasionAttack, EvasionResult
from dlsec.attacks.registry import attack_kind, make_attack
from dlsec.scenarios.context import ScenarioContext
from dlsec.scenarios.result import ScenarioResult, Table
from dlsec.scenarios.sharding import Shard
from dlsec.scenarios.whitebox.checks import check_curve, large_eps_check, model_checks
from dlsec.scenarios.whitebox.ensemble import RobustnessReport, evaluate_robustness
from dlsec.threat import ThreatModel
from dlsec.training import AMP_MODES, AutocastModel, TrainConfig

LINF_EPS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
L2_EPS = (0.25, 0.5, 1.0, 2.0, 3.0)
AT_METHODS = ("pgd", "fgsm-rs", "trades")
STEPPED = ("pgd", "bim", "mifgsm")  # the attacks whose steps the audit sets


def eps_grid(norm: str, bounds: tuple[float, float]) -> list[float]:
    """The default epsilon grid of ``norm``, scaled to the input range."""
    span = bounds[1] - bounds[0]
    return [round(e * span, 6) for e in (LINF_EPS if norm == "linf" else L2_EPS)]


@dataclass
class WhiteBoxOptions:
    """``attacks``: registered white-box attacks, weakest first, each run on every point;
    ``ensemble`` adds the AutoAttack-style ensemble at ``ensemble_eps`` (default: the middle
    of the grid, as it is the costly part); ``samples``: the first test points attacked;
    ``steps``: iterations of pgd, bim and mifgsm. ``adversarial_training`` (pgd, fgsm-rs or
    trades) also trains a hardened copy of the model at ``at_eps`` (default: the middle of
    the grid) for ``at_epochs`` and evaluates it the same way. ``amp``: the precision the
    attacks search in (off, bf16, or fp16 on CUDA; the verdicts are float32 in any case)."""

    attacks: list[str] = field(default_factory=lambda: ["fgsm", "pgd"])
    ensemble: bool = True
    ensemble_eps: list[float] = field(default_factory=list)
    samples: int = 200
    steps: int = 40
    adversarial_training: str = ""
    at_eps: float = 0.0
    at_epochs: int = 20
    amp: str = "off"

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp: must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.adversarial_training not in ("", *AT_METHODS):
            raise ValueError(
                "adversarial-training: must be pgd, fgsm-rs or trades, got "
                f"{self.adversarial_training!r}"
            )
        if self.at_eps < 0 or self.at_epochs < 1:
            raise ValueError("at-eps must be >= 0 and at-epochs >= 1")
        if self.samples < 1 or self.steps < 1:
            raise ValueError("samples and steps must be >= 1")
        if any(not 0 <= e < float("inf") for e in (*self.ensemble_eps, self.at_eps)):
            raise ValueError("ensemble-eps and at-eps: values must be finite and >= 0")
        if not self.attacks:
            raise ValueError('attacks: name one or more attacks, e.g. ["fgsm", "pgd"]')

    def check_attacks(self, norm: str) -> None:
        """Unknown names and unsupported norms, before any work (:class:`ValueError`)."""
        for name in self.attacks:
            try:
                self.attack(name, norm)
            except AttackError as exc:
                raise ValueError(f"attacks: {exc}") from None

    def attack(self, name: str, norm: str) -> EvasionAttack:
        """The attack ``name`` as configured (``steps`` for pgd, bim and mifgsm)."""
        if name in ("cw", "deepfool") and norm != "l2":
            raise AttackError(f'{name} is an L2 attack; set norm = "l2" to use it')
        return make_white_box(name, norm, steps=self.steps if name in STEPPED else None)


def make_white_box(name: str, norm: str, *, steps: int | None = None) -> EvasionAttack:
    """The registered white-box attack ``name`` in ``norm`` (with ``steps``, if given);
    :class:`AttackError` for a black-box or unknown name or a setting it does not take."""
    if attack_kind(name) != "white-box":
        raise AttackError(f"{name} is a black-box attack, not a white-box one")
    settings: dict[str, Any] = {"norm": norm} | ({} if steps is None else {"steps": steps})
    attack = make_attack(name, **settings)
    assert isinstance(attack, EvasionAttack)
    return attack


def search_model(model: nn.Module, amp: str) -> nn.Module:
    """The module the attacks search with: ``model`` itself, or it under autocast
    (:class:`AutocastModel`; a bad or unsupported ``amp`` is a ``TrainingError``)."""
    return model if amp == "off" else AutocastModel(model, amp)


def verify_float32(
    model: nn.Module, res: EvasionResult, x: Tensor, y: Tensor, *, batch_size: int = 1024
) -> EvasionResult:
    """``res`` with its verdicts taken again by ``model`` in float32 (autocast off), for a
    result found through :func:`search_model`: ``clean_correct`` from the float32 clean pass,
    ``success[k, n]`` whether the float32 model is fooled by ``x_adv[k, n]`` (a point it
    misclassifies unperturbed counts as fooled with the clean input, as in
    :class:`EvasionResult`). An adversarial that only fooled the half-precision model
    stops counting; one the search gave up on but that fools the float32 model counts.
    """
    if x.shape[0] == 0:
        return res
    device = x.device
    targets = res.targets

    def predict(inputs: Tensor) -> Tensor:
        with torch.autocast(device_type=device.type, enabled=False), torch.inference_mode():
            return torch.cat([model(inputs[i : i + batch_size])
                              for i in range(0, inputs.shape[0], batch_size)])

    with module_mode(model, training=False):
        clean_logits = predict(x)
        already = is_adversarial(clean_logits, y, targets)
        x_adv = res.x_adv.clone()
        x_adv[:, already] = x[already]
        success = torch.stack([is_adversarial(predict(a), y, targets) for a in x_adv])
    norms = res.norms.clone()
    norms[:, already] = 0.0
    return dataclasses.replace(
        res, x_adv=x_adv, success=success, norms=norms,
        clean_correct=clean_logits.argmax(1) == y,
    )


def _points(ctx: ScenarioContext, samples: int | None) -> tuple[Tensor, Tensor]:
    n = ctx.dataset.y_test.shape[0] if samples is None else samples
    idx, _ = ctx.attacker_split(n)
    return ctx.dataset.x_test[idx].to(ctx.device), ctx.dataset.y_test[idx].to(ctx.device)


def _metrics(clean: float, eps: list[float], robust: list[float]) -> dict[str, float]:
    return {"clean_accuracy": clean} | {
        f"robust_accuracy@{e:g}": a for e, a in zip(eps, robust, strict=True)
    }


def _threat(ctx: ScenarioContext) -> tuple[ThreatModel, str]:
    """The context's threat model and its norm (linf or l2, else :class:`AttackError`)."""
    assert ctx.threat is not None
    if ctx.threat.norm not in ("linf", "l2"):
        raise AttackError(f"norm must be linf or l2, got {ctx.threat.norm!r}")
    return ctx.threat, ctx.threat.norm


# -- the audit's evaluation -----------------------------------------------------------------
@dataclass
class _Evaluation:
    results: dict[str, EvasionResult]
    report: RobustnessReport | None
    robust_all: list[float]
    clean: float


def robustness(
    ctx: ScenarioContext, options: WhiteBoxOptions, *, train_config: TrainConfig | None = None
) -> ScenarioResult:
    """Robust accuracy per attack and epsilon (``ctx.threat.eps``), a point counting as
    robust only if every attack failed on it, the warnings that say when the evaluation
    cannot be trusted, an example grid, and with ``options.adversarial_training`` the same
    for a copy trained adversarially (``train_config``: the training settings, default
    :class:`TrainConfig`; its epochs are ``options.at_epochs``)."""
    threat, norm = _threat(ctx)
    options.check_attacks(norm)
    search_model(ctx.model, options.amp)  # an amp mode this device lacks: refused before any work
    x, y = _points(ctx, options.samples)
    eps = sorted(threat.eps)
    ev = _evaluate(ctx, ctx.model, x, y, eps, options)
    metrics = _metrics(ev.clean, eps, ev.robust_all)
    rows = _rows(ev, "")
    series = {name: (res.eps, res.robust_accuracy) for name, res in ev.results.items()}
    if ev.report is not None:
        series["ensemble"] = (ev.report.eps, ev.report.robust_accuracy)
    series["all attacks"] = (eps, ev.robust_all)
    details: dict[str, Any] = {name: r.summary() for name, r in ev.results.items()}
    if ev.report is not None:
        rep = ev.report
        details["ensemble"] = {
            "attack": "ensemble", "stages": " -> ".join(rep.attacks), "eps": rep.eps,
            "robust_accuracy": rep.robust_accuracy, "stage_accuracy": rep.stage_accuracy,
            "amp": rep.amp,
        }
    summary_after = ""
    if options.adversarial_training:
        method = options.adversarial_training
        hardened = _harden(ctx, options, eps, norm, train_config)
        after = _evaluate(ctx, hardened, x, y, eps, options)
        series[f"all attacks, after {method} training"] = (eps, after.robust_all)
        metrics["clean_accuracy_after_at"] = after.clean
        for e, ra in zip(eps, after.robust_all, strict=True):
            metrics[f"robust_accuracy_after_at@{e:g}"] = ra
        rows += _rows(after, f" (after {method})")
        summary_after = (
            f"; after {method} adversarial training {after.robust_all[len(eps) // 2]:.1%} "
            f"(clean accuracy on the subset {after.clean:.1%})"
        )
    figures: dict[str, Any] = {
        "robust-accuracy": {
            "kind": "line_chart", "series": series,
            "title": f"Robust accuracy vs epsilon ({norm})", "xlabel": "epsilon",
            "ylabel": "accuracy under attack",
            "caption": "Share of test points still classified correctly under each attack; "
            "'all attacks' counts a point robust only if every attack failed on it.",
        }
    }
    grid = _example_grid(ctx, ev.results[options.attacks[-1]], x, y, eps)
    if grid is not None:
        figures["examples"] = grid
    mid = eps[len(eps) // 2]
    return ScenarioResult(
        name="evasion",
        summary=f"{norm} robust accuracy {ev.robust_all[len(eps) // 2]:.1%} at eps {mid:g}"
        + (f"; {ev.robust_all[-1]:.1%} at eps {eps[-1]:g}" if len(eps) > 1 else "")
        + f"{summary_after}"
        + (f"; attacks searched in {options.amp}, verdicts in float32"
           if options.amp != "off" else "")
        + f"; clean accuracy on the {len(y)} attacked test points (subset): {ev.clean:.1%}",
        metrics=metrics,
        tables=[
            Table(
                "Robust accuracy per attack",
                ["attack", "epsilon", "robust accuracy", "success rate", "gradients"],
                rows,
                caption=f"The first {len(y)} test points (a subset of the test set); gradients = "
                "forward+backward passes spent.",
            )
        ],
        figures=figures,
        warnings=_warnings(ctx, ev.results, x, y, eps, norm),
        details=details | {"eps": eps, "amp": options.amp},
        artifacts={"results": ev.results, "report": ev.report},
    )


def _evaluate(
    ctx: ScenarioContext, model: nn.Module, x: Tensor, y: Tensor, eps: list[float],
    options: WhiteBoxOptions,
) -> _Evaluation:
    """Run every configured attack (and the ensemble); a point is robust at eps only if no
    attack fooled it."""
    threat, norm = _threat(ctx)
    search = search_model(model, options.amp)
    results = {}
    for name in options.attacks:
        attack = options.attack(name, norm)
        res = attack(search, x, y, eps=eps, bounds=threat.bounds,
                     generator=ctx.generator(f"whitebox/{name}"))
        results[name] = res if search is model else verify_float32(model, res, x, y)
    fooled_any = torch.stack([r.success for r in results.values()]).any(0)
    clean = float(next(iter(results.values())).clean_correct.double().mean())
    report = None
    if options.ensemble:
        ens_eps = sorted(options.ensemble_eps) if options.ensemble_eps else [eps[len(eps) // 2]]
        report = evaluate_robustness(
            model, x, y, norm=norm, eps=ens_eps, bounds=threat.bounds,
            generator=ctx.generator("whitebox/ensemble"), checks=False, progress=False,
            amp=options.amp,
        )
        for j, e in enumerate(ens_eps):
            for k, ek in enumerate(eps):
                if ek >= e:  # an adversarial inside a ball is inside every larger one
                    fooled_any[k] |= ~report.robust[j].to(fooled_any.device)
    robust_all = [float((~f).double().mean()) for f in fooled_any]
    return _Evaluation(results, report, robust_all, clean)


def _rows(ev: _Evaluation, suffix: str) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for name, res in ev.results.items():
        for k, e in enumerate(res.eps):
            spent = int(res.gradients[k].sum())
            rows.append([name + suffix, e, res.robust_accuracy[k], res.success_rate[k], spent])
    if ev.report is not None:
        for k, e in enumerate(ev.report.eps):
            ra = ev.report.robust_accuracy[k]
            rows.append(["ensemble" + suffix, e, ra, 1.0 - ra, "—"])
    return rows


def _harden(
    ctx: ScenarioContext, options: WhiteBoxOptions, eps: list[float], norm: str,
    train_config: TrainConfig | None,
) -> nn.Module:
    """A copy of the audited architecture trained adversarially on the same data."""
    from dlsec.defenses.adversarial import adversarial_train

    config = dataclasses.replace(
        train_config or TrainConfig(), epochs=options.at_epochs, device=str(ctx.device)
    )
    model, _, _ = adversarial_train(
        ctx.dataset, ctx.card.architecture, method=options.adversarial_training,
        eps=options.at_eps or eps[len(eps) // 2], norm="l2" if norm == "l2" else "linf",
        config=config, normalization=ctx.card.normalization, progress=ctx.progress,
    )
    return model.eval()


def _warnings(
    ctx: ScenarioContext, results: dict[str, EvasionResult], x: Tensor, y: Tensor,
    eps: list[float], norm: str,
) -> list[str]:
    """Signs that the evaluation may be unreliable (the checks of :mod:`.checks`, plus
    weaker-vs-stronger on the results at hand)."""
    assert ctx.threat is not None
    out = model_checks(ctx.model, x[:100], y[:100])
    out += large_eps_check(ctx.model, x[:100], y[:100], norm=norm, bounds=ctx.threat.bounds)
    for name, res in results.items():
        out += [f"{name}: {w}" for w in check_curve(res.eps, res.robust_accuracy)]
    for weak, strong in itertools.pairwise(results):
        beats = results[weak].success[-1] & ~results[strong].success[-1]
        if bool(beats.any()):
            out.append(
                f"[weaker-attack] {weak} fooled {int(beats.sum())} point(s) that {strong} did "
                f"not at eps {eps[-1]:g}: the stronger attack may be hampered by masked gradients"
            )
    return out


def _example_grid(
    ctx: ScenarioContext, res: EvasionResult, x: Tensor, y: Tensor, eps: list[float]
) -> dict[str, Any] | None:
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
    labels = (
        [f"clean: {classes[int(c)]}" for c in y[fooled]]
        + ["perturbation" for _ in fooled]
        + [f"adv: {classes[int(p)]}" for p in pred]
    )
    return {
        "kind": "image_grid", "images": torch.cat([clean_x, amplified, adv_x]).cpu(),
        "labels": labels, "ncols": fooled.numel(), "bounds": (lo, hi),
        "title": f"Adversarial examples ({res.attack}, eps {eps[k]:g})",
        "caption": "Top: clean inputs with their true labels. Middle: the perturbation, "
        "amplified to the full range. Bottom: the adversarial inputs with the model's prediction.",
    }


# -- the ensemble alone (dlsec evaluate) ------------------------------------------------------
def ensemble_evaluation(
    ctx: ScenarioContext, *, samples: int | None = None, stages: list[str] | None = None,
    state_path: str | Path | None = None, checks: bool = True, block_size: int | None = None,
    shard: Shard | None = None, amp: str = "off",
) -> ScenarioResult:
    """The AutoAttack-style ensemble (``stages``, default its standard ones) at every
    ``ctx.threat.eps`` on the first ``samples`` test points, with its gradient-masking
    checks; ``state_path`` makes it resumable. ``details`` is the report's summary.

    ``shard`` (under ``torchrun``: :func:`dlsec.scenarios.sharding.current_shard`) shares
    the points out between the ranks, in blocks of ``block_size`` each seeded from its
    index; every rank gets the whole result, the one-process run's with ``block_size``.
    ``amp``: the precision the white-box stages search in (the verdicts are float32)."""
    threat, norm = _threat(ctx)
    x, y = _points(ctx, samples)
    report = evaluate_robustness(
        ctx.model, x, y, norm=norm, eps=list(threat.eps), bounds=threat.bounds,
        attacks=stages, generator=ctx.generator("whitebox/ensemble"), state_path=state_path,
        checks=checks, progress=ctx.progress, shard=shard, block_size=block_size, amp=amp,
    )
    metrics = _metrics(report.clean_accuracy, report.eps, report.robust_accuracy)
    rows = [
        [e, report.robust_accuracy[k], *(acc[k] for acc in report.stage_accuracy.values())]
        for k, e in enumerate(report.eps)
    ]
    table = Table("Robust accuracy after each stage",
                  ["epsilon", "robust accuracy", *report.stage_accuracy], rows,
                  caption=f"{len(y)} test points ({norm}); stages run in this order.")
    worst = min(report.robust_accuracy)
    return ScenarioResult(
        name="ensemble",
        summary=f"{norm} robust accuracy down to {worst:.1%} under the ensemble "
        f"(clean {report.clean_accuracy:.1%})"
        + (f"; search in {amp}, verdicts in float32" if amp != "off" else ""),
        metrics=metrics, tables=[table], warnings=list(report.warnings),
        details=report.summary(), artifacts={"report": report, "x": x, "y": y},
    )


# -- one attack by name (dlsec attack NAME) ---------------------------------------------------
def single_attack(
    ctx: ScenarioContext, name: str, *, samples: int | None = None, steps: int | None = None,
    target: str | int = "random", amp: str = "off",
) -> ScenarioResult:
    """The white-box attack ``name`` over ``ctx.threat.eps`` (targeted at ``target``, a
    rule or a class index, when ``ctx.threat.targeted``) on the first ``samples`` test
    points. ``amp``: the precision the attack searches in; its verdicts are then taken
    again in float32 (:func:`verify_float32`). ``artifacts``: the :class:`EvasionResult`
    (``"result"``) and the points."""
    threat, norm = _threat(ctx)
    attack = make_white_box(name, norm, steps=steps)
    search = search_model(ctx.model, amp)
    if isinstance(target, int) and not 0 <= target < ctx.card.num_classes:
        raise AttackError(f"target: a class index must be in 0..{ctx.card.num_classes - 1}")
    x, y = _points(ctx, samples)
    res = attack(search, x, y, eps=list(threat.eps), targeted=threat.targeted,
                 target=cast(TargetSpec, target), bounds=threat.bounds,
                 generator=ctx.generator(f"whitebox/{name}"))
    if search is not ctx.model:
        res = verify_float32(ctx.model, res, x, y)
    clean = float(res.clean_correct.double().mean())
    metrics = _metrics(clean, res.eps, res.robust_accuracy)
    rows = [list(r) for r in zip(res.eps, res.robust_accuracy, res.success_rate, strict=True)]
    return ScenarioResult(
        name=name,
        summary=f"{name} ({attack.norm}) on {len(y)} points, clean accuracy {clean:.4f}"
        + (f"; search in {amp}, verdicts in float32" if amp != "off" else ""),
        metrics=metrics,
        tables=[Table(name, ["epsilon", "robust accuracy", "success rate"], rows)],
        details=res.summary() | {"amp": amp}, artifacts={"result": res, "x": x, "y": y},
    )


__all__ = [
    "WhiteBoxOptions",
    "ensemble_evaluation",
    "eps_grid",
    "make_white_box",
    "robustness",
    "search_model",
    "single_attack",
    "verify_float32",
]
