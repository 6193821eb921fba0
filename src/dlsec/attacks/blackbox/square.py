"""Square Attack, Linf (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search").

Threat model: black-box, score-based, untargeted, Linf ball of radius ``eps`` inside the
oracle's input bounds. Only :meth:`Oracle.query` is used.

The attack starts from vertical stripes of ``+-eps`` (one random sign per channel and
column), then, at each iteration, redraws one random ``s x s`` square (all channels) to
``+-eps`` (one sign per channel) and keeps the candidate if the margin loss
``log s_y - max_{k != y} log s_k`` on the oracle's scores went down. The square's side
follows the paper's piecewise-constant schedule: ``p`` (the fraction of pixels changed)
starts at ``p_init`` (default 0.05) and halves after 10, 50, 200, 500, 1000, 2000, 4000,
6000 and 8000 of 10,000 iterations, rescaled to the query budget as the reference code does.
Defaults: ``max_queries=10_000`` per point (the paper's), ``p_init=0.05``.

Queries: the initial stripes cost one query per point, each iteration one per point still
not fooled; a fooled point or one whose budget is spent is never queried again.

Example:
    >>> oracle = LocalOracle(model, card=card)                        # doctest: +SKIP
    >>> res = SquareAttack(eps=0.2, max_queries=1000)(oracle, x, y,   # doctest: +SKIP
    ...                                                generator=torch.Generator().manual_seed(0))
    >>> res.success_rate, res.median_queries                           # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dlsec.attacks.blackbox import BlackBoxResult, _affordable, _check_oracle, _margin, _result
from dlsec.attacks.evasion._base import AttackError, Norm
from dlsec.attacks.evasion.ensemble import register_stage
from dlsec.threat import LocalOracle, Oracle

# (fraction of the 10,000-iteration schedule, divisor of p_init) from the reference code
_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
             (6000, 128), (8000, 256), (10000, 512))  # fmt: skip


def p_selection(p_init: float, it: int, n_iters: int) -> float:
    """The paper's schedule: ``p`` at iteration ``it`` of ``n_iters`` (rescaled to 10,000)."""
    i = int(it / n_iters * 10000)
    for upper, div in _SCHEDULE:
        if i <= upper:
            return p_init / div
    return p_init


