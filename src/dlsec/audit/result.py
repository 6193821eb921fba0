"""What an audit section returns: metrics, tables, figures and warnings, all JSON-ready."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Figure:
    """A plot or image grid, stored as a base64 PNG so the report is one self-contained file."""

    title: str
    png_base64: str
    caption: str = ""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class SectionResult:
    """One section of the report.

    ``metrics`` are flat numbers; the report exposes them as ``"<section>.<key>"`` so
    ``--fail-under accuracy.clean_accuracy=0.9`` can gate on them.
    """

    name: str
    title: str
    summary: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SectionResult:
        d = dict(d)
        d["tables"] = [Table(**t) for t in d.get("tables", [])]
        d["figures"] = [Figure(**f) for f in d.get("figures", [])]
        return cls(**d)
