"""Report plots, the HTML page and the terminal summary."""

from __future__ import annotations

import base64
import copy
import io
import re
import struct
from typing import Any

import matplotlib.image
import numpy as np
import pytest
import torch
from rich.console import Console

from dlsec.audit.report import (
    bar_chart,
    figure_to_png_base64,
    format_value,
    heatmap,
    image_grid,
    line_chart,
    print_summary,
    render_html,
    roc_curve,
)
from dlsec.audit.result import Figure, SectionResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(fig: Figure) -> bytes:
    assert isinstance(fig, Figure)
    data = base64.b64decode(fig.png_base64, validate=True)
    assert data[:8] == PNG_MAGIC
    return data


def _decoded(fig: Figure) -> np.ndarray:
    """Decode the PNG fully (raises on a corrupt file); returns H×W×channels."""
    return matplotlib.image.imread(io.BytesIO(_png(fig)), format="png")


def _size(fig: Figure) -> tuple[int, int]:
    width, height = struct.unpack(">II", _png(fig)[16:24])  # IHDR
    return width, height


# --- plots ---------------------------------------------------------------------------


def test_png_is_deterministic_and_valid() -> None:
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = [str(i) for i in range(6)]
    a = image_grid(images, labels, title="t", caption="c")
    b = image_grid(images.clone(), labels, title="t", caption="c")
    assert a.png_base64 == b.png_base64
    assert (a.title, a.caption) == ("t", "c")
    assert _decoded(a).ndim == 3
    c = bar_chart(["x", "y"], [1.0, 2.0], title="bars")
    d = bar_chart(["x", "y"], [1.0, 2.0], title="bars")
    assert c.png_base64 == d.png_base64
    assert _png(c).find(b"Software") == -1  # no matplotlib version in the bytes


def test_figure_to_png_base64_on_a_plain_figure() -> None:
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    assert figure_to_png_base64(fig) == figure_to_png_base64(fig)
    assert base64.b64decode(figure_to_png_base64(fig))[:8] == PNG_MAGIC


@pytest.mark.parametrize("shape", [(5, 1, 8, 8), (5, 8, 8), (5, 3, 12, 12)])
def test_image_grid_channels(shape: tuple[int, ...]) -> None:
    images = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    fig = image_grid(images, list("abcde"), title="grid", ncols=3)
    width, height = _size(fig)
    assert width > height > 0  # 3 columns × 2 rows
    assert _decoded(fig).shape[:2] == (height, width)


def test_image_grid_uses_bounds() -> None:
    # Inputs in [-1, 1]: with the right bounds 0 is mid-gray; read as [0, 1] it is black.
    x = torch.tensor([-1.0, 0.0]).view(2, 1, 1, 1).expand(2, 1, 4, 4)
    right = image_grid(x, ["lo", "mid"], title="b", bounds=(-1.0, 1.0))
    clipped = image_grid(x, ["lo", "mid"], title="b")
    assert right.png_base64 != clipped.png_base64
    # the darkest pixel is black either way; the right bounds show a mid-gray as well
    gray = _decoded(right)[..., :3].mean(axis=-1)
    assert gray.min() < 0.05
    assert np.any(np.abs(gray - 0.5) < 0.05)


def test_image_grid_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="labels"):
        image_grid(torch.rand(3, 1, 4, 4), ["a"], title="t")
    with pytest.raises(ValueError, match="shape"):
        image_grid(torch.rand(3, 2, 4, 4), ["a", "b", "c"], title="t")
    with pytest.raises(ValueError, match="at least one"):
        image_grid(torch.rand(0, 1, 4, 4), [], title="t")
    with pytest.raises(ValueError, match="bounds"):
        image_grid(torch.rand(1, 1, 4, 4), ["a"], title="t", bounds=(1.0, 0.0))


