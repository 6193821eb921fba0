"""Section "Privacy": membership inference, model inversion and model extraction.

Membership: the audited model's own training records (the training split minus the
validation records its card names) against the same number of test records; the loss,
confidence, entropy, shadow-model (Shokri), LiRA online/offline and label-only attacks,
with ROC curves on log axes. Inversion: white-box MI-Face per class (and black-box, with
its query count), scored by an independently trained evaluation model and shown beside
the class means. Extraction: fidelity against queries for each strategy, scores and
labels only. The defaults keep the digits audit to a few seconds; raise ``shadows``,
``members`` and ``extraction_budget`` in ``[privacy]`` for a stronger audit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult, Table
from dlsec.audit.sections import register_section
from dlsec.audit.sections._scale import is_large

EXTRACTION_EVAL = 2000  # held-out test inputs fidelity is measured on, at most


def _evaluator_epochs(opt: PrivacyOptions, ds) -> int:
    """``evaluator-epochs``, or (0) 10 epochs, fewer where the audit's scaling rule gives
    fewer for the training set (Fashion-MNIST's 60,000 images: 1)."""
    from dlsec.audit.runner import scaled_epochs

    return opt.evaluator_epochs or min(10, scaled_epochs(len(ds.y_train)))


@dataclass
class PrivacyOptions:
    members: int = 200
    shadows: int = 8
    label_only_noise: int = 10
    extraction_budget: int = 1000
    extraction_strategies: tuple[str, ...] = ("random", "natural", "active")
    extraction_epochs: int = 10
    inversion: bool = True
    inversion_black_box_iters: int = 100
    evaluator: str = "simplenet"
    evaluator_epochs: int = 0

    def __post_init__(self) -> None:
        from dlsec.attacks.surrogate import STRATEGIES

        if self.members < 2 or self.shadows < 2 or self.extraction_budget < 8:
            raise ValueError("members and shadows must be >= 2, extraction-budget >= 8")
        if self.label_only_noise < 1 or self.extraction_epochs < 1 or self.evaluator_epochs < 0:
            raise ValueError("label-only-noise, extraction-epochs and evaluator-epochs must be "
                             ">= 1 (evaluator-epochs 0: automatic)")
        if self.inversion_black_box_iters < 0:
            raise ValueError("inversion-black-box-iters must be >= 0 (0: white-box only)")
        if not self.extraction_strategies:
            raise ValueError(f"extraction-strategies: name one or more of {list(STRATEGIES)}")
        from dlsec.models import model_names

        if self.evaluator not in model_names() and ":" not in self.evaluator:
            raise ValueError(
                f"evaluator: unknown model {self.evaluator!r} (choose from {model_names()} "
                "or name a module:factory)"
            )
        bad = [s for s in self.extraction_strategies if s not in STRATEGIES]
        if bad:
            raise ValueError(f"unknown extraction strategies {bad} (choose from {list(STRATEGIES)})")


def _member_indices(ctx: AuditContext) -> torch.Tensor:
    """The records the model trained on: the training split minus its validation split."""
    from dlsec.data import stratified_split

    y = ctx.dataset.y_train
    val = float(ctx.card.training.get("val_fraction", 0.0) or 0.0)
    if val <= 0:
        return torch.arange(len(y))
    train_idx, _ = stratified_split(y, test_size=val, seed=int(ctx.card.training.get("seed", 0)))
    return train_idx


def _membership(ctx: AuditContext, opt: PrivacyOptions) -> tuple[dict, list, list]:
    from dlsec.attacks.privacy.membership import (
        AttackClassifierConfig,
        balanced_membership_set,
        label_only_attack,
        lira,
        shadow_attack,
        threshold_attack,
        train_shadow_models,
    )
    from dlsec.attacks.privacy.metrics import roc_points
    from dlsec.attacks.surrogate import train_config_from_card

    ds = ctx.dataset
    idx = _member_indices(ctx)
    x, y, is_member = balanced_membership_set(
        ds.x_train[idx], ds.y_train[idx], ds.x_test, ds.y_test, n=opt.members,
        generator=ctx.generator(70),
    )
    oracle = ctx.oracle(output="scores")
    results = [threshold_attack(oracle, x, y, signal=s, is_member=is_member)
               for s in ("loss", "confidence", "entropy")]
    from dlsec.audit.runner import scaled_epochs

    cfg = train_config_from_card(ctx.card, device=str(ctx.device),
                                 measure_train_accuracy=False)
    if ctx.card.training.get("epochs_rule"):
        # the audit chose the target's epochs by its training set's size: the shadows'
        # recipe applies the same rule to theirs (each trains on half the records)
        cfg = dataclasses.replace(cfg, epochs=scaled_epochs(len(y) // 2))
    # on large inputs the shadows train one after another: training them as one stacked
    # module computes every record in every model (twice the rows), and stacked
    # convolutions are slower still (measured: 4.7x the CPU time for 8 SmallCNNs on 28 x 28)
    stacked = False if is_large(ctx.card) else None
    shadows = train_shadow_models(x, y, card=ctx.card, n_models=opt.shadows, config=cfg,
                                  generator=ctx.generator(71), progress=ctx.progress,
                                  stacked=stacked)
    results.append(shadow_attack(oracle, x, y, shadows=shadows, is_member=is_member,
                                 config=AttackClassifierConfig(epochs=20, batch_size=256)))
    results.append(lira(oracle, shadows, is_member=is_member, online=True))
    results.append(lira(oracle, shadows, is_member=is_member, online=False))
    results.append(label_only_attack(ctx.oracle(output="label"), x, y, is_member=is_member,
                                      noise_samples=opt.label_only_noise,
                                      generator=ctx.generator(72)))
    curves = {}
    rows = []
    metrics: dict[str, float] = {}
    for r in results:
        assert r.metrics is not None
        fpr, tpr, _ = roc_points(r.scores, is_member)
        curves[r.attack] = (fpr.tolist(), tpr.tolist())
        key = r.attack.replace("-", "_")
        m = r.metrics
        metrics[f"{key}_auc"] = round(m.auc, 6)
        metrics[f"{key}_tpr_at_0_1_fpr"] = round(m.tpr_at_0_1_fpr, 6)
        metrics[f"{key}_tpr_at_1_fpr"] = round(m.tpr_at_1_fpr, 6)
        rows.append([r.attack, round(m.auc, 4), round(m.tpr_at_0_1_fpr, 4),
                     round(m.tpr_at_1_fpr, 4), round(m.advantage, 4), r.queries])
    best = max(results, key=lambda r: r.metrics.auc if r.metrics else 0.0)
    assert best.metrics is not None
    metrics["membership_auc"] = round(best.metrics.auc, 6)
    metrics["membership_advantage"] = round(max(r.metrics.advantage for r in results
                                                if r.metrics), 6)
    info = {"best": best.attack, "auc": best.metrics.auc, "tpr1": best.metrics.tpr_at_1_fpr,
            "n": int(is_member.sum()), "shadow_epochs": cfg.epochs,
            "shadow_records": len(y) // 2}
    return {"metrics": metrics, "info": info}, rows, [curves]


def _inversion(ctx: AuditContext, opt: PrivacyOptions) -> tuple[dict[str, float], list, list]:
    from dlsec.attacks.privacy.inversion import (
        class_means,
        inversion_quality,
        mi_face,
        mi_face_black_box,
    )
    from dlsec.audit.report.plots import image_grid
    from dlsec.training import TrainConfig, train_model

    ds = ctx.dataset
    evaluator, _, _ = train_model(
        ds, opt.evaluator,
        TrainConfig(epochs=_evaluator_epochs(opt, ds), lr=3e-3, batch_size=128,
                    seed=ctx.config.seed + 7919, measure_train_accuracy=False,
                    device=str(ctx.device)),
        progress=False,
    )
    means = class_means(ds.x_train.to(ctx.device), ds.y_train.to(ctx.device), ds.num_classes)
    white = mi_face(ctx.model, card=ctx.card)
    q_white = inversion_quality(white, evaluator=evaluator, means=means)
    metrics = {"inversion_eval_accuracy": q_white["eval_accuracy"],
               "inversion_mean_cosine": round(q_white["mean_cosine"], 6)}
    rows = [["white-box", round(q_white["eval_accuracy"], 4), round(q_white["mean_cosine"], 4),
             round(q_white["nearest_mean_accuracy"], 4), 0]]
    images, labels = [white.images.cpu()], [f"{ds.classes[int(c)]} (wb)" for c in white.classes]
    if opt.inversion_black_box_iters > 0:
        oracle = ctx.oracle(output="scores")
        black = mi_face_black_box(oracle, max_iter=opt.inversion_black_box_iters,
                                  generator=ctx.generator(73))
        q_black = inversion_quality(black, evaluator=evaluator, means=means)
        metrics["inversion_black_box_eval_accuracy"] = q_black["eval_accuracy"]
        rows.append(["black-box", round(q_black["eval_accuracy"], 4),
                     round(q_black["mean_cosine"], 4), round(q_black["nearest_mean_accuracy"], 4),
                     black.queries])
        images.append(black.images.cpu())
        labels += [f"{ds.classes[int(c)]} (bb)" for c in black.classes]
    images.append(means.cpu())
    labels += [f"{c} (mean)" for c in ds.classes]
    figures = []
    if len(ds.input_shape) == 3:
        figures.append(image_grid(
            torch.cat(images), labels, title="Model inversion (MI-Face)",
            caption="One reconstruction per class (white-box, then black-box), then the "
            "class means of the training data for comparison.",
            ncols=min(10, ds.num_classes), bounds=ds.bounds))
    return metrics, rows, figures


def _extraction(ctx: AuditContext, opt: PrivacyOptions) -> tuple[dict[str, float], list, list]:
    from dlsec.attacks.surrogate import default_schedule, extract
    from dlsec.audit.report.plots import line_chart
    from dlsec.training import TrainConfig, predict_logits

    ds = ctx.dataset
    half = len(ds.y_test) // 2
    perm = torch.randperm(len(ds.y_test), generator=ctx.generator(74))
    pool, held = ds.x_test[perm[:half]], perm[half:][:EXTRACTION_EVAL]
    eval_x, eval_y = ds.x_test[held].to(ctx.device), ds.y_test[held].to(ctx.device)
    victim_labels = predict_logits(ctx.model, eval_x).argmax(1)
    cfg = TrainConfig(epochs=opt.extraction_epochs, lr=3e-3, batch_size=128, val_fraction=0.0,
                      seed=ctx.config.seed, device=str(ctx.device), measure_train_accuracy=False)
    schedule = default_schedule(opt.extraction_budget, rounds=3)
    runs = [(s, "scores") for s in opt.extraction_strategies]
    if "active" in opt.extraction_strategies:
        runs.append(("active", "label"))
    series = {}
    rows: list[list] = []
    best = 0.0
    label_fidelity: float | None = None
    for strategy, output in runs:
        oracle = ctx.oracle(output=output, budget=opt.extraction_budget)
        res = extract(oracle, card=ctx.card, strategy=strategy, budget=opt.extraction_budget,  # type: ignore[arg-type]
                      x_pool=pool, eval_x=eval_x, eval_victim_labels=victim_labels,
                      eval_y=eval_y, schedule=schedule, config=cfg,
                      generator=ctx.generator(75))
        name = f"{strategy} ({output})"
        series[name] = ([c["queries"] for c in res.curve], [c["fidelity"] for c in res.curve])
        rows.append([strategy, output, res.queries, round(res.fidelity, 4),
                     round(res.accuracy, 4)])
        if output == "scores":
            best = max(best, res.fidelity)
        else:
            label_fidelity = res.fidelity
    metrics = {"extraction_fidelity": round(best, 6)}
    if label_fidelity is not None:
        metrics["extraction_fidelity_labels"] = round(label_fidelity, 6)
    figure = line_chart(series, title="Extraction fidelity vs queries", xlabel="queries",
                        ylabel="agreement with the model", logx=True,
                        caption="Share of held-out test inputs on which the stolen substitute "
                        "predicts what the audited model predicts.")
    return metrics, rows, [figure]


@register_section("privacy", title="Privacy", order=70, options=PrivacyOptions, version=2)
def run(ctx: AuditContext, options: PrivacyOptions | None) -> SectionResult:
    from dlsec.audit.report.plots import roc_curve

    opt = options or PrivacyOptions()
    mem, mem_rows, curves = _membership(ctx, opt)
    held = min(len(ctx.dataset.y_test) - len(ctx.dataset.y_test) // 2, EXTRACTION_EVAL)
    ev = _evaluator_epochs(opt, ctx.dataset)
    settings = (f"{opt.shadows} shadow models, {mem['info']['shadow_epochs']} epochs "
                f"each on {mem['info']['shadow_records']} records (the target's recipe"
                + ("; its epochs were scaled to its training set, the shadows' to theirs"
                   if ctx.card.training.get("epochs_rule") else "") + ")"
                + (f"; the inversion's evaluation model trains for {ev} epoch"
                   f"{'' if ev == 1 else 's'}" if opt.inversion else "")
                + f"; extraction fidelity on {held} held-out test inputs")
    metrics: dict[str, float] = dict(mem["metrics"])
    figures = [roc_curve(curves[0], title="Membership inference ROC",
                         caption="Log-scale axes: what matters is the true-positive rate at "
                         "low false-positive rates (Carlini et al. 2022).")]
    tables = [Table("Membership inference",
                    ["attack", "AUC", "TPR @ 0.1% FPR", "TPR @ 1% FPR", "advantage", "queries"],
                    mem_rows,
                    caption=f"{mem['info']['n']} members and as many non-members (chance: AUC "
                    f"0.5). Settings: {settings}.")]
    info = mem["info"]
    risks = [["membership inference",
              f"best attack {info['best']}: AUC {info['auc']:.3f}, "
              f"TPR {info['tpr1']:.1%} at 1% FPR"]]
    if opt.inversion:
        inv_metrics, inv_rows, inv_figs = _inversion(ctx, opt)
        metrics.update(inv_metrics)
        figures += inv_figs
        tables.append(Table("Model inversion (MI-Face)",
                            ["variant", "evaluation-model accuracy", "cosine to class mean",
                             "nearest class mean", "queries"], inv_rows))
        risks.append(["model inversion",
                      f"{inv_metrics['inversion_eval_accuracy']:.0%} of white-box "
                      "reconstructions are recognised as their class by an independent model"])
    ext_metrics, ext_rows, ext_figs = _extraction(ctx, opt)
    metrics.update(ext_metrics)
    figures += ext_figs
    tables.append(Table("Model extraction", ["strategy", "output", "queries", "fidelity",
                                             "accuracy"], ext_rows))
    risks.append(["model extraction",
                  f"a substitute agrees with the model on {ext_metrics['extraction_fidelity']:.1%}"
                  f" of held-out inputs after {opt.extraction_budget} score queries"])
    tables.insert(0, Table("Risk summary", ["threat", "finding"], risks))
    warnings = []
    if info["auc"] > 0.6:
        warnings.append(f"membership leaks: {info['best']} reaches AUC {info['auc']:.3f}")
    if ext_metrics["extraction_fidelity"] > 0.9:
        warnings.append("the model can be stolen through its scores: "
                        f"{ext_metrics['extraction_fidelity']:.1%} fidelity with "
                        f"{opt.extraction_budget} queries")
    return SectionResult(
        name="privacy",
        title="Privacy",
        summary="; ".join(r[1] for r in risks),
        metrics=metrics,
        tables=tables,
        figures=figures,
        warnings=warnings,
        details={"options": dataclasses.asdict(opt), "settings": settings},
    )
