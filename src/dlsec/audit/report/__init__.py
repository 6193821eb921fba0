"""The audit report: plots, the self-contained HTML page and the terminal summary."""

from dlsec.audit.report.html import format_value, render_html
from dlsec.audit.report.plots import (
    bar_chart,
    figure_to_png_base64,
    heatmap,
    image_grid,
    line_chart,
    pareto_chart,
    pareto_front,
    roc_curve,
)
from dlsec.audit.report.terminal import print_summary

__all__ = [
    "bar_chart",
    "figure_to_png_base64",
    "format_value",
    "heatmap",
    "image_grid",
    "line_chart",
    "pareto_chart",
    "pareto_front",
    "print_summary",
    "render_html",
    "roc_curve",
]
