"""A short summary of a report dict for the terminal, printed with rich."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from dlsec.audit.report.html import format_value, gate_label, gate_value, main_metrics

__all__ = ["print_scorecard", "print_summary"]

_MAX_NAME = 36
"""The widest the key-metrics column is made to fit a metric name whole (longer ones fold)."""
_MIN_METRICS, _MIN_TITLE, _MAX_TITLE, _ROOMY = 28, 12, 20, 120


def _fit(texts: Any, least: int, most: int) -> int:
    """A column's width: its longest line, but at most ``least`` unless a single word needs
    more (up to ``most``)."""
    texts = [str(t) for t in texts]
    longest_line = max((len(line) for t in texts for line in t.splitlines()), default=1)
    longest_word = max((len(w) for t in texts for w in t.split()), default=1)
    return max(1, min(longest_line, max(min(longest_word, most), least)))


_SEVERITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "green",
                   "not measured": "dim"}
_MAX_PROSE_WORD = 24
"""The evidence and defense columns are never narrower than their longest word, up to this."""


def print_scorecard(rows: list[Mapping[str, Any]], console: Console) -> None:
    """The scorecard (:func:`dlsec.audit.scorecard.build_scorecard`'s rows) as a table:
    threat, severity, evidence, the defense that helps most (or why there is none). Lines
    wrap between words: each column is at least as wide as its longest word (capped)."""
    if not rows:
        return
    cells = [(str(r.get("label") or r.get("threat", "")), str(r.get("severity", "")),
              str(r.get("evidence", "")),
              str((r.get("defense") or {}).get("summary") or r.get("defense_note") or ""))
             for r in rows]
    table = Table(title=Text("Scorecard", style="bold"), show_lines=True, expand=False)
    for i, name in enumerate(("Threat", "Severity", "Evidence", "Best defense")):
        words = [name, *(c[i] for c in cells)]  # the header is never split either
        longest_word = max((len(w) for t in words for w in t.split()), default=1)
        if i < 2:  # short labels: as wide as their longest word, wrapped between words
            table.add_column(name, width=_fit(words, 1, _MAX_TITLE), overflow="fold")
        else:
            table.add_column(name, overflow="fold",
                             min_width=min(longest_word, _MAX_PROSE_WORD), ratio=1)
    for (label, severity, evidence, defense), raw in zip(cells, rows, strict=True):
        style = _SEVERITY_STYLE.get(str(raw.get("severity")), "")
        table.add_row(Text(label, style="bold"), Text(severity, style=style), Text(evidence),
                      Text(defense))
    console.print(table)


def print_summary(report: Mapping[str, Any], console: Console | None = None) -> None:
    """Print the report dict's scorecard (first: one row per threat), its sections, their
    key metrics, the gates and the PASS/FAIL verdict on ``console`` (default: stdout),
    literally (never parsed as rich markup)."""
    console = console if console is not None else Console()
    title = str(report.get("title") or "dlsec audit")
    print_scorecard(list(report.get("scorecard") or []), console)

    rows = [raw.to_dict() if hasattr(raw, "to_dict") else dict(raw)
            for raw in report.get("sections") or []]
    shown = {id(s): "\n".join(f"{k} = {v}" for k, v in main_metrics(s, 3)) for s in rows}
    # lines wrap between words only: the section and metric columns are fixed at their
    # longest word (a section title's, a metric name's; capped) so the summary absorbs
    # what 80 columns cannot hold, never a metric name
    titles = [str(s.get("title") or s.get("name", "")) for s in rows]
    sections = Table(title=Text(title, style="bold"), show_lines=False, expand=False)
    roomy = console.width >= _ROOMY  # a wide terminal holds every title on one line
    sections.add_column("Section", style="bold", overflow="fold", no_wrap=roomy,
                        width=None if roomy else _fit(titles, _MIN_TITLE, _MAX_TITLE))
    sections.add_column("Summary", overflow="fold")
    sections.add_column("Key metrics", overflow="fold",
                        width=_fit(shown.values(), _MIN_METRICS, 2 * _MAX_NAME if roomy else _MAX_NAME))
    sections.add_column("Warnings", justify="right")
    n_warnings = 0
    for s in rows:
        warnings = list(s.get("warnings") or [])
        n_warnings += len(warnings)
        metrics = shown[id(s)]
        sections.add_row(
            Text(str(s.get("title") or s.get("name", ""))),
            Text(str(s.get("summary", ""))),
            Text(metrics),
            Text(str(len(warnings)), style="yellow bold" if warnings else "dim"),
        )
    console.print(sections)

    gates = list(report.get("gates") or [])
    if gates:
        table = Table(title="Gates")
        table.add_column("Metric")
        table.add_column("Threshold", justify="right")
        table.add_column("Value", justify="right")
        table.add_column("Result")
        for g in gates:
            table.add_row(
                Text(gate_label(g)), format_value(g.get("threshold")), gate_value(g),
                Text("pass", style="green") if g.get("passed") else Text("FAIL", style="red bold"),
            )
        console.print(table)

    n_warnings += len(report.get("warnings") or [])  # printed by the run as they arise
    if n_warnings:
        console.print(Text(f"{n_warnings} warning(s); see the HTML report.", style="yellow"))
    passed = report.get("passed")
    if passed is None:
        console.print(Text("NO GATES", style="bold"))
    elif passed:
        console.print(Text("PASS", style="bold green"))
    else:
        failed = [gate_label(g) for g in gates if not g.get("passed")]
        line = "FAIL" + (f": {', '.join(failed)}" if failed else "")
        console.print(Text(line, style="bold red"))
