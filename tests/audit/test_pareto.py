"""The Pareto front of a trade-off and its plot (one point per defense)."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dlsec.audit.report import pareto_chart, pareto_front

POINTS = {  # x: membership AUC (lower is better), y: clean accuracy (higher is better)
    "none": (0.52, 0.98),
    "pgd-at": (0.58, 0.95),  # dominated by none: leaks more, less accurate
    "dp:3": (0.50, 0.89),  # the least leakage
    "trades": (0.55, 0.99),  # the most accurate
    "dp:8": (0.51, 0.89),  # dominated by dp:3 (same accuracy, more leakage)
}


def test_front_by_hand() -> None:
    assert pareto_front(POINTS) == ["dp:3", "none", "trades"]  # ordered by x


def test_directions_change_the_front() -> None:
    # higher x better and lower y better: the mirror image is optimal
    assert pareto_front(POINTS, "higher", "lower") == ["dp:8", "pgd-at"]
    # both higher: pgd-at (highest x) and trades (highest y)
    assert pareto_front(POINTS, "higher", "higher") == ["trades", "pgd-at"]
    assert pareto_front(POINTS, "lower", "lower") == ["dp:3"]


def test_ties_and_single_points() -> None:
    assert pareto_front({"a": (0.1, 0.5), "b": (0.1, 0.5)}) == ["a", "b"]  # identical: both
    assert pareto_front({"a": (0.1, 0.5), "b": (0.1, 0.4)}) == ["a"]  # same x, worse y
    assert pareto_front({"only": (0.3, 0.3)}) == ["only"]
    assert pareto_front({}) == []


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="x_better"):
        pareto_front(POINTS, "smaller")
    with pytest.raises(ValueError, match="'bad' is not finite"):
        pareto_front({"bad": (float("nan"), 0.5)})
    with pytest.raises(ValueError, match="at least one point"):
        pareto_chart({}, title="t", xlabel="x", ylabel="y")


def _pixels(fig) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(fig.png_base64))).convert("RGB"))


def test_chart_marks_the_front_and_draws_error_bars() -> None:
    kw: dict[str, Any] = {"title": "Membership vs accuracy", "xlabel": "membership AUC",
          "ylabel": "clean accuracy", "caption": "one point per defense"}
    fig = pareto_chart(POINTS, **kw)
    assert fig.title == kw["title"] and fig.caption == kw["caption"]
    assert _pixels(fig).shape[2] == 3
    # deterministic bytes for the same data
    assert pareto_chart(POINTS, **kw).png_base64 == fig.png_base64
    red = _pixels(fig)
    # the front (C3, red) is drawn: many strongly red pixels
    reddish = (red[..., 0] > 180) & (red[..., 1] < 90) & (red[..., 2] < 90)
    assert reddish.sum() > 200
    # error bars add grey ink: the same points with wide intervals differ from none
    wide = {n: (x - 0.03, x + 0.03) for n, (x, _) in POINTS.items()}
    with_bars = pareto_chart(POINTS, xerr=wide, yerr={"none": (0.9, 1.0)}, **kw)
    assert with_bars.png_base64 != fig.png_base64
    grey = lambda p: ((abs(p[..., 0].astype(int) - 153) < 8) & (abs(p[..., 1].astype(int) - 153) < 8)).sum()  # noqa: E731
    assert grey(_pixels(with_bars)) > grey(_pixels(fig)) + 100