@dataclass
class SquareAttack:
    """Score-based Square Attack, Linf (see the module docstring for the algorithm)."""

    eps: float
    max_queries: int = 10_000
    p_init: float = 0.05
    norm: Norm = "linf"
    max_resample: int = 10

    def __post_init__(self) -> None:
        if self.norm != "linf":
            raise AttackError("SquareAttack implements the linf norm only")
        if not math.isfinite(self.eps) or self.eps < 0:
            raise AttackError(f"eps must be finite and >= 0, got {self.eps}")
        if self.max_queries < 1:
            raise AttackError(f"max_queries must be >= 1, got {self.max_queries}")
        if not 0 < self.p_init <= 1:
            raise AttackError(f"p_init must be in (0, 1], got {self.p_init}")

    def __call__(
        self,
        oracle: Oracle,
        x: Tensor,
        y: Tensor,
        *,
        ids: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> BlackBoxResult:
        """Attack ``(x, y)`` through ``oracle``; ``ids`` attribute queries to samples."""
        ids = _check_oracle(oracle, x, y, ids)
        if x.dim() != 4:
            raise AttackError(
                f"SquareAttack needs image batches N x C x H x W, got {tuple(x.shape)}"
            )
        dev = x.device
        y = y.to(dev)
        lo, hi = oracle.bounds
        n, c, h, w = x.shape
        gen_dev = generator.device if generator is not None else torch.device("cpu")

        def signs(*shape: int) -> Tensor:
            s = torch.randint(0, 2, shape, generator=generator, device=gen_dev).to(dev, x.dtype)
            return (2 * s - 1) * self.eps

        queries = torch.zeros(n, dtype=torch.int64, device=dev)
        x_best = (x + signs(n, c, 1, w)).clamp(lo, hi)
        margin = torch.full((n,), float("inf"), device=dev)
        fooled = torch.zeros(n, dtype=torch.bool, device=dev)
        rows = _affordable(oracle, torch.arange(n, device=dev))
        if rows.numel():
            scores = oracle.query(x_best[rows], ids=ids[rows.cpu()])
            margin[rows] = _margin(scores.to(dev), y[rows])
            fooled[rows] = scores.to(dev).argmax(1) != y[rows]
            queries[rows] += 1
        ar_h = torch.arange(h, device=dev)
        ar_w = torch.arange(w, device=dev)
        for it in range(self.max_queries - 1 if self.eps > 0 else 0):
            rows = torch.nonzero(~fooled & (queries > 0) & (queries < self.max_queries)).flatten()
            rows = _affordable(oracle, rows)
            m = rows.numel()
            if m == 0:
                break
            xr, best = x[rows], x_best[rows]
            delta = best - xr
            p = p_selection(self.p_init, it, self.max_queries)
            s = min(max(round(math.sqrt(p * h * w)), 1), max(min(h, w) - 1, 1))
            top = torch.randint(0, max(h - s, 1), (m,), generator=generator, device=gen_dev)
            left = torch.randint(0, max(w - s, 1), (m,), generator=generator, device=gen_dev)
            top, left = top.to(dev).view(m, 1, 1, 1), left.to(dev).view(m, 1, 1, 1)
            in_h = (ar_h.view(1, 1, h, 1) >= top) & (ar_h.view(1, 1, h, 1) < top + s)
            in_w = (ar_w.view(1, 1, 1, w) >= left) & (ar_w.view(1, 1, 1, w) < left + s)
            window = in_h & in_w  # m x 1 x h x w
            cand = delta.clone()
            redo = torch.ones(m, dtype=torch.bool, device=dev)
            for _ in range(self.max_resample):
                new = torch.where(window, signs(m, c, 1, 1), delta)
                cand = torch.where(redo.view(m, 1, 1, 1), new, cand)
                moved = ((xr + cand).clamp(lo, hi) - best).abs() >= 1e-7
                redo = ~(moved & window).flatten(1).any(1)
                if not bool(redo.any()):
                    break
            x_new = (xr + cand).clamp(lo, hi)
            scores = oracle.query(x_new, ids=ids[rows.cpu()]).to(dev)
            queries[rows] += 1
            new_margin = _margin(scores, y[rows])
            new_fooled = scores.argmax(1) != y[rows]
            better = (new_margin < margin[rows]) | new_fooled
            keep = rows[better]
            margin[keep] = new_margin[better]
            fooled[keep] = new_fooled[better]
            x_best[keep] = x_new[better]
        return _result(x, x_best, fooled, queries)


ENSEMBLE_TOTAL_QUERIES = 20_000
ENSEMBLE_MIN_QUERIES = 100
ENSEMBLE_MAX_QUERIES = 1_000


@register_stage("square", white_box=False)
def _square_stage(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: Norm,
    eps: float,
    bounds: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """The robustness ensemble's Square stage, through a :class:`LocalOracle`.

    It runs only on the points still robust after the white-box stages, with a modest
    budget so the default audit stays fast: ``ENSEMBLE_TOTAL_QUERIES`` spread over the
    points, between ``ENSEMBLE_MIN_QUERIES`` and ``ENSEMBLE_MAX_QUERIES`` per point.
    Linf only; for other norms it returns ``x`` unchanged.
    """
    if norm != "linf" or x.shape[0] == 0 or x.dim() != 4:
        return x
    with torch.inference_mode():
        k = int(model(x[:1]).shape[1])
    oracle = LocalOracle(model, num_classes=k, input_shape=tuple(x.shape[1:]), bounds=bounds)
    budget = min(ENSEMBLE_MAX_QUERIES, max(ENSEMBLE_MIN_QUERIES, ENSEMBLE_TOTAL_QUERIES // len(x)))
    return SquareAttack(eps=eps, max_queries=budget)(oracle, x, y, generator=generator).x_adv
