"""The HTML report renders in a real browser: title, every image loaded, a clean console."""

from __future__ import annotations

from typing import Any

import pytest
from browser import check_report_renders

from dlsec.audit.report import render_html


@pytest.mark.browser
@pytest.mark.timeout(60)
def test_report_renders_in_headless_chromium(tmp_path, sample_report: dict[str, Any]) -> None:
    path = tmp_path / "report.html"
    path.write_text(render_html(sample_report), encoding="utf-8")
    n_figures = sum(len(s["figures"]) for s in sample_report["sections"])
    assert n_figures >= 3

    result = check_report_renders(path)

    assert result["title"] == sample_report["title"]
    assert result["console_errors"] == []
    assert result["broken_images"] == []
    assert result["n_images"] == n_figures
