"""HopSkipJumpAttack (Chen, Jordan & Wainwright 2020, "HopSkipJumpAttack: A Query-Efficient
Decision-Based Attack"), L2 and Linf.

Threat model: black-box, decision-based: the attack sees only the oracle's predicted label
(:meth:`Oracle.query_labels`, so a ``label`` oracle is enough); untargeted by default, or
targeted (``target=``, best with ``x_init`` points of the target class); the oracle's
input bounds. It is a minimum-norm attack: it starts from a misclassified point and walks
along the decision boundary towards ``x``.

Algorithm (per point, all points advanced in lock-step, see below):

1. Start: one query on ``x`` itself (a point already misclassified is returned as is, at
   distance 0); then ``x_init`` if given, else uniform noise in the bounds, redrawn up to
   ``init_tries`` times until it is misclassified; a bisection on the blend
   ``(1 - a) x + a x_0`` (tolerance 0.001) brings it close to ``x``.
2. Bisection to the boundary between ``x`` and the current point, to tolerance ``theta``
   (``gamma / d^{3/2}`` for L2, ``gamma / d^2`` for Linf, ``d`` the input size). L2 bisects
   the blend weight; Linf bisects the radius ``a`` of ``clip(x', x - a, x + a)``, with
   tolerance ``min(theta * dist, theta)``.
3. Gradient-direction estimate at the boundary point ``x_t`` from ``n_t`` label queries at
   ``x_t + delta u_b`` (``u_b`` uniform on the sphere for L2; uniform in the cube then
   normalized for Linf): ``sum_b (phi_b - mean phi) u_b`` with ``phi = +-1`` (adversarial or
   not; the mean is subtracted only when the answers differ). ``n_t = init_evals sqrt(t)``
   capped at ``max_evals``; ``delta = 0.1 (hi - lo)`` at ``t = 1``, then ``sqrt(d) theta
   dist`` (L2) or ``d theta dist`` (Linf), ``dist`` the distance after the last update.
4. Geometric step-size search: ``eps_t = dist / sqrt(t)``, halved until ``x_t + eps_t v``
   (``v`` the normalized estimate for L2, its sign for Linf) is adversarial; then step 2.

Defaults are the paper's. ``eps`` (at call time) stops a point once its distance is
``<= eps``, which saves queries when only success at that radius matters.

Queries and batching: every model call goes through ``oracle.query_labels`` with ``ids``.
Each phase (start, every bisection round, each step-size try, the gradient probes of all
points flattened into rows) is one oracle call for every point still in it (split into
calls of ``batch_size`` rows). A point's probe batch is cut so that the step and the
bisection still fit in its budget, and it stops once they no longer do; the oracle's
global budget stops the attack cleanly instead of raising
:class:`dlsec.threat.BudgetExhausted`. The result keeps the closest adversarial found
(``x_adv = x`` where the start failed) and the trace (see :class:`BlackBoxResult`).

Example:
    >>> oracle = LocalOracle(model, card=card, output="label")          # doctest: +SKIP
    >>> res = HopSkipJump(norm="l2", max_queries=5000)(oracle, x, y,    # doctest: +SKIP
    ...                                                generator=torch.Generator().manual_seed(0))
    >>> sweep = HopSkipJump(max_queries=5000)(oracle, x, y, eps=[0.5, 1.0])  # doctest: +SKIP
    >>> res.l2[res.success].median(), res.success_at([1000, 5000], eps=1.0)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dlsec.attacks.blackbox._base import BlackBoxAttack, BlackBoxResult
from dlsec.attacks.blackbox._decision import _bisect, _blend, _finish, _LabelQueries, _start
from dlsec.attacks.core import AttackError, lp_norms
from dlsec.attacks.registry import register_attack
from dlsec.threat import Oracle

_MAX_HALVINGS = 40  # step-size halvings before an iteration gives up (float32 stalls first)


@register_attack("hsja")
@dataclass
class HopSkipJump(BlackBoxAttack):
    """Decision-based HopSkipJumpAttack, L2 or Linf (see the module docstring).

    Args:
        norm: ``"l2"`` or ``"linf"``: the distance minimized (default ``"l2"``).
        max_queries: label queries per point, all phases included (default 5,000).
        init_evals: gradient-estimation probes at iteration 1 (default 100, the paper's).
        max_evals: cap on the probes per iteration (default 10,000).
        gamma: sets the bisection tolerance ``theta`` (default 1.0).
        init_tries: uniform-noise draws tried per point to find a start (default 100).
        max_iter: iterations at most (default ``None``: until the query budget ends).
        batch_size: rows per oracle call (default: about 2^18 input values per call).
    """

    kind = "decision"
    norm: Literal["l2", "linf"] = "l2"
    max_queries: int = 5_000
    init_evals: int = 100
    max_evals: int = 10_000
    gamma: float = 1.0
    init_tries: int = 100
    max_iter: int | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.norm not in ("l2", "linf"):
            raise AttackError(f"HopSkipJump supports the l2 and linf norms, got {self.norm!r}")
        if self.max_queries < 1:
            raise AttackError(f"max_queries must be >= 1, got {self.max_queries}")
        if self.init_evals < 1 or self.max_evals < self.init_evals:
            raise AttackError("init_evals must be >= 1 and max_evals >= init_evals")
        if not math.isfinite(self.gamma) or self.gamma <= 0:
            raise AttackError(f"gamma must be finite and > 0, got {self.gamma}")
        if self.init_tries < 0 or (self.max_iter is not None and self.max_iter < 0):
            raise AttackError("init_tries and max_iter must be >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise AttackError(f"batch_size must be >= 1, got {self.batch_size}")

    def _run(  # type: ignore[override]  # the options a decision-based attack takes
        self, oracle: Oracle, x: Tensor, y: Tensor, eps: float | None, ids: Tensor,
        generator: torch.Generator | None, *, target: Tensor | None = None,
        x_init: Tensor | None = None,
    ) -> BlackBoxResult:
        """Attack ``(x, y)`` through ``oracle`` (labels only): ``target`` (``N`` class
        indices) makes the attack targeted; ``x_init`` (like ``x``) are candidate starting
        points, used where the oracle finds them adversarial (uniform noise elsewhere)."""
        q, start, ok, clean = _start(oracle, x, y, ids, target=target, x_init=x_init,
                                     max_queries=self.max_queries, init_tries=self.init_tries,
                                     batch_size=self.batch_size, generator=generator)
        dev, dt = x.device, x.dtype
        n = x.shape[0]
        d = x[0].numel() if n else 1
        lo, hi = oracle.bounds
        gen_dev = generator.device if generator is not None else torch.device("cpu")
        linf = self.norm == "linf"
        theta = self.gamma / d**2 if linf else self.gamma / d**1.5
        view = (-1, *([1] * (x.dim() - 1)))

        def dist_of(z: Tensor, rows: Tensor) -> Tensor:
            return lp_norms(z - x[rows], self.norm)

        def to_boundary(rows: Tensor, far: Tensor) -> Tensor:
            """Step 2: bisection between ``x[rows]`` and the adversarial ``far``."""
            m = rows.numel()
            lows = torch.zeros(m, dtype=torch.float64, device=dev)
            if not linf:
                highs = torch.ones(m, dtype=torch.float64, device=dev)
                return _bisect(q, rows, lows, highs, theta, _blend(x[rows], far), far)
            highs = dist_of(far, rows).double()
            tol = torch.clamp(highs * theta, max=theta)
            xr = x[rows]

            def clip(sub: Tensor, a: Tensor) -> Tensor:
                a = a.to(dt).view(view)
                return torch.minimum(torch.maximum(far[sub], xr[sub] - a), xr[sub] + a)

            return _bisect(q, rows, lows, highs, tol, clip, far)

        cur = start.clone()
        rows = torch.nonzero(ok & ~clean).flatten()
        dist_post = torch.zeros(n, dtype=torch.float64, device=dev)  # after the last step
        if rows.numel():
            dist_post[rows] = dist_of(start[rows], rows).double()
            cur[rows] = to_boundary(rows, start[rows])
        dist = lp_norms(cur - x, self.norm)
        inf = torch.full_like(dist, math.inf)
        best, best_dist = cur.clone(), torch.where(ok, dist, inf)
        trace_q, trace_d = [q.queries.clone()], [best_dist.clone()]
        n_bisect = math.ceil(math.log2(1 / theta))

        t = 0
        while self.max_iter is None or t < self.max_iter:
            t += 1
            live = ok & ~clean
            if eps is not None:
                live &= best_dist > eps
            rows = torch.nonzero(live).flatten()
            if q.exhausted or rows.numel() == 0:
                break
            # -- gradient-direction estimate at the boundary point --------------------------
            evals = min(int(self.init_evals * math.sqrt(t)), self.max_evals)
            reserve: int | Tensor = 1 + n_bisect
            if linf:  # the Linf bisection runs on the radius: log2(dist / tol) rounds
                ratio = (dist[rows].double() / theta).clamp_min(1 / theta)
                reserve = 1 + torch.ceil(torch.log2(ratio)).to(torch.int64)
            counts = torch.clamp(q.left(rows) - reserve, max=evals)
            keep = counts >= 1
            rows, counts = rows[keep], counts[keep]
            k = q.afford(counts)
            rows, counts = rows[:k], counts[:k]
            if rows.numel() == 0:
                break
            if t == 1:
                delta = torch.full((rows.numel(),), 0.1 * (hi - lo), dtype=dt, device=dev)
            else:
                delta = ((d if linf else math.sqrt(d)) * theta * dist_post[rows]).to(dt)
            grad = self._estimate(q, x, cur, rows, counts, delta, (lo, hi), generator, gen_dev)
            gnorm = grad.flatten(1).norm(dim=1)
            sel = gnorm > 0
            rows, grad, gnorm = rows[sel], grad[sel], gnorm[sel]
            update = grad.sign() if linf else grad / gnorm.view(view)
            # -- geometric step-size search, then back to the boundary ----------------------
            step = (dist[rows].double() / math.sqrt(t)).to(dt)
            searching = torch.ones(rows.numel(), dtype=torch.bool, device=dev)
            moved = torch.zeros_like(searching)
            far = cur[rows].clone()
            for _ in range(_MAX_HALVINGS):
                sub = torch.nonzero(searching & (q.left(rows) > 0)).flatten()
                sub = sub[: q.afford(torch.ones_like(sub))]
                if sub.numel() == 0:
                    break
                cand = (cur[rows[sub]] + step[sub].view(view) * update[sub]).clamp(lo, hi)
                hit = q.ask(rows[sub], cand)
                far[sub[hit]] = cand[hit]
                moved[sub[hit]] = True
                searching[sub[hit]] = False
                step[sub[~hit]] /= 2
            rows, far = rows[moved], far[moved]
            if rows.numel():
                dist_post[rows] = dist_of(far, rows).double()
                cur[rows] = to_boundary(rows, far)
                dist[rows] = dist_of(cur[rows], rows)
                better = rows[dist[rows] < best_dist[rows]]
                best[better], best_dist[better] = cur[better], dist[better]
            trace_q.append(q.queries.clone())
            trace_d.append(best_dist.clone())

        return _finish(q, x, best, ok, trace_q, trace_d)

    def _estimate(self, q: _LabelQueries, x: Tensor, cur: Tensor, rows: Tensor, counts: Tensor,
                  delta: Tensor, bounds: tuple[float, float], generator: torch.Generator | None,
                  gen_dev: torch.device) -> Tensor:
        """Step 3: the (unnormalized) gradient-direction estimate at ``cur[rows]`` from
        ``counts[i]`` probes of radius ``delta[i]`` each, all points' probes as one flat
        batch of rows (``q.rows_per_call`` rows per oracle call)."""
        dev, dt = x.device, x.dtype
        m, shape = rows.numel(), x.shape[1:]
        local = torch.repeat_interleave(torch.arange(m, device=dev), counts)
        s_fu = torch.zeros((m, *shape), dtype=dt, device=dev)  # sum of phi * u
        s_u = torch.zeros_like(s_fu)  # sum of u
        s_f = torch.zeros(m, dtype=dt, device=dev)  # sum of phi
        view = (-1, *([1] * len(shape)))
        for i in range(0, local.numel(), q.rows_per_call):
            own = local[i : i + q.rows_per_call]
            size = (own.numel(), *shape)
            if self.norm == "l2":
                u = torch.randn(size, generator=generator, device=gen_dev)
            else:
                u = 2 * torch.rand(size, generator=generator, device=gen_dev) - 1
            u = u.to(dev, dt)
            u = u / u.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
            probe = (cur[rows[own]] + delta[own].view(view) * u).clamp(*bounds)
            u = (probe - cur[rows[own]]) / delta[own].view(view)
            phi = q.ask(rows[own], probe).to(dt) * 2 - 1
            s_fu.index_add_(0, own, phi.view(view) * u)
            s_u.index_add_(0, own, u)
            s_f.index_add_(0, own, phi)
        mean_f = s_f / counts.to(dt)
        # baseline subtraction only when the answers differ (all equal: +-mean u)
        mixed = (mean_f.abs() < 1).view(view)
        return torch.where(mixed, s_fu - mean_f.view(view) * s_u, s_fu)
