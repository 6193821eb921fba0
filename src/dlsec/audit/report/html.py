"""Render a report dict (what ``report.json`` holds) as one self-contained HTML page.

The page inlines its stylesheet and carries every figure as a ``data:`` URI, so it opens
offline, can be mailed or archived as one file, and references no external URL. Jinja2
autoescaping is on: titles, summaries and table cells from a section are text, never markup.
Rendering is deterministic: the same dict gives the same string.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

import jinja2

__all__ = ["format_interval", "format_value", "gate_value", "main_metrics", "render_html"]

_TEMPLATE = "report.html.j2"
_STYLESHEET = "report.css"
_MAIN_METRICS = 4


def format_value(value: Any) -> str:
    """A metric or table cell for display: floats to 4 significant digits, booleans as
    ``yes``/``no``, ``None`` as an em dash, integers in full, anything else with ``str``."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return f"{value:.4g}"
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalar
        return format_value(value.item())
    return str(value)


def format_interval(value: str, record: Any) -> str:
    """``value`` (already formatted) with its interval record: ``value [lower, upper]``;
    a TPR at an FPR the data cannot resolve reads ``unresolved: value [lower, upper]``;
    no (or a malformed) record leaves ``value`` as it is."""
    if not isinstance(record, Mapping) or not {"lower", "upper"} <= set(record):
        return value
    text = f"{value} [{format_value(record['lower'])}, {format_value(record['upper'])}]"
    return f"unresolved: {text}" if record.get("unresolved") else text


def main_metrics(section: Mapping[str, Any], n: int = _MAIN_METRICS) -> list[tuple[str, str]]:
    """The first ``n`` metrics of a section dict as ``(key, formatted value)`` pairs, each
    value with its interval where the section gives one (:func:`format_interval`)."""
    metrics = section.get("metrics") or {}
    intervals = section.get("intervals") or {}
    return [(str(k), format_interval(format_value(v), intervals.get(k)))
            for k, v in list(metrics.items())[:n]]


def gate_value(gate: Mapping[str, Any]) -> str:
    """A gate's value for display; a null value shows why (its ``reason``)."""
    value = gate.get("value")
    return str(gate.get("reason") or "null") if value is None else format_value(value)


def _read_resource(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_read_resource),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = format_value
    return env


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _as_dict(obj: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return dict(obj)


def _pretty_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=str)


def _section_view(index: int, raw: Any) -> dict[str, Any]:
    s = _as_dict(raw)
    name = str(s.get("name", f"section{index}"))
    metrics = s.get("metrics") or {}
    tables = [
        {"title": str(t.get("title", "")), "columns": [str(c) for c in t.get("columns") or []],
         "rows": [[format_value(c) for c in row] for row in t.get("rows") or []],
         "caption": str(t.get("caption", ""))}
        for t in map(_as_dict, s.get("tables") or [])
    ]
    figures = [
        {"title": str(f.get("title", "")),
         "src": "data:image/png;base64," + str(f.get("png_base64", "")),
         "caption": str(f.get("caption", ""))}
        for f in map(_as_dict, s.get("figures") or [])
    ]
    details = s.get("details") or {}
    non_finite = s.get("non_finite") or {}
    intervals = s.get("intervals") or {}
    return {
        "anchor": f"s{index}-{_slug(name)}",
        "name": name,
        "title": str(s.get("title") or name),
        "summary": str(s.get("summary", "")),
        "metrics": [
            {
                "key": str(k),
                "gate_key": f"{name}.{k}",
                "value": format_interval(_metric_value(v, non_finite.get(f"metrics.{k}")),
                                         intervals.get(k)),
                "points": _points(intervals.get(k)),
            }
            for k, v in metrics.items()
        ],
        "main_metrics": main_metrics(s),
        "tables": tables,
        "figures": figures,
        "warnings": [str(w) for w in s.get("warnings") or []],
        "details_json": _pretty_json(details) if details else "",
    }


def _metric_value(value: Any, non_finite: str | None) -> str:
    """A metric for display; a null that stands for a non-finite number says which."""
    if value is None and non_finite:
        return f"{non_finite} (null)"
    return format_value(value)


def _points(record: Any) -> str:
    """What a metric's interval rests on: ``"200 (wilson)"``, or empty without one."""
    if not isinstance(record, Mapping) or "n" not in record:
        return ""
    return f"{record['n']} ({record.get('method', '?')})"


def gate_label(gate: Mapping[str, Any]) -> str:
    """A gate's key as written: ``KEY``, or ``KEY:lower`` / ``KEY:upper`` for a bound."""
    bound = gate.get("bound", "value")
    return str(gate.get("key", "")) + ("" if bound in (None, "value") else f":{bound}")


def _gate_view(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {"key": gate_label(raw), "threshold": format_value(raw.get("threshold")),
            "value": gate_value(raw), "passed": bool(raw.get("passed"))}


def _verdict(passed: Any) -> dict[str, str]:
    if passed is None:
        return {"text": "NO GATES", "cls": "neutral"}
    return {"text": "PASS", "cls": "pass"} if passed else {"text": "FAIL", "cls": "fail"}


def _scorecard_view(raw: Any) -> dict[str, Any]:
    """A scorecard row (:func:`dlsec.audit.scorecard.build_scorecard`) for the template."""
    row = _as_dict(raw)
    severity = str(row.get("severity", "not measured"))
    defense = row.get("defense") or {}
    return {
        "label": str(row.get("label") or row.get("threat", "")),
        "severity": severity,
        "cls": _slug(severity),
        "evidence": str(row.get("evidence", "")),
        "metric": str(row.get("metric") or ""),
        "defense": str(defense.get("name", "")),
        "defense_text": str(defense.get("summary") or row.get("defense_note") or ""),
        "within_noise": bool(defense.get("within_noise")),
    }


def render_html(report: Mapping[str, Any]) -> str:
    """The report dict (``report.json``'s content: ``title``, ``dlsec_version``, ``config``,
    ``dataset``, ``model``, ``scorecard`` (shown first), ``sections`` (each a
    :meth:`SectionResult.to_dict` or a :class:`SectionResult`), ``gates``, ``passed``;
    missing keys render as empty) as one
    HTML page that inlines its stylesheet and images and references no URL.

    Example:
        >>> page = render_html({"title": "audit", "sections": [], "passed": True})
        >>> "PASS" in page
        True
    """
    sections = [_section_view(i, s) for i, s in enumerate(report.get("sections") or [], 1)]
    gates = [_gate_view(g) for g in report.get("gates") or []]
    report_warnings = [str(w) for w in report.get("warnings") or []]
    n_warnings = sum(len(s["warnings"]) for s in sections) + len(report_warnings)
    appendix = [
        (label, _pretty_json(report.get(key)), anchor)
        for label, key, anchor in (
            ("Audit configuration", "config", "config"),
            ("Dataset", "dataset", "dataset"),
            ("Model card", "model", "model-card"),
        )
        if report.get(key)
    ]
    context = {
        "title": str(report.get("title") or "dlsec audit"),
        "version": str(report.get("dlsec_version", "")),
        "schema": f"{report.get('schema', 'dlsec.report')} v{report.get('schema_version', '?')}",
        "verdict": _verdict(report.get("passed")),
        "gates": gates,
        "scorecard": [_scorecard_view(r) for r in report.get("scorecard") or []],
        "sections": sections,
        "n_warnings": n_warnings,
        "report_warnings": report_warnings,
        "appendix": appendix,
        "css": _read_resource(_STYLESHEET),
    }
    return _environment().get_template(_TEMPLATE).render(context)
