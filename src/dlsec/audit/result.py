"""What an audit section returns: metrics, tables, figures and warnings, all JSON-ready."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from dlsec.scenarios.result import Table


@dataclass
class Figure:
    """A plot or image grid, stored as a base64 PNG so the report is one self-contained file."""

    title: str
    png_base64: str
    caption: str = ""


@dataclass
class SectionResult:
    """One section of the report.

    ``metrics`` are flat numbers; the report exposes them as ``"<section>.<key>"`` so
    ``--fail-under accuracy.clean_accuracy=0.9`` can gate on them. A number that is not
    finite (NaN, infinity) is not JSON: the runner replaces it with ``None`` (``null``)
    and records why in ``non_finite``, ``{path: "NaN" | "Infinity" | "-Infinity"}`` with
    paths such as ``"metrics.test_loss"`` or ``"tables.0.rows.3.2"``.

    ``intervals`` (optional) gives a metric a 95% interval and the number of points it
    rests on: ``{metric: {"lower", "upper", "n", "method", ...}}`` (see
    :func:`dlsec.intervals.interval_record`; ``method`` "wilson" or "bootstrap"; a TPR at an
    FPR the non-members cannot resolve carries ``"unresolved": true``). A result cached
    before intervals existed has none.
    """

    name: str
    title: str
    summary: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # None once replaced (below)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    non_finite: dict[str, str] = field(default_factory=dict)
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> SectionResult:
        """Rebuild a result from :meth:`to_dict`'s output, checking every field's shape.

        Raises:
            ValueError: ``d`` is not a section result (a damaged or edited cache file).
        """
        _expect(isinstance(d, dict), "a section result must be a JSON object")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        _expect(not unknown, f"unknown field(s) {unknown}")
        _expect(
            all(isinstance(d.get(k), str) for k in ("name", "title")), "name and title must be text"
        )
        _expect(isinstance(d.get("summary", ""), str), "summary must be text")
        metrics = d.get("metrics", {})
        _expect(
            isinstance(metrics, dict)
            and all(isinstance(k, str) and _is_number_or_null(v) for k, v in metrics.items()),
            "metrics must map names to numbers (or null)",
        )
        warnings = d.get("warnings", [])
        _expect(_is_list_of(warnings, str), "warnings must be a list of text")
        _expect(isinstance(d.get("details", {}), dict), "details must be an object")
        non_finite = d.get("non_finite", {})
        _expect(
            isinstance(non_finite, dict) and all(isinstance(v, str) for v in non_finite.values()),
            "non_finite must map paths to text",
        )
        intervals = d.get("intervals", {})
        _expect(
            isinstance(intervals, dict)
            and all(isinstance(k, str) and is_interval(v) for k, v in intervals.items()),
            "intervals must map metric names to {lower, upper, n, method}",
        )
        tables, figures = d.get("tables", []), d.get("figures", [])
        _expect(isinstance(tables, list), "tables must be a list")
        _expect(isinstance(figures, list), "figures must be a list")
        for t in tables:
            _expect(
                _has_text(t, Table, ("title",))
                and _is_list_of(t.get("columns"), str)
                and _is_list_of(t.get("rows"), list),
                "a table needs a title, text columns and a list of rows",
            )
        for f in figures:
            _expect(_has_text(f, Figure, ("title", "png_base64")),
                    "a figure needs a title and a base64 PNG")
        d = dict(d)
        d["tables"] = [Table(**t) for t in tables]
        d["figures"] = [Figure(**f) for f in figures]
        return cls(**d)


def is_interval(value: Any) -> bool:
    """``value`` is an interval record: numeric ``lower`` <= ``upper``, an integer ``n``
    >= 0 and a text ``method`` (other keys are flags)."""
    if not isinstance(value, dict):
        return False
    lo, hi, n = value.get("lower"), value.get("upper"), value.get("n")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi))
    return (numbers and lo <= hi and isinstance(n, int) and not isinstance(n, bool)  # type: ignore[operator]
            and n >= 0 and isinstance(value.get("method"), str))


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _is_list_of(value: Any, kind: type) -> bool:
    return isinstance(value, list) and all(isinstance(v, kind) for v in value)


def _has_text(obj: Any, kind: type, required: tuple[str, ...]) -> bool:
    """``obj`` is a dict of ``kind``'s fields holding the ``required`` ones, its text fields
    (the required ones and ``caption``) being text."""
    names = {f.name for f in dataclasses.fields(kind)}
    return (
        isinstance(obj, dict) and set(obj) <= names and set(required) <= set(obj)
        and all(isinstance(obj.get(k, ""), str) for k in (*required, "caption"))
    )


def _is_number_or_null(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, int | float) and not isinstance(value, bool)


NON_FINITE_NAMES = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def replace_non_finite(
    obj: Any, path: str = "", found: dict[str, str] | None = None
) -> tuple[Any, dict[str, str]]:
    """``obj`` (plain JSON data) with every NaN or infinite float replaced by ``None``.

    Returns the new object and ``{path: "NaN" | "Infinity" | "-Infinity"}`` for each
    replacement, paths joined with dots (``"metrics.test_loss"``, ``"rows.3.2"``).
    """
    found = {} if found is None else found
    if isinstance(obj, float) and not math.isfinite(obj):
        found[path] = NON_FINITE_NAMES[repr(obj)]
        return None, found
    if isinstance(obj, dict):
        return {k: replace_non_finite(v, _join(path, k), found)[0] for k, v in obj.items()}, found
    if isinstance(obj, list | tuple):
        return [replace_non_finite(v, _join(path, i), found)[0] for i, v in enumerate(obj)], found
    return obj, found


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)
