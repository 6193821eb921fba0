"""ModelCard: everything an attack or a report needs to know about a model besides weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from dlsec import __version__
from dlsec.models.registry import ModelError

CARD_SCHEMA_VERSION = 1


@dataclass
class ModelCard:
    """Architecture, input contract, provenance and metrics of a saved model.

    ``bounds`` is the valid input range (attacks clip to it; nothing assumes [0, 1]).
    ``normalization`` is ``{"mean": [...], "std": [...]}`` applied inside the model,
    or ``None``.
    """

    architecture: str
    input_shape: list[int]
    classes: list[str]
    bounds: tuple[float, float] = (0.0, 1.0)
    normalization: dict[str, list[float]] | None = None
    dataset: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    weights_file: str = "model.safetensors"
    weights_sha256: str = ""
    dlsec_version: str = __version__
    schema_version: int = CARD_SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["bounds"] = list(self.bounds)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "card") -> ModelCard:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ModelError(f"{source}: unknown model card key(s): {', '.join(unknown)}")
        for key in ("architecture", "input_shape", "classes"):
            if key not in d:
                raise ModelError(f"{source}: model card lacks {key!r}")
        try:
            card = cls(**d)
            card.input_shape = [int(v) for v in card.input_shape]
            card.classes = [str(c) for c in card.classes]
            lo, hi = (float(v) for v in card.bounds)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{source}: malformed model card ({exc})") from exc
        if not lo < hi:
            raise ModelError(f"{source}: bounds must satisfy low < high, got {[lo, hi]}")
        card.bounds = (lo, hi)
        if card.normalization is not None:
            mean, std = card.normalization.get("mean"), card.normalization.get("std")
            if not mean or not std or len(mean) != len(std) or min(std) <= 0:
                raise ModelError(f"{source}: normalization needs equal-length mean and std > 0")
        return card

    @classmethod
    def from_json(cls, text: str, *, source: str = "card") -> ModelCard:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        if not isinstance(d, dict):
            raise ModelError(f"{source}: a model card must be a JSON object")
        return cls.from_dict(d, source=source)