def test_charts_render() -> None:
    figs = [
        bar_chart(["a", "b", "c"], {"clean": [1, 2, 3], "adv": [0.5, 1, 2]}, title="bars",
                  ylabel="acc", ylim=(0, 4)),
        line_chart({"pgd": ([0.0, 0.1], [0.9, 0.2]), "fgsm": ([0.0, 0.1], [0.9, 0.5])},
                   title="lines", xlabel="eps", ylabel="acc", logy=True),
        heatmap(np.eye(3, dtype=int) * 5, ["0", "1", "2"], ["0", "1", "2"], title="cm"),
        heatmap(torch.rand(2, 3), ["r0", "r1"], ["c0", "c1", "c2"], title="float"),
        roc_curve({"lira": (np.array([0.0, 1e-3, 0.1, 1.0]), np.array([0.0, 0.02, 0.4, 1.0]))},
                  title="roc"),
        roc_curve({"loss": ([0.0, 0.5, 1.0], [0.0, 0.6, 1.0])}, title="roc", log=False),
    ]
    for fig in figs:
        assert _decoded(fig).size > 0


def test_chart_shape_errors() -> None:
    with pytest.raises(ValueError, match="3 labels"):
        bar_chart(["a", "b", "c"], [1.0, 2.0], title="t")
    with pytest.raises(ValueError, match="y values"):
        line_chart({"s": ([0, 1], [1])}, title="t", xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match="2-D"):
        heatmap(np.zeros(3), ["a"], ["b"], title="t")
    with pytest.raises(ValueError, match="labels"):
        heatmap(np.zeros((2, 2)), ["a"], ["b", "c"], title="t")


def test_plots_leave_no_pyplot_figures() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    bar_chart(["a"], [1.0], title="t")
    assert plt.get_fignums() == before


# --- HTML ----------------------------------------------------------------------------


def test_render_html_contains_sections_figures_and_is_offline(
    sample_report: dict[str, Any],
) -> None:
    page = render_html(sample_report)
    assert page.startswith("<!DOCTYPE html>")
    assert f"<title>{sample_report['title']}</title>" in page
    for section in sample_report["sections"]:
        assert section["title"] in page
        assert section["summary"] in page
        for fig in section["figures"]:
            assert f'src="data:image/png;base64,{fig["png_base64"]}"' in page
            assert f'alt="{fig["title"]}"' in page
    n_figures = sum(len(s["figures"]) for s in sample_report["sections"])
    assert page.count("<img ") == n_figures
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "@import" not in page
    assert 'class="warning"' in page and "Gradients are zero" in page
    assert 'class="badge badge-pass"' in page and ">PASS<" in page
    assert "0.1235" in page and "0.1234567" not in page  # 4 significant digits
    assert "<details" in page and "simplenet" in page  # config / model card
    # the table of contents links to every section anchor
    for anchor in re.findall(r'<section id="(s\d+-[a-z0-9-]+)"', page):
        assert f'href="#{anchor}"' in page


def test_render_html_is_deterministic(sample_report: dict[str, Any]) -> None:
    assert render_html(sample_report) == render_html(copy.deepcopy(sample_report))


def test_render_html_escapes_text(sample_report: dict[str, Any]) -> None:
    report = copy.deepcopy(sample_report)
    evil = "<script>alert(1)</script>"
    report["title"] = evil
    report["sections"][0]["title"] = evil
    report["sections"][0]["summary"] = '"><img src=x onerror=alert(1)>'
    report["sections"][0]["warnings"] = [evil]
    report["sections"][0]["tables"][0]["rows"][0][0] = evil
    report["sections"][0]["figures"][0]["title"] = '" onload="alert(1)'
    page = render_html(report)
    assert "alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page
    assert 'onload="alert' not in page
    assert page.count("<script>") == 1  # only the page's own print helper


def test_render_html_gate_fail(sample_report: dict[str, Any]) -> None:
    report = copy.deepcopy(sample_report)
    report["passed"] = False
    report["gates"][0].update(value=0.5, passed=False)
    page = render_html(report)
    assert 'class="badge badge-fail"' in page and ">FAIL<" in page
    assert 'class="badge badge-pass"' not in page
    assert "row-fail" in page


