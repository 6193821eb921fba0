"""Static plots for the audit report, each returned as a :class:`~dlsec.audit.result.Figure`.

Every helper draws on a fresh :class:`matplotlib.figure.Figure` (no pyplot, so no global
figure state leaks between calls or into the user's session) under a fixed style, and
encodes it as a PNG with a fixed dpi and no software/date metadata: the same data gives
byte-identical base64, which keeps ``report.json`` and ``report.html`` reproducible. All
text (titles, labels, class names) is drawn literally: ``$``, ``_``, ``^``, ``%`` and
braces are never read as mathtext or LaTeX.

Common arguments: ``title`` is shown in the report (and drawn on every plot but an image
grid), ``caption`` is shown under the figure in the report, ``xlabel``/``ylabel`` label
the axes.

Example:
    >>> fig = bar_chart(["clean", "pgd"], [0.97, 0.12], title="Accuracy", ylim=(0, 1))
    >>> fig.png_base64[:8]
    'iVBORw0K'
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from dlsec.audit.result import Figure

__all__ = [
    "DPI",
    "bar_chart",
    "figure_to_png_base64",
    "heatmap",
    "image_grid",
    "line_chart",
    "pareto_chart",
    "pareto_front",
    "roc_curve",
]

DPI = 100
"""Resolution of every report PNG (dots per inch)."""

_DEFAULT_SIZE = (6.0, 3.5)

# A fixed style, applied while drawing, so a user's matplotlibrc cannot change the bytes.
_STYLE: dict[Any, Any] = {  # keys are rcParams names
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.grid": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
    "image.interpolation": "nearest",
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "path.simplify": True,
    # labels are data (class names, attack names): drawn as plain text, never parsed as
    # mathtext (a class named "$\\foo$" would fail to render) nor handed to LaTeX
    "text.usetex": False,
    "text.parse_math": False,
}


def figure_to_png_base64(fig: MplFigure) -> str:
    """A matplotlib figure as a base64 PNG (ASCII text, no ``data:`` prefix), rendered at
    :data:`DPI` without ``Software`` metadata: the same figure gives byte-identical output."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight",
                pad_inches=0.08)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _make(
    draw: Callable[[MplFigure], None],
    *,
    title: str,
    caption: str,
    figsize: tuple[float, float] = _DEFAULT_SIZE,
) -> Figure:
    with matplotlib.rc_context(_STYLE):
        fig = MplFigure(figsize=figsize, dpi=DPI)
        FigureCanvasAgg(fig)
        draw(fig)
        png = figure_to_png_base64(fig)
    return Figure(title=title, png_base64=png, caption=caption)


def _as_float_array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def image_grid(
    images: torch.Tensor | np.ndarray,
    labels: Sequence[str],
    *,
    title: str,
    caption: str = "",
    ncols: int = 10,
    bounds: tuple[float, float] = (0.0, 1.0),
    cmap: str = "gray",
) -> Figure:
    """A grid of images, each with its label printed above it.

    Args:
        images: ``N×C×H×W`` (``C`` is 1 or 3) or ``N×H×W``, in the model's input space.
        labels: one label per image (e.g. ``"7→1"`` for an adversarial example).
        ncols: tiles per row (fewer when there are fewer images).
        bounds: the input bounds ``(low, high)``; pixels are mapped to ``[0, 1]`` from
            these and clipped, so take them from the model card.
        cmap: colormap for single-channel images.

    Raises:
        ValueError: on an empty batch, a bad shape, a label count that does not match, or
            empty bounds.
    """
    x = _as_float_array(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"images must be N×H×W or N×C×H×W with C in (1, 3), got shape {tuple(x.shape)}"
        )
    n = x.shape[0]
    if n == 0:
        raise ValueError("image_grid needs at least one image")
    if len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} images")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not hi > lo:
        raise ValueError(f"bounds must satisfy low < high, got {bounds}")
    x = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    if x.shape[1] == 1:
        rgb = matplotlib.colormaps[cmap](x[:, 0])[..., :3]  # N×H×W×3
    else:
        rgb = np.transpose(x, (0, 2, 3, 1))
    # One mosaic image on one axes (much faster than one axes per tile), white gutters,
    # with room above each tile for its label.
    h, w = rgb.shape[1:3]
    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    gap_x = max(1, round(w * 0.12))
    gap_y = max(2, round(h * 0.32))
    pitch_x, pitch_y = w + gap_x, h + gap_y
    mosaic = np.ones((rows * pitch_y, cols * pitch_x - gap_x, 3))
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = r * pitch_y + gap_y, c * pitch_x
        mosaic[top : top + h, left : left + w] = rgb[i]
    tile_in = 0.85
    scale = tile_in / w
    figsize = (max(mosaic.shape[1] * scale, 1.5), mosaic.shape[0] * scale)

    def draw(fig: MplFigure) -> None:
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        ax.set_axis_off()
        ax.imshow(mosaic, interpolation="nearest", aspect="equal")
        for i in range(n):
            r, c = divmod(i, cols)
            ax.text(c * pitch_x + (w - 1) / 2, r * pitch_y + gap_y - 1.0, str(labels[i]),
                    ha="center", va="bottom", fontsize=7)

    return _make(draw, title=title, caption=caption, figsize=figsize)


