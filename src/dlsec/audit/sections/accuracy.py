"""Section "Clean accuracy": test accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult, Table
from dlsec.audit.sections import register_section
from dlsec.training import predict_logits


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts ``[true, predicted]``."""
    idx = y_true.to(torch.int64) * num_classes + y_pred.to(torch.int64)
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


@register_section("accuracy", title="Clean accuracy", order=40)
def run(ctx: AuditContext, options: None) -> SectionResult:
    from dlsec.audit.report.plots import bar_chart, heatmap

    ds = ctx.dataset
    logits = predict_logits(ctx.model, ds.x_test).cpu()
    pred = logits.argmax(1)
    cm = confusion_matrix(ds.y_test, pred, ds.num_classes)
    support = cm.sum(1)
    per_class = (cm.diag().double() / support.clamp(min=1)).tolist()
    accuracy = float((pred == ds.y_test).double().mean())
    loss = float(F.cross_entropy(logits, ds.y_test))
    worst = min(range(ds.num_classes), key=lambda c: per_class[c])
    rows = [
        [ds.classes[c], int(support[c]), round(per_class[c], 4)] for c in range(ds.num_classes)
    ]
    return SectionResult(
        name="accuracy",
        title="Clean accuracy",
        summary=f"test accuracy {accuracy:.2%}; weakest class {ds.classes[worst]} "
        f"({per_class[worst]:.2%})",
        metrics={
            "clean_accuracy": accuracy,
            "test_loss": loss,
            "worst_class_accuracy": per_class[worst],
        },
        tables=[Table("Accuracy per class", ["class", "test samples", "accuracy"], rows)],
        figures=[
            bar_chart(
                list(ds.classes),
                per_class,
                title="Accuracy per class",
                xlabel="class",
                ylabel="accuracy",
                ylim=(0.0, 1.0),
            ),
            heatmap(
                cm.tolist(),
                list(ds.classes),
                list(ds.classes),
                title="Confusion matrix",
                xlabel="predicted",
                ylabel="true",
                caption="Rows are true classes, columns predictions; off-diagonal cells are errors.",
            ),
        ],
        details={"confusion_matrix": cm.tolist()},
    )
