"""Section "Training": loss and accuracy per epoch, and the gap that hints at overfitting."""

from __future__ import annotations

from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult
from dlsec.audit.sections import register_section


@register_section("training", title="Training", order=30)
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
    warnings = []
    if "val_accuracy" in kept:
        metrics["val_accuracy"] = kept["val_accuracy"]
        gap = kept["train_accuracy"] - kept["val_accuracy"]
        metrics["generalization_gap"] = gap
        if gap > 0.05:
            warnings.append(
                f"train accuracy exceeds validation accuracy by {gap:.1%}: an overfit model "
                "leaks membership (see the privacy section)"
            )
    return SectionResult(
        name="training", title="Training",
        summary=f"{len(history)} epochs, weights of epoch {best} kept",
        metrics=metrics,
        figures=[
            line_chart(loss, title="Loss per epoch", xlabel="epoch", ylabel="cross-entropy"),
            line_chart(acc, title="Accuracy per epoch", xlabel="epoch", ylabel="accuracy"),
        ],
        warnings=warnings,
    )