def _label(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _rotate_if_crowded(ax: Axes, labels: Sequence[str]) -> None:
    lengths = [len(str(s)) for s in labels]
    if sum(lengths) > 60 or max(lengths, default=0) > 10:
        for tick in ax.get_xticklabels():
            tick.set_rotation(30)
            tick.set_horizontalalignment("right")


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float] | Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    caption: str = "",
    ylim: tuple[float, float] | None = None,
    intervals: Mapping[str, Sequence[tuple[float, float]]] | None = None,
) -> Figure:
    """A bar chart of ``values`` (heights, or ``{series name: heights}`` drawn side by side
    with a legend), one label per bar (per group); ``ylim`` fixes the y range, e.g.
    ``(0, 1)`` for accuracies; ``intervals`` (``{series name: [(low, high), ...]}``, ``""``
    for unnamed heights) draws an error bar per bar. ValueError when a series length does
    not match ``labels``."""
    series = dict(values) if isinstance(values, Mapping) else {"": values}
    data = {name: _as_float_array(v).reshape(-1) for name, v in series.items()}
    for name, v in data.items():
        if v.shape[0] != len(labels):
            raise ValueError(f"series {name!r} has {v.shape[0]} values for {len(labels)} labels")
    yerr = {}
    for name, ivs in (intervals or {}).items():
        if name not in data or len(ivs) != len(labels):
            raise ValueError(f"intervals {name!r}: one (low, high) per label of a series")
        iv = _as_float_array(ivs).reshape(len(labels), 2)
        yerr[name] = np.clip(np.stack([data[name] - iv[:, 0], iv[:, 1] - data[name]]), 0, None)
    k = max(len(data), 1)
    width = 0.8 / k
    pos = np.arange(len(labels), dtype=np.float64)

    def draw(fig: MplFigure) -> None:
        ax = fig.add_subplot()
        for j, (name, v) in enumerate(data.items()):
            offset = (j - (k - 1) / 2) * width
            ax.bar(pos + offset, v, width=width, label=name or None, color=f"C{j}",
                   yerr=yerr.get(name), capsize=3 if name in yerr else 0)
        ax.set_xticks(pos, [str(s) for s in labels])
        _rotate_if_crowded(ax, labels)
        _label(ax, title, xlabel, ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        if isinstance(values, Mapping):
            ax.legend()

    return _make(draw, title=title, caption=caption)


def line_chart(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    caption: str = "",
    logx: bool = False,
    logy: bool = False,
    markers: bool = True,
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> Figure:
    """One line per series ``{name: (x values, y values)}``, e.g. robust accuracy against
    epsilon for several attacks; ``logx``/``logy`` make an axis logarithmic, ``markers``
    marks every point; ``bands`` (``{series name: (lows, highs)}``) shades a series'
    interval. ValueError when the x and y of a series (or its band) differ in length."""
    data = {}
    for name, (xs, ys) in series.items():
        xa, ya = _as_float_array(xs).reshape(-1), _as_float_array(ys).reshape(-1)
        if xa.shape != ya.shape:
            raise ValueError(f"series {name!r}: {xa.shape[0]} x values, {ya.shape[0]} y values")
        data[name] = (xa, ya)
    shade = {}
    for name, (lows, highs) in (bands or {}).items():
        lo, hi = _as_float_array(lows).reshape(-1), _as_float_array(highs).reshape(-1)
        if name not in data or lo.shape != data[name][0].shape or hi.shape != lo.shape:
            raise ValueError(f"bands {name!r}: one (low, high) per point of a series")
        shade[name] = (lo, hi)

    def draw(fig: MplFigure) -> None:
        ax = fig.add_subplot()
        for j, (name, (xa, ya)) in enumerate(data.items()):
            ax.plot(xa, ya, marker="o" if markers else None, label=name, color=f"C{j}")
            if name in shade:
                ax.fill_between(xa, *shade[name], color=f"C{j}", alpha=0.15, linewidth=0)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        _label(ax, title, xlabel, ylabel)
        ax.grid(alpha=0.3)
        if len(data) > 1:
            ax.legend()

    return _make(draw, title=title, caption=caption)


def heatmap(
    matrix: Any,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    caption: str = "",
    annotate: bool = True,
    fmt: str | None = None,
) -> Figure:
    """A 2-D heatmap of ``matrix`` (rows × columns, e.g. a confusion matrix) with tick labels.

    ``annotate`` prints each cell's value, formatted with ``fmt`` (default ``"d"`` for
    integer data, ``".2f"`` otherwise). ValueError when the matrix is not 2-D or the labels
    do not match its shape.
    """
    m = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    if m.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D matrix, got shape {m.shape}")
    if m.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"matrix shape {m.shape} does not match {len(row_labels)} row and "
            f"{len(col_labels)} column labels"
        )
    integer = np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.bool_)
    cell_fmt = fmt if fmt is not None else ("d" if integer else ".2f")
    values = m.astype(np.int64) if cell_fmt == "d" else m.astype(np.float64)
    shown = m.astype(np.float64)
    nr, nc = m.shape
    side = min(max(2.5, 0.42 * max(nr, nc) + 1.2), 7.0)
    figsize = (side + 0.8, side)
    cell_font = 8 if max(nr, nc) <= 12 else 6

    def draw(fig: MplFigure) -> None:
        ax = fig.add_subplot()
        finite = shown[np.isfinite(shown)]
        vmin = float(finite.min()) if finite.size else 0.0
        vmax = float(finite.max()) if finite.size else 1.0
        im = ax.imshow(shown, cmap="Blues", vmin=vmin, vmax=vmax, aspect="auto")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(np.arange(nc), [str(s) for s in col_labels])
        ax.set_yticks(np.arange(nr), [str(s) for s in row_labels])
        _rotate_if_crowded(ax, col_labels)
        for spine in ax.spines.values():
            spine.set_visible(False)
        _label(ax, title, xlabel, ylabel)
        if annotate:
            mid = vmin + (vmax - vmin) / 2
            for i in range(nr):
                for j in range(nc):
                    color = "white" if shown[i, j] > mid else "black"
                    ax.text(j, i, format(values[i, j], cell_fmt), ha="center", va="center",
                            fontsize=cell_font, color=color)

    return _make(draw, title=title, caption=caption, figsize=figsize)


