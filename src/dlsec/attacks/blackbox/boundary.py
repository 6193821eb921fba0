"""The Boundary Attack (Brendel, Rauber & Bethge 2018, "Decision-Based Adversarial Attacks:
Reliable Attacks Against Black-Box Machine Learning Models"), L2.

Threat model: black-box, decision-based (the oracle's predicted label only; a ``label``
oracle is enough), untargeted by default (targeted with ``target=`` and ``x_init``), the
oracle's input bounds; a minimum-norm attack that starts from a misclassified point and
walks along the decision boundary towards ``x``.

Start: as :class:`~dlsec.attacks.blackbox.hsja.HopSkipJump` (one query on ``x``; then
``x_init`` or up to ``init_tries`` uniform-noise draws; a bisection on the blend towards
``x``). Each step, for the current adversarial ``x'`` at distance ``r = ||x' - x||``:

1. orthogonal (spherical) step: a Gaussian direction, made orthogonal to ``x' - x`` and
   scaled to ``spherical_step * r``, added and projected back onto the sphere of radius
   ``r`` around ``x`` (Pythagoras), clipped to the bounds;
2. source step: a step of ``source_step * r`` from there towards ``x``, clipped;
3. the candidate is kept if it is adversarial and closer.

Step-size adaptation (the reference's, as in Foolbox 3): every ``update_stats_every_k``
steps the spherical candidate is queried too; over the last 100 such checks, a spherical
success rate above 0.5 multiplies both steps by ``step_adaptation`` and one below 0.2
divides them; over the last 30 checks, a candidate success rate above 0.25 multiplies the
source step and one below 0.1 divides it (a history is cleared once it acted on). A point
whose source step falls below ``source_step_convergence`` has converged and stops.
``candidates`` proposals per step (default 1, as Foolbox 3) are queried together and the
closest adversarial kept; the candidate success rate is then their mean.

Defaults are the paper's / Foolbox's. ``eps`` and the queries, batching, result and
trace are as for :class:`~dlsec.attacks.blackbox.hsja.HopSkipJump`: one oracle call per
step for every point still active (its candidates, plus its spherical check on check
steps); a point's proposals are cut to the queries it has left.

Example:
    >>> oracle = LocalOracle(model, card=card, output="label")        # doctest: +SKIP
    >>> res = BoundaryAttack(max_queries=2000)(oracle, x, y,          # doctest: +SKIP
    ...                                        generator=torch.Generator().manual_seed(0))
    >>> res.l2.median()                                                # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dlsec.attacks.blackbox._base import BlackBoxAttack, BlackBoxResult
from dlsec.attacks.blackbox._decision import _finish, _start
from dlsec.attacks.core import AttackError
from dlsec.attacks.registry import register_attack
from dlsec.threat import Oracle

_SPHERICAL_HISTORY = 100
_STEP_HISTORY = 30


class _History:
    """Per-point rolling windows of success indicators (``nan`` = no entry yet)."""

    def __init__(self, size: int, n: int, device: torch.device) -> None:
        self.data = torch.full((size, n), math.nan, dtype=torch.float64, device=device)
        self.pos = torch.zeros(n, dtype=torch.int64, device=device)

    def append(self, rows: Tensor, value: Tensor) -> None:
        self.data[self.pos[rows], rows] = value.double()
        self.pos[rows] = (self.pos[rows] + 1) % self.data.shape[0]

    def full(self, rows: Tensor) -> Tensor:
        return ~self.data[:, rows].isnan().any(0)

    def mean(self, rows: Tensor) -> Tensor:
        return self.data[:, rows].nanmean(0)

    def clear(self, rows: Tensor) -> None:
        self.data[:, rows] = math.nan


@register_attack("boundary")
@dataclass
class BoundaryAttack(BlackBoxAttack):
    """The decision-based Boundary Attack, L2 (see the module docstring).

    Args:
        max_queries: label queries per point, the start included (default 5,000).
        spherical_step: initial orthogonal step, relative to the distance (default 0.01).
        source_step: initial step towards ``x``, relative to the distance (default 0.01).
        step_adaptation: factor the step sizes are multiplied or divided by (default 1.5).
        candidates: proposals queried per step and point (default 1).
        update_stats_every_k: steps between spherical checks / adaptations (default 10).
        source_step_convergence: a point stops once its source step is below (1e-7).
        init_tries: uniform-noise draws tried per point to find a start (default 100).
        batch_size: rows per oracle call (default: about 2^18 input values per call).
    """

    kind = "decision"
    max_queries: int = 5_000
    spherical_step: float = 0.01
    source_step: float = 0.01
    step_adaptation: float = 1.5
    candidates: int = 1
    update_stats_every_k: int = 10
    source_step_convergence: float = 1e-7
    init_tries: int = 100
    batch_size: int | None = None
    norm: Literal["l2"] = "l2"

    def __post_init__(self) -> None:
        if self.norm != "l2":
            raise AttackError(f"BoundaryAttack implements the l2 norm only, got {self.norm!r}")
        if self.max_queries < 1:
            raise AttackError(f"max_queries must be >= 1, got {self.max_queries}")
        steps = (self.spherical_step, self.source_step, self.source_step_convergence)
        if any(not math.isfinite(s) or s <= 0 for s in steps):
            raise AttackError("spherical_step, source_step and their convergence must be > 0")
        if not math.isfinite(self.step_adaptation) or self.step_adaptation <= 1:
            raise AttackError(f"step_adaptation must be > 1, got {self.step_adaptation}")
        if self.candidates < 1 or self.update_stats_every_k < 1 or self.init_tries < 0:
            raise AttackError("candidates and update_stats_every_k must be >= 1, "
                              "init_tries >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise AttackError(f"batch_size must be >= 1, got {self.batch_size}")

    def _run(  # type: ignore[override]  # the options a decision-based attack takes
        self, oracle: Oracle, x: Tensor, y: Tensor, eps: float | None, ids: Tensor,
        generator: torch.Generator | None, *, target: Tensor | None = None,
        x_init: Tensor | None = None,
    ) -> BlackBoxResult:
        """Attack ``(x, y)`` through ``oracle`` (labels only); the arguments are those of
        :meth:`HopSkipJump._run <dlsec.attacks.blackbox.hsja.HopSkipJump._run>`."""
        q, best, ok, clean = _start(oracle, x, y, ids, target=target, x_init=x_init,
                                    max_queries=self.max_queries, init_tries=self.init_tries,
                                    batch_size=self.batch_size, generator=generator)
        dev, n = x.device, x.shape[0]
        lo, hi = oracle.bounds
        gen_dev = generator.device if generator is not None else torch.device("cpu")
        flat_x = x.flatten(1)
        dist = (best - x).flatten(1).norm(dim=1)
        dist = torch.where(ok, dist, torch.full_like(dist, math.inf))
        trace_q, trace_d = [q.queries.clone()], [dist.clone()]
        sph = torch.full((n,), self.spherical_step, dtype=torch.float64, device=dev)
        src = torch.full((n,), self.source_step, dtype=torch.float64, device=dev)
        hist_sph = _History(_SPHERICAL_HISTORY, n, dev)
        hist_step = _History(_STEP_HISTORY, n, dev)
        f, k = self.step_adaptation, self.candidates
        step = 0
        while not q.exhausted:
            step += 1
            live = ok & ~clean & (src >= self.source_step_convergence)
            if eps is not None:
                live &= dist > eps
            rows = torch.nonzero(live & (q.left(torch.arange(n, device=dev)) > 0)).flatten()
            if rows.numel() == 0:
                break
            left = q.left(rows)
            n_cand = left.clamp(max=k)
            check = step % self.update_stats_every_k == 0
            n_sph = ((left > n_cand) & check).to(torch.int64)
            m = q.afford(n_cand + n_sph)
            rows, n_cand, n_sph = rows[:m], n_cand[:m], n_sph[:m]
            if m == 0:
                break
            cand, sph_cand = self._proposals(flat_x[rows], best[rows].flatten(1), sph[rows],
                                             src[rows], (lo, hi), generator, gen_dev)
            valid = torch.arange(k, device=dev).view(1, k) < n_cand.view(m, 1)  # m x k
            owner = torch.arange(m, device=dev).view(m, 1).expand(m, k)[valid]
            checked = torch.nonzero(n_sph > 0).flatten()
            queried = torch.cat([cand[valid], sph_cand[checked]])
            hit = q.ask(rows[torch.cat([owner, checked])], queried.view(-1, *x.shape[1:]))
            hit_cand = torch.zeros(m, k, dtype=torch.bool, device=dev)
            hit_cand[valid] = hit[: owner.numel()]
            # keep the closest adversarial candidate of each point when it is closer
            cd = (cand - flat_x[rows].unsqueeze(1)).norm(dim=2)
            cd = torch.where(hit_cand, cd, torch.full_like(cd, math.inf))
            cd_min, arg = cd.min(1)
            better = torch.nonzero(cd_min < dist[rows]).flatten()
            upd = rows[better]
            best[upd] = cand[better, arg[better]].view(-1, *x.shape[1:])
            dist[upd] = (best[upd] - x[upd]).flatten(1).norm(dim=1)
            if checked.numel():
                sph_hit = hit[owner.numel():]
                rc = rows[checked]
                rate = hit_cand[checked].double().sum(1) / n_cand[checked].double()
                hist_sph.append(rc, sph_hit)
                hist_step.append(rc, rate)
                self._adapt(rc, hist_sph, hist_step, sph, src, f)
            trace_q.append(q.queries.clone())
            trace_d.append(dist.clone())
        return _finish(q, x, best, ok, trace_q, trace_d)

    def _proposals(self, x: Tensor, adv: Tensor, sph: Tensor, src: Tensor,
                   bounds: tuple[float, float], generator: torch.Generator | None,
                   gen_dev: torch.device) -> tuple[Tensor, Tensor]:
        """``candidates`` proposals per point (flat ``m x d`` inputs): the candidates
        (``m x k x d``) and the spherical candidate of the first proposal (``m x d``)."""
        m, dim = x.shape
        k, dt = self.candidates, x.dtype
        src_dir = (x - adv).unsqueeze(1)  # m x 1 x d, towards x
        r = src_dir.norm(dim=2, keepdim=True)  # m x 1 x 1
        unit = src_dir / r
        eta = torch.randn((m, k, dim), generator=generator, device=gen_dev).to(x.device, dt)
        eta = eta - (eta * unit).sum(2, keepdim=True) * unit
        s_sph = sph.to(dt).view(m, 1, 1)
        eta = eta * (s_sph * r / eta.norm(dim=2, keepdim=True).clamp_min(1e-12))
        # onto the sphere of radius r around x: (eta - (x - adv)) has norm r sqrt(1 + s^2)
        sph_cand = (x.unsqueeze(1) + (eta - src_dir) / torch.sqrt(1 + s_sph**2)).clamp(*bounds)
        to_x = x.unsqueeze(1) - sph_cand
        r_new = to_x.norm(dim=2, keepdim=True)
        # a step of src * r towards x, corrected for the sphere's numerical deviation
        length = (src.to(dt).view(m, 1, 1) * r + r_new - r).clamp_min(0)
        cand = (sph_cand + length / r_new.clamp_min(1e-12) * to_x).clamp(*bounds)
        return cand, sph_cand[:, 0]

    @staticmethod
    def _adapt(rows: Tensor, hist_sph: _History, hist_step: _History, sph: Tensor, src: Tensor,
               f: float) -> None:
        """The reference's step-size adaptation for the points ``rows`` just checked."""
        full = hist_sph.full(rows)
        rate = hist_sph.mean(rows)
        up, down = full & (rate > 0.5), full & (rate < 0.2)
        scale = torch.where(up, f, torch.where(down, 1 / f, 1.0))
        sph[rows] *= scale
        src[rows] *= scale
        hist_sph.clear(rows[up | down])
        full = hist_step.full(rows)
        rate = hist_step.mean(rows)
        up, down = full & (rate > 0.25), full & (rate < 0.1)
        src[rows] *= torch.where(up, f, torch.where(down, 1 / f, 1.0))
        hist_step.clear(rows[up | down])
