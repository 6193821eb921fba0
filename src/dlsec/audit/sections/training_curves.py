"""Section "Training": loss and accuracy per epoch, and the gap that hints at overfitting."""

from __future__ import annotations

from typing import Any

from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult
from dlsec.audit.sections import register_section
from dlsec.intervals import rate_record


def split_sizes(ctx: AuditContext) -> dict[str, int]:
    """The points the card's training and validation accuracies were measured on: the
    training set split as :func:`dlsec.training.train_model` splits it (stratified, the
    card's ``val_fraction`` and ``seed``); empty when the card was trained on other data."""
    from dlsec.data import stratified_split

    ds, training = ctx.dataset, ctx.card.training
    if ctx.card.dataset != ds.name:
        return {}
    fraction, seed = training.get("val_fraction", 0.0), training.get("seed", 0)
    if not isinstance(fraction, (int, float)) or not isinstance(seed, int):
        return {}
    n = int(ds.y_train.numel())
    if not 0.0 < fraction < 1.0:
        return {"train": n}
    tr, val = stratified_split(ds.y_train, test_size=float(fraction), seed=seed)
    return {"train": int(tr.numel()), "validation": int(val.numel())}


@register_section("training", title="Training", order=30, version=2)
def run(ctx: AuditContext, options: None) -> SectionResult:
    from dlsec.audit.report.plots import line_chart

    history = ctx.history or []
    if not history:
        return SectionResult(name="training", title="Training",
                             summary="no training history (the model was loaded without one)")
    epochs = [h["epoch"] for h in history]
    loss = {"train": (epochs, [h["train_loss"] for h in history])}
    acc = {"train": (epochs, [h["train_accuracy"] for h in history])}
    if "val_loss" in history[0]:
        loss["validation"] = (epochs, [h["val_loss"] for h in history])
        acc["validation"] = (epochs, [h["val_accuracy"] for h in history])
    best = ctx.card.training.get("best_epoch")  # from the card: checked, not trusted
    if isinstance(best, bool) or not isinstance(best, int) or not 1 <= best <= len(history):
        best = len(history)
    kept = history[best - 1]
    metrics = {"epochs": len(history), "best_epoch": best, "train_accuracy": kept["train_accuracy"]}
    points = split_sizes(ctx)
    intervals: dict[str, Any] = {}
    if "train" in points:
        intervals["train_accuracy"] = rate_record(kept["train_accuracy"], points["train"])
    warnings = []
    if "val_accuracy" in kept:
        metrics["val_accuracy"] = kept["val_accuracy"]
        if "validation" in points:
            intervals["val_accuracy"] = rate_record(kept["val_accuracy"], points["validation"])
        gap = kept["train_accuracy"] - kept["val_accuracy"]
        metrics["generalization_gap"] = gap
        if gap > 0.05:
            warnings.append(
                f"train accuracy exceeds validation accuracy by {gap:.1%}: an overfit model "
                "leaks membership (see the privacy section)"
            )
    summary = f"{len(history)} epochs, weights of epoch {best} kept"
    for key, what in (("train_accuracy", "train"), ("val_accuracy", "validation")):
        if key in intervals:
            rec = intervals[key]
            summary += (f"; {what} accuracy {metrics[key]:.1%} [{rec['lower']:.1%}, "
                        f"{rec['upper']:.1%}] on {rec['n']} {what} points")
    if intervals:
        summary += " (the test set's accuracy is the clean accuracy section's)"
    return SectionResult(
        name="training", title="Training",
        summary=summary,
        metrics=metrics,
        figures=[
            line_chart(loss, title="Loss per epoch", xlabel="epoch", ylabel="cross-entropy"),
            line_chart(acc, title="Accuracy per epoch", xlabel="epoch", ylabel="accuracy"),
        ],
        warnings=warnings, intervals=intervals,
        details={f"{k}_points" if k != "train" else "points": v for k, v in points.items()},
    )