def _auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    order = np.argsort(fpr, kind="stable")
    x, y = fpr[order], tpr[order]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def roc_curve(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    caption: str = "",
    log: bool = True,
) -> Figure:
    """ROC curves of one or more detectors or attacks, with the chance line.

    With ``log=True`` (the default) both axes are logarithmic, as in Carlini et al.,
    "Membership Inference Attacks From First Principles" (S&P 2022): it shows the
    true-positive rate at the low false-positive rates that matter to an attacker. Each
    legend entry carries the curve's AUC. ``curves`` is ``{name: (fpr, tpr)}``, each as
    ``sklearn.metrics.roc_curve`` returns them. ValueError when a curve's fpr and tpr
    differ in length.
    """
    data = {}
    for name, (fpr, tpr) in curves.items():
        f, t = _as_float_array(fpr).reshape(-1), _as_float_array(tpr).reshape(-1)
        if f.shape != t.shape:
            raise ValueError(f"curve {name!r}: {f.shape[0]} fpr values, {t.shape[0]} tpr values")
        data[name] = (f, t)
    positive = [f[f > 0].min() for f, _ in data.values() if np.any(f > 0)]
    low = float(np.clip(min(positive), 1e-5, 1e-2)) if positive else 1e-3

    def draw(fig: MplFigure) -> None:
        ax = fig.add_subplot()
        chance = np.logspace(np.log10(low), 0.0, 50) if log else np.array([0.0, 1.0])
        ax.plot(chance, chance, linestyle="--", color="0.6", linewidth=1.0, label="chance")
        for j, (name, (f, t)) in enumerate(data.items()):
            ax.plot(f, t, label=f"{name} (AUC {_auc(f, t):.3f})", color=f"C{j}")
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlim(low if log else 0.0, 1.0)
        ax.set_ylim(low if log else 0.0, 1.0)
        _label(ax, title, "false positive rate", "true positive rate")
        ax.grid(alpha=0.3, which="both" if log else "major")
        ax.legend(loc="lower right")

    return _make(draw, title=title, caption=caption, figsize=(4.5, 4.0))


