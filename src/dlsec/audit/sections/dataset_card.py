"""Section "Dataset": size, shape, bounds, class balance and a grid of sample images."""

from __future__ import annotations

import torch

from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult, Table
from dlsec.audit.sections import register_section


@register_section("dataset", title="Dataset", order=10)
def run(ctx: AuditContext, options: None) -> SectionResult:
    from dlsec.audit.report.plots import bar_chart, image_grid

    ds = ctx.dataset
    counts = torch.bincount(ds.y_train, minlength=ds.num_classes).tolist()
    counts_test = torch.bincount(ds.y_test, minlength=ds.num_classes).tolist()
    imbalance = max(counts) / max(min(counts), 1)
    figures = [bar_chart(list(ds.classes), {"train": counts, "test": counts_test},
                         title="Class balance", xlabel="class", ylabel="samples",
                         caption="Samples per class in the training and test splits.")]
    # the first example of each class (up to 10 per row), then a few more in order
    per_class = 2 if ds.num_classes <= 10 else 1
    picks: list[int] = []
    for c in range(ds.num_classes):
        picks += torch.nonzero(ds.y_train == c).flatten()[:per_class].tolist()
    if len(ds.input_shape) == 3:
        order = sorted(picks, key=lambda i: (picks.index(i) % per_class, int(ds.y_train[i])))
        figures.append(image_grid(
            ds.x_train[order], [ds.classes[int(ds.y_train[i])] for i in order],
            title="Sample images", caption="Training images with their labels.",
            ncols=min(10, ds.num_classes), bounds=ds.bounds,
        ))
    rows = [[ds.classes[c], counts[c], counts_test[c]] for c in range(ds.num_classes)]
    return SectionResult(
        name="dataset", title="Dataset",
        summary=f"{ds.name}: {len(ds.y_train)} train / {len(ds.y_test)} test samples, "
        f"{ds.num_classes} classes, input {'x'.join(map(str, ds.input_shape))}",
        metrics={"n_train": len(ds.y_train), "n_test": len(ds.y_test),
                 "num_classes": ds.num_classes, "class_imbalance": round(imbalance, 4)},
        tables=[Table("Samples per class", ["class", "train", "test"], rows)],
        figures=figures,
        warnings=(
            [f"classes are imbalanced: the largest is {imbalance:.1f}x the smallest"]
            if imbalance > 3
            else []
        ),
        details=ds.summary(),
    )
