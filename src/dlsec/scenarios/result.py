"""What a scenario returns: metrics, tables, the data of its figures and a one-line summary.

Front-ends read it: an audit section renders it (plots from ``figures``), a CLI command
prints it or writes it, a benchmark times it. Everything here is plain data; tensors a
front-end may want (adversarials, reconstructions) go in ``artifacts`` and are never
written to a report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    """Rows of cells under named columns, with a title and an optional caption."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class ScenarioResult:
    """One threat, measured.

    ``metrics``: flat numbers (the audit exposes them as ``<section>.<key>``); ``tables``:
    what a reader compares; ``figures``: named data for plots (curves, image grids: lists
    and tensors, never rendered images); ``details``: JSON-ready settings and counts a
    reader may check; ``artifacts``: tensors and objects for the caller only.
    """

    name: str
    summary: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)


__all__ = ["ScenarioResult", "Table"]
