"""Section "Model": the model card (architecture, input contract, training, provenance)."""

from __future__ import annotations

from typing import Any

from dlsec.audit.context import AuditContext
from dlsec.audit.result import SectionResult, Table
from dlsec.audit.sections import register_section


@register_section("model", title="Model", order=20)
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
    return SectionResult(
        name="model", title="Model",
        summary=f"{card.architecture}, {n_params:,} parameters, inputs in "
        f"[{card.bounds[0]:g}, {card.bounds[1]:g}]",
        metrics={"parameters": n_params},
        tables=tables,
        details={"card": card.to_dict()},
    )