def test_render_html_minimal_and_dataclass_sections() -> None:
    page = render_html({"title": "empty", "sections": [], "passed": None})
    assert "NO GATES" in page and "No gates were set" in page
    section = SectionResult(name="x", title="X section", metrics={"m": 1.0})
    page = render_html({"title": "t", "sections": [section], "passed": True})
    assert "X section" in page and "x.m" in page


def test_format_value() -> None:
    assert format_value(0.123456) == "0.1235"
    assert format_value(123456.0) == "1.235e+05"
    assert format_value(3) == "3"
    assert format_value(True) == "yes"
    assert format_value(None) == "—"
    assert format_value(float("nan")) == "nan"
    assert format_value(np.float32(0.5)) == "0.5"
    assert format_value(torch.tensor(2)) == "2"
    assert format_value("abc") == "abc"


# --- terminal ------------------------------------------------------------------------


def _printed(report: dict[str, Any]) -> str:
    console = Console(record=True, width=160, color_system=None, force_terminal=False)
    print_summary(report, console)
    return console.export_text()


def test_print_summary(sample_report: dict[str, Any]) -> None:
    text = _printed(sample_report)
    for section in sample_report["sections"]:
        assert section["title"] in text
    assert "clean_accuracy = 0.96" in text
    assert "accuracy.clean_accuracy" in text
    assert "1 warning(s)" in text
    assert text.rstrip().endswith("PASS")


def test_print_summary_fail_and_literal_markup(sample_report: dict[str, Any]) -> None:
    report = copy.deepcopy(sample_report)
    report["passed"] = False
    report["gates"][0].update(passed=False)
    report["sections"][0]["summary"] = "[bold]not markup[/bold]"
    text = _printed(report)
    assert "[bold]not markup[/bold]" in text
    assert "FAIL: accuracy.clean_accuracy" in text


MATH_LIKE = ["$\\foo$", "a_b", "x^2", "50%", "{}", "$x", "$$"]


def test_labels_are_plain_text_never_mathtext() -> None:
    """Matplotlib reads "$...$" as mathtext: "$\\foo$" would raise while drawing."""
    n = len(MATH_LIKE)
    label = " ".join(MATH_LIKE)
    figures = [
        bar_chart(MATH_LIKE, {name: [0.5] * n for name in MATH_LIKE[:2]}, title=label,
                  xlabel=label, ylabel=label),
        heatmap(np.eye(n, dtype=np.int64), MATH_LIKE, MATH_LIKE, title=label, xlabel=label),
        image_grid(torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(0)),
                   MATH_LIKE, title=label),
        line_chart({name: ([0, 1], [0, 1]) for name in MATH_LIKE}, title=label, xlabel=label,
                   ylabel=label),
        roc_curve({name: ([0.0, 0.5, 1.0], [0.0, 0.7, 1.0]) for name in MATH_LIKE}, title=label),
    ]
    for fig in figures:
        assert base64.b64decode(fig.png_base64).startswith(b"\x89PNG")


def test_null_metrics_and_report_warnings_render() -> None:
    section = SectionResult(name="accuracy", title="Clean accuracy", metrics={"test_loss": None},
                            non_finite={"metrics.test_loss": "NaN"}).to_dict()
    report = {
        "title": "t", "sections": [section], "passed": False,
        "warnings": ["1 metric(s) are not finite numbers and are written as null"],
        "gates": [{"key": "accuracy.test_loss", "threshold": 0.0, "value": None, "passed": False,
                   "reason": "accuracy.test_loss is NaN, not a number"}],
    }
    page = render_html(report)
    assert "NaN (null)" in page and "accuracy.test_loss is NaN, not a number" in page
    assert "are not finite numbers and are written as null" in page
    buf = io.StringIO()
    print_summary(report, Console(file=buf, width=200, color_system=None))
    out = buf.getvalue()
    assert "accuracy.test_loss is NaN, not a number" in out and "1 warning(s)" in out
