"""Section "Clean accuracy": test accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult, Table
from dlsec.audit.sections import register_section
from dlsec.intervals import interval_record, wilson_interval
from dlsec.training import predict_logits


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts ``[true, predicted]``."""
    idx = y_true.to(torch.int64) * num_classes + y_pred.to(torch.int64)
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


@register_section("accuracy", title="Clean accuracy", order=40, version=3)
def run(ctx: AuditContext, options: None) -> SectionResult:
    from dlsec.audit.report.plots import bar_chart, heatmap

    ds = ctx.dataset
    logits = predict_logits(ctx.model, ds.x_test).cpu()
    # an output with a NaN or infinite score classifies nothing: counted as an error (its
    # argmax is arbitrary), left out of the confusion matrix, and warned about
    finite = torch.isfinite(logits).all(1)
    pred = logits.argmax(1)
    correct = (pred == ds.y_test) & finite
    cm = confusion_matrix(ds.y_test[finite], pred[finite], ds.num_classes)
    support = torch.bincount(ds.y_test, minlength=ds.num_classes)
    hits = torch.bincount(ds.y_test[correct], minlength=ds.num_classes)
    per_class = (hits.double() / support.clamp(min=1)).tolist()
    accuracy = float(correct.double().mean())
    loss = float(F.cross_entropy(logits, ds.y_test))
    warnings = []
    n_bad = int((~finite).sum())
    if n_bad:
        warnings.append(
            f"the model's outputs are not finite (NaN or infinite) for {n_bad} of "
            f"{len(finite)} test inputs: counted as errors, left out of the confusion matrix; "
            "the model is broken or its weights are damaged"
        )
    worst = min(range(ds.num_classes), key=lambda c: per_class[c])
    n = len(correct)
    lo, hi = wilson_interval(int(correct.sum()), n)
    rows = [
        [ds.classes[c], int(support[c]), round(per_class[c], 4)] for c in range(ds.num_classes)
    ]
    return SectionResult(
        name="accuracy", title="Clean accuracy",
        summary=f"clean accuracy on the whole test set ({n} points): {accuracy:.2%} "
        f"[{lo:.1%}, {hi:.1%}]; weakest class {ds.classes[worst]} ({per_class[worst]:.2%} of "
        f"{int(support[worst])})",
        metrics={"clean_accuracy": accuracy, "test_loss": loss,
                 "worst_class_accuracy": per_class[worst]},
        tables=[Table("Accuracy per class", ["class", "test samples", "accuracy"], rows)],
        figures=[
            bar_chart(list(ds.classes), per_class, title="Accuracy per class", xlabel="class",
                      ylabel="accuracy", ylim=(0.0, 1.0)),
            heatmap(cm.tolist(), list(ds.classes), list(ds.classes), title="Confusion matrix",
                    xlabel="predicted", ylabel="true",
                    caption="Rows are true classes, columns predictions; off-diagonal cells "
                    "are errors."),
        ],
        warnings=warnings,
        intervals={
            "clean_accuracy": interval_record(lo, hi, n, "wilson"),
            "worst_class_accuracy": interval_record(
                *wilson_interval(int(hits[worst]), int(support[worst])), int(support[worst]),
                "wilson"),
        },
        details={"confusion_matrix": cm.tolist(), "non_finite_outputs": n_bad, "points": n},
    )