def _check_better(name: str, better: str) -> float:
    if better not in ("higher", "lower"):
        raise ValueError(f"{name} must be 'higher' or 'lower', got {better!r}")
    return 1.0 if better == "higher" else -1.0


def pareto_front(
    points: Mapping[str, tuple[float, float]], x_better: str = "lower", y_better: str = "higher"
) -> list[str]:
    """The names of the Pareto-optimal points, ordered by x (ties by name): those no other
    point dominates, i.e. none is at least as good on both axes and better on one, where
    "good" follows ``x_better``/``y_better`` (``"higher"`` or ``"lower"``). Identical points
    are all optimal. ValueError on a non-finite coordinate or a bad direction.

    Example:
        >>> pareto_front({"a": (0.1, 0.9), "b": (0.2, 0.95), "c": (0.3, 0.9)})
        ['a', 'b']
    """
    sx, sy = _check_better("x_better", x_better), _check_better("y_better", y_better)
    for name, (x, y) in points.items():
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"point {name!r} is not finite: ({x}, {y})")
    scored = {name: (sx * float(x), sy * float(y)) for name, (x, y) in points.items()}

    def dominated(a: tuple[float, float]) -> bool:
        return any(b[0] >= a[0] and b[1] >= a[1] and b != a for b in scored.values())

    front = [name for name, a in scored.items() if not dominated(a)]
    return sorted(front, key=lambda n: (float(points[n][0]), n))


def _errors(centres: Sequence[float], names: Sequence[str],
            intervals: Mapping[str, tuple[float, float]] | None) -> np.ndarray | None:
    """Asymmetric error bars (2 x N) from ``{name: (low, high)}`` (a missing name: none)."""
    if not intervals:
        return None
    err = np.zeros((2, len(names)))
    for i, (name, c) in enumerate(zip(names, centres, strict=True)):
        if name in intervals:
            lo, hi = intervals[name]
            err[:, i] = (max(0.0, c - float(lo)), max(0.0, float(hi) - c))
    return err


def pareto_chart(
    points: Mapping[str, tuple[float, float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    x_better: str = "lower",
    y_better: str = "higher",
    xerr: Mapping[str, tuple[float, float]] | None = None,
    yerr: Mapping[str, tuple[float, float]] | None = None,
    caption: str = "",
) -> Figure:
    """A trade-off plot: one labelled point per defense ``{name: (x, y)}`` (e.g. x a risk
    such as membership AUC, y clean accuracy), error bars from the 95% intervals ``xerr``
    and ``yerr`` (``{name: (low, high)}``, absolute bounds as in the report), and the
    Pareto-optimal points (:func:`pareto_front` under ``x_better``/``y_better``) ringed and
    joined by a step line. ValueError on an empty or non-finite point set."""
    if not points:
        raise ValueError("pareto_chart needs at least one point")
    front = pareto_front(points, x_better, y_better)
    names = list(points)
    xs = [float(points[n][0]) for n in names]
    ys = [float(points[n][1]) for n in names]
    ex, ey = _errors(xs, names, xerr), _errors(ys, names, yerr)

    def draw(fig: MplFigure) -> None:
        ax = fig.add_subplot()
        ax.errorbar(xs, ys, xerr=ex, yerr=ey, fmt="o", color="C0", ecolor="0.6",
                    elinewidth=1.0, capsize=2, label="defense")
        fx = [float(points[n][0]) for n in front]
        fy = [float(points[n][1]) for n in front]
        ax.step(fx, fy, where="post" if (x_better == "lower") == (y_better == "higher")
                else "pre", color="C3", linewidth=1.2, label="Pareto front")
        ax.scatter(fx, fy, s=90, facecolors="none", edgecolors="C3", linewidths=1.4, zorder=3)
        for name, x, y in zip(names, xs, ys, strict=True):
            ax.annotate(str(name), (x, y), textcoords="offset points", xytext=(5, 4),
                        fontsize=7)
        _label(ax, title, f"{xlabel} ({x_better} is better)", f"{ylabel} ({y_better} is better)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")

    return _make(draw, title=title, caption=caption)
