"""A short summary of a report dict for the terminal, printed with rich."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from dlsec.audit.report.html import format_value, gate_value, main_metrics

__all__ = ["print_summary"]


def print_summary(report: Mapping[str, Any], console: Console | None = None) -> None:
    """Print the report dict's sections, their key metrics, the gates and the PASS/FAIL
    verdict on ``console`` (default: stdout), literally (never parsed as rich markup)."""
    console = console if console is not None else Console()
    title = str(report.get("title") or "dlsec audit")

    sections = Table(title=Text(title, style="bold"), show_lines=False, expand=False)
    sections.add_column("Section", style="bold", no_wrap=True)
    sections.add_column("Summary", overflow="fold")
    sections.add_column("Key metrics", overflow="fold")
    sections.add_column("Warnings", justify="right")
    n_warnings = 0
    for raw in report.get("sections") or []:
        s = raw.to_dict() if hasattr(raw, "to_dict") else dict(raw)
        warnings = list(s.get("warnings") or [])
        n_warnings += len(warnings)
        metrics = "\n".join(f"{k} = {v}" for k, v in main_metrics(s, 3))
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
                Text(str(g.get("key", ""))), format_value(g.get("threshold")), gate_value(g),
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
        failed = [str(g.get("key", "")) for g in gates if not g.get("passed")]
        line = "FAIL" + (f": {', '.join(failed)}" if failed else "")
        console.print(Text(line, style="bold red"))
