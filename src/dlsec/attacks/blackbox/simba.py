"""SimBA, the Simple Black-box Attack (Guo, Gardner, You, Wilson & Weinberger 2019,
"Simple Black-box Adversarial Attacks"), pixel and DCT bases.

Threat model: black-box, score-based, untargeted; the oracle's input bounds.

Each iteration picks the next direction ``q`` of an orthonormal basis in a random order
(no direction twice) and tries ``x - eps q``: if the oracle's probability of the true
class drops, the step is kept; otherwise ``x + eps q`` is tried and kept if it drops.
Bases: ``"pixel"`` (the standard basis, a random order) or ``"dct"`` (2-D DCT-II basis
functions per channel, low frequencies first: a random order within the lowest
``freq_dims x freq_dims`` block, then each further band of ``stride`` frequencies in a
random order, as in the reference's block order). ``eps`` (at call time) is SimBA's step
along each direction, not a radius (the paper's pixel step is 0.2); ``max_queries=10_000``
per point. Once every direction is used the attack
makes another pass in the same order, from the point reached; it stops a point when a
whole pass (the last ``d`` directions) gained nothing, as a further pass would try the
same candidates again. Each L2 step is ``eps``, so the L2 norm is ``eps * sqrt(steps kept)`` (before
clipping to the bounds).

Queries: one for the starting point, then one per candidate tried; a point is never
queried once fooled, and a candidate that the input bounds clip back onto the current
point (a step down from a pixel already at the lower bound) is not sent.

Example:
    >>> res = SimBA(basis="dct")(oracle, x, y, eps=0.2, generator=g)   # doctest: +SKIP
    >>> res.success_rate, res.queries                                 # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dlsec.attacks.blackbox._base import BlackBoxAttack, BlackBoxResult, _affordable, _result
from dlsec.attacks.core import AttackError
from dlsec.attacks.registry import register_attack
from dlsec.threat import Oracle


def dct_matrix(n: int, *, device: torch.device | None = None) -> Tensor:
    """The orthonormal DCT-II matrix ``D`` (``n x n``): row ``k`` is basis function ``k``."""
    i = torch.arange(n, dtype=torch.float64, device=device)
    d = torch.cos(math.pi * (2 * i.view(1, -1) + 1) * i.view(-1, 1) / (2 * n))
    d[0] *= 1 / math.sqrt(2)
    return (d * math.sqrt(2 / n)).float()


def _dct_order(shape: tuple[int, int, int], init: int, stride: int, n: int, gen, gen_dev) -> Tensor:
    """Per-point orders of the ``c * h * w`` DCT coefficients (flat ``(c, u, v)`` indices):
    the ``init x init`` lowest frequencies of every channel first, then each further band
    of ``stride`` frequencies, in a random order within a band (channels mixed)."""
    c, h, w = shape
    u = torch.arange(h).view(-1, 1).expand(h, w)
    v = torch.arange(w).view(1, -1).expand(h, w)
    band = ((torch.maximum(u, v) - init) // stride + 1).clamp_min(0).flatten().repeat(c)
    key = band.to(torch.float64) + torch.rand(n, c * h * w, generator=gen, device=gen_dev).cpu()
    return key.argsort(1)


@register_attack("simba")
@dataclass
class SimBA(BlackBoxAttack):
    """SimBA with the pixel or DCT basis (see the module docstring); ``eps`` (at call time)
    is the step along each basis direction."""

    basis: Literal["pixel", "dct"] = "pixel"
    max_queries: int = 10_000
    freq_dims: int | None = None
    stride: int = 1

    def __post_init__(self) -> None:
        if self.basis not in ("pixel", "dct"):
            raise AttackError(f"basis must be pixel or dct, got {self.basis!r}")
        if self.max_queries < 1 or self.stride < 1:
            raise AttackError("max_queries and stride must be >= 1")

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, eps: float | None, ids: Tensor,
             generator: torch.Generator | None, **options: object) -> BlackBoxResult:
        if eps is None or eps <= 0:
            raise AttackError(f"SimBA's eps (its step) must be > 0, got {eps}")
        if self.basis == "dct" and x.dim() != 4:
            raise AttackError("the DCT basis needs image batches N x C x H x W")
        dev = x.device
        lo, hi = oracle.bounds
        n = x.shape[0]
        d = x[0].numel() if n else 0
        gen_dev = generator.device if generator is not None else torch.device("cpu")
        if self.basis == "pixel":
            order = torch.rand(n, d, generator=generator, device=gen_dev).argsort(1).to(dev)
        else:
            c, h, w = x.shape[1:]
            init = self.freq_dims or max(1, math.ceil(min(h, w) / 4))
            order = _dct_order((c, h, w), init, self.stride, n, generator, gen_dev).to(dev)
            dh, dw = dct_matrix(h, device=dev).to(x.dtype), dct_matrix(w, device=dev).to(x.dtype)

        def step(rows: Tensor, k: Tensor) -> Tensor:
            """``eps * q`` for each row's direction index ``k``."""
            flat = torch.zeros(rows.numel(), d, device=dev, dtype=x.dtype)
            flat[torch.arange(rows.numel(), device=dev), k] = eps
            q = flat.view(-1, *x.shape[1:])
            if self.basis == "dct":  # coefficients -> image: D_h^T Q D_w
                q = dh.t() @ q @ dw
            return q

        queries = torch.zeros(n, dtype=torch.int64, device=dev)
        used = torch.zeros(n, dtype=torch.int64, device=dev)  # directions tried
        gained = torch.zeros(n, dtype=torch.int64, device=dev)  # ``used`` at the last gain
        x_adv = x.clone()
        prob = torch.ones(n, device=dev)
        fooled = torch.zeros(n, dtype=torch.bool, device=dev)
        started = torch.zeros(n, dtype=torch.bool, device=dev)
        rows = _affordable(oracle, torch.arange(n, device=dev))
        if rows.numel():
            s = oracle.query(x[rows], ids=ids[rows.cpu()]).to(dev)
            prob[rows] = s.gather(1, y[rows].view(-1, 1)).squeeze(1).float()
            fooled[rows] = s.argmax(1) != y[rows]
            queries[rows] += 1
            started[rows] = True

        def attempt(rows: Tensor, cand: Tensor) -> Tensor:
            """Query ``cand`` for ``rows``; keep improvements; return which improved. A
            candidate the bounds clipped back onto the current point is not sent."""
            better = torch.zeros(rows.numel(), dtype=torch.bool, device=dev)
            moved = (cand != x_adv[rows]).flatten(1).any(1)
            rows, cand = rows[moved], cand[moved]
            if rows.numel() == 0:
                return better
            s = oracle.query(cand, ids=ids[rows.cpu()]).to(dev)
            queries[rows] += 1
            p = s.gather(1, y[rows].view(-1, 1)).squeeze(1).float()
            improved = p < prob[rows]
            keep = rows[improved]
            prob[keep] = p[improved]
            x_adv[keep] = cand[improved]
            fooled[keep] = s.argmax(1)[improved] != y[keep]
            better[moved] = improved
            return better

        while True:
            # another pass over the basis while the last d directions still gained something
            active = started & ~fooled & (queries < self.max_queries) & (used - gained < d)
            rows = _affordable(oracle, torch.nonzero(active).flatten())
            if rows.numel() == 0:
                break
            q = step(rows, order[rows, used[rows] % d])
            used[rows] += 1
            better = attempt(rows, (x_adv[rows] - q).clamp(lo, hi))
            second = ~better & (queries[rows] < self.max_queries)
            rest, rest_q = rows[second], q[second]
            left = oracle.remaining
            if left is not None:
                rest, rest_q = rest[: max(int(left), 0)], rest_q[: max(int(left), 0)]
            if rest.numel():
                second_better = attempt(rest, (x_adv[rest] + rest_q).clamp(lo, hi))
                gained[rest[second_better]] = used[rest[second_better]]
            gained[rows[better]] = used[rows[better]]
        return _result(x, x_adv, fooled, queries)
