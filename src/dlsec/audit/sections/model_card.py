"""Section "Model": the model card (architecture, input contract, training, provenance)."""

from __future__ import annotations

from typing import Any

from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult, Table
from dlsec.audit.sections import register_section
from dlsec.intervals import rate_interval


def recorded_accuracies(ctx: AuditContext) -> list[list[Any]]:
    """Rows ``[split, points, accuracy, "[lo, hi]"]`` for the train, validation and test
    accuracies in the card's metrics, on the points each was measured on (none when the card
    was trained on other data than the audit's)."""
    from dlsec.audit.sections.training_curves import split_sizes

    points = split_sizes(ctx)
    if points:
        points["test"] = int(ctx.dataset.y_test.numel())
    rows: list[list[Any]] = []
    for split, key in (("train", "train_accuracy"), ("validation", "val_accuracy"),
                       ("test", "test_accuracy")):
        value, n = ctx.card.metrics.get(key), points.get(split)
        if isinstance(value, (int, float)) and n:
            lo, hi = rate_interval(float(value), n)
            rows.append([split, n, round(float(value), 4), f"[{lo:.4f}, {hi:.4f}]"])
    return rows


@register_section("model", title="Model", order=20, version=2)
def run(ctx: AuditContext, options: None) -> SectionResult:
    card = ctx.card
    n_params = sum(p.numel() for p in ctx.model.parameters())
    rows: list[list[Any]] = [
        ["architecture", card.architecture],
        ["parameters", n_params],
        ["input shape", "x".join(map(str, card.input_shape))],
        ["input bounds", f"[{card.bounds[0]:g}, {card.bounds[1]:g}]"],
        ["normalization", "none" if not card.normalization else str(card.normalization)],
        ["classes", ", ".join(card.classes)],
        ["dataset", card.dataset],
        ["weights sha256", card.weights_sha256],
        ["dlsec version", card.dlsec_version],
    ]
    training = [[k, str(v)] for k, v in sorted(card.training.items())]
    tables = [Table("Model card", ["field", "value"], rows)]
    if training:
        tables.append(Table("Training configuration", ["setting", "value"], training))
    recorded = recorded_accuracies(ctx)
    if recorded:
        tables.append(Table(
            "Accuracies the card records", ["split", "points", "accuracy", "95% interval"],
            recorded, caption="Measured when the model was trained; Wilson 95% intervals. "
            "The test accuracy is the clean accuracy section's figure."))
    return SectionResult(
        name="model", title="Model",
        summary=f"{card.architecture}, {n_params:,} parameters, inputs in "
        f"[{card.bounds[0]:g}, {card.bounds[1]:g}]",
        metrics={"parameters": n_params},
        tables=tables,
        details={"card": card.to_dict()},
    )
