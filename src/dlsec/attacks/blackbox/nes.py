"""NES gradient estimation driving PGD (Ilyas, Engstrom, Athalye & Lin 2018, "Black-box
Adversarial Attacks with Limited Queries and Information").

Threat model: black-box, score-based, untargeted, an Linf or L2 ball of radius ``eps``
inside the oracle's input bounds. Only :meth:`Oracle.query` is used.

Each iteration estimates the gradient of the margin loss ``log s_y - max_{k != y} log s_k``
with natural evolution strategies: ``samples / 2`` Gaussian directions ``u_i`` are probed
antithetically at ``x +- sigma u_i`` and ``g = sum_i (f(x + sigma u_i) - f(x - sigma u_i))
u_i / (samples * sigma)``. The estimate is smoothed with momentum (``g <- m g_prev +
(1 - m) g``) and drives one projected descent step: ``x <- P(x - alpha sign(g))`` (Linf) or
``x <- P(x - alpha g / ||g||)`` (L2), then the new iterate is queried to see whether it is
adversarial.

Defaults follow the paper's query-limited setting, scaled to the input range:
``samples=50`` probes per estimate, ``sigma=0.001`` (times ``hi - lo``), momentum 0.9;
the step ``alpha`` defaults to ``eps / 4``: the paper's fixed rate suits 299 x 299 images,
not small inputs. ``max_queries=10_000`` per point.

Queries: one for the starting point, then ``samples + 1`` per iteration (the probes and the
new iterate); a point whose remaining budget cannot pay a whole iteration stops, and a
fooled point is never queried again.

Example:
    >>> res = NESAttack(max_queries=2000)(oracle, x, y, eps=0.2, generator=g)  # doctest: +SKIP
    >>> res.success_rate, res.median_queries                                    # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dlsec.attacks.blackbox._base import (
    BlackBoxAttack,
    BlackBoxResult,
    _affordable,
    _margin,
    _result,
)
from dlsec.attacks.core import AttackError, Norm, project, step_direction
from dlsec.attacks.registry import register_attack
from dlsec.threat import Oracle


def nes_gradient(oracle: Oracle, x: Tensor, y: Tensor, *, samples: int, sigma: float, ids: Tensor,
                 generator: torch.Generator | None = None) -> Tensor:
    """NES estimate of the margin loss's input gradient at each row of ``x``.

    ``samples`` probes per row (antithetic pairs ``x +- sigma u``, ``u ~ N(0, I)``, clipped
    to the oracle's bounds) are sent in one oracle call, ``samples`` queries per row.
    """
    m, half = x.shape[0], samples // 2
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    u = torch.randn((m, half, *x.shape[1:]), generator=generator, device=gen_dev)
    u = u.to(x.device, x.dtype)
    lo, hi = oracle.bounds
    probes = torch.cat([x.unsqueeze(1) + sigma * u, x.unsqueeze(1) - sigma * u], 1)
    probes = probes.clamp(lo, hi).flatten(0, 1)  # m * samples rows, point-major
    scores = oracle.query(probes, ids=ids.repeat_interleave(samples)).to(x.device)
    f = _margin(scores, y.repeat_interleave(samples)).view(m, 2, half)
    diff = (f[:, 0] - f[:, 1]).view(m, half, *([1] * (x.dim() - 1)))
    return (diff * u).sum(1) / (samples * sigma)


@register_attack("nes")
@dataclass
class NESAttack(BlackBoxAttack):
    """PGD on NES gradient estimates from oracle scores (see the module docstring); ``eps``
    (at call time) is the radius of the ball in ``norm``."""

    norm: Norm = "linf"
    max_queries: int = 10_000
    samples: int = 50
    sigma: float = 0.001
    alpha: float | None = None
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise AttackError(f"NESAttack supports the linf and l2 norms, got {self.norm!r}")
        if self.max_queries < 1:
            raise AttackError(f"max_queries must be >= 1, got {self.max_queries}")
        if self.samples < 2 or self.samples % 2:
            raise AttackError(f"samples must be even and >= 2, got {self.samples}")
        if not self.sigma > 0 or not 0 <= self.momentum < 1:
            raise AttackError("sigma must be > 0 and momentum in [0, 1)")

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, eps: float | None, ids: Tensor,
             generator: torch.Generator | None, **options: object) -> BlackBoxResult:
        assert eps is not None  # score-based: BlackBoxAttack checked it
        dev = x.device
        lo, hi = oracle.bounds
        n = x.shape[0]
        sigma = self.sigma * (hi - lo)
        alpha = eps / 4 if self.alpha is None else self.alpha
        queries = torch.zeros(n, dtype=torch.int64, device=dev)
        fooled = torch.zeros(n, dtype=torch.bool, device=dev)
        x_adv = x.clone()
        grad = torch.zeros_like(x)
        rows = _affordable(oracle, torch.arange(n, device=dev))
        if rows.numel():
            fooled[rows] = oracle.query_labels(x[rows], ids=ids[rows.cpu()]).to(dev) != y[rows]
            queries[rows] += 1
        cost = self.samples + 1
        while eps > 0:
            ready = ~fooled & (queries > 0) & (queries + cost <= self.max_queries)
            rows = torch.nonzero(ready).flatten()
            left = oracle.remaining
            if left is not None:
                rows = rows[: max(int(left), 0) // cost]
            if rows.numel() == 0:
                break
            xr = x_adv[rows]
            est = nes_gradient(oracle, xr, y[rows], samples=self.samples, sigma=sigma,
                               ids=ids[rows.cpu()], generator=generator)
            g = self.momentum * grad[rows] + (1 - self.momentum) * est
            grad[rows] = g
            xo = x[rows]
            delta = project(xr - alpha * step_direction(g, self.norm) - xo, self.norm, eps)
            x_new = (xo + delta).clamp(lo, hi)
            x_adv[rows] = x_new
            out = oracle.query_labels(x_new, ids=ids[rows.cpu()]).to(dev)
            queries[rows] += cost
            fooled[rows] = out != y[rows]
        return _result(x, x_adv, fooled, queries)
