"""What the decision-based attacks (HopSkipJump, Boundary) share: label queries charged
per point and cut to every budget, bisection towards the boundary, starting points, and
input checks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dlsec.attacks.blackbox._base import BlackBoxResult, _result
from dlsec.attacks.core import AttackError
from dlsec.threat import Oracle

_INIT_TOL = 1e-3  # the reference's tolerance for the blend bisection of the start


def _rows_per_call(batch_size: int | None, d: int) -> int:
    """Rows per oracle call: ``batch_size``, or about 2^18 input values (larger calls do not
    run faster: a convolutional model is quickest on a few hundred rows at a time on CPU)."""
    return batch_size if batch_size is not None else max(1, (1 << 18) // max(d, 1))


class _LabelQueries:
    """Lock-step label queries for ``N`` points: the decision ``phi``, exact per-point
    counts, the per-point cap ``max_queries`` and the oracle's global budget.

    Callers ask for a point only when it has budget left (:meth:`left`) and let
    :meth:`afford` cut a round to what the global budget pays for; once a round was cut,
    :attr:`exhausted` is set and the attack winds down.
    """

    def __init__(self, oracle: Oracle, x: Tensor, y: Tensor, ids: Tensor, *, max_queries: int,
                 target: Tensor | None, rows_per_call: int) -> None:
        self.oracle, self.ids, self.max_queries = oracle, ids, max_queries
        self.y, self.target, self.rows_per_call = y, target, rows_per_call
        self.queries = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        self.exhausted = False

    def left(self, rows: Tensor) -> Tensor:
        """Queries each of ``rows`` (point indices) may still spend."""
        return self.max_queries - self.queries[rows]

    def afford(self, counts: Tensor) -> int:
        """How many leading points of a round (asking ``counts`` rows each) the global
        budget pays for; a cut round marks the oracle exhausted."""
        left = self.oracle.remaining
        if left is None:
            return counts.numel()
        k = int((counts.cumsum(0) <= max(int(left), 0)).sum())
        if k < counts.numel():
            self.exhausted = True
        return k

    def ask(self, owner: Tensor, cand: Tensor) -> Tensor:
        """``phi`` of each row of ``cand`` (row ``j`` belongs to point ``owner[j]``): is it
        adversarial (misclassified, or the target class when targeted)?"""
        out = []
        for i in range(0, cand.shape[0], self.rows_per_call):
            own = owner[i : i + self.rows_per_call]
            out.append(self.oracle.query_labels(
                cand[i : i + self.rows_per_call], ids=self.ids[own.cpu()]).to(own.device))
        labels = torch.cat(out) if out else owner.new_zeros(0)
        self.queries += torch.bincount(owner, minlength=self.queries.numel())
        if self.target is not None:
            return labels == self.target[owner]
        return labels != self.y[owner]


def _bisect(q: _LabelQueries, rows: Tensor, lows: Tensor, highs: Tensor, tol: Tensor | float,
            project: Callable[[Tensor, Tensor], Tensor], adv: Tensor) -> Tensor:
    """Lock-step bisection of a parameter ``a`` in ``[lows, highs]`` per point of ``rows``
    (``project(sub, a)`` gives the inputs for ``rows[sub]``; ``a = highs`` is adversarial
    and ``adv`` holds that point), one oracle call per round, until ``highs - lows <= tol``
    or the point's budget ends. Returns the adversarial point at the final ``highs``
    (exactly a queried input, so it is adversarial by construction). It continues while
    the global budget pays for some points of a round."""
    tol = torch.as_tensor(tol, dtype=highs.dtype, device=highs.device).expand_as(highs)
    adv = adv.clone()
    while True:
        mids = (lows + highs) / 2
        room = (mids > lows) & (mids < highs)  # a bisection that can still make progress
        sub = torch.nonzero((highs - lows > tol) & room & (q.left(rows) > 0)).flatten()
        sub = sub[: q.afford(torch.ones_like(sub))]
        if sub.numel() == 0:
            break
        mids = mids[sub]
        cand = project(sub, mids)
        ok = q.ask(rows[sub], cand)
        highs[sub] = torch.where(ok, mids, highs[sub])
        lows[sub] = torch.where(ok, lows[sub], mids)
        adv[sub[ok]] = cand[ok]
    return adv


def _blend(x: Tensor, far: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """``(1 - a) x + a far`` for the rows ``sub`` (the L2 projection of HSJA)."""

    def project(sub: Tensor, a: Tensor) -> Tensor:
        a = a.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return (1 - a) * x[sub] + a * far[sub]

    return project


def _starting_points(q: _LabelQueries, x: Tensor, *, x_init: Tensor | None, tries: int,
                     bounds: tuple[float, float], generator: torch.Generator | None
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Adversarial starting points: ``(start, ok, clean)``.

    One query on ``x`` (``clean``: already adversarial, start = ``x``); then ``x_init``
    (one query) or uniform noise in ``bounds`` (up to ``tries`` draws, one query each) for
    the others; then a bisection on the blend towards ``x`` to tolerance 0.001. ``ok``:
    a start was found (``start = x`` where not).
    """
    n, dev = x.shape[0], x.device
    lo, hi = bounds
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    start = x.clone()
    ok = torch.zeros(n, dtype=torch.bool, device=dev)
    clean = torch.zeros(n, dtype=torch.bool, device=dev)

    def round_of(want: Tensor) -> Tensor:
        rows = torch.nonzero(want & (q.left(torch.arange(n, device=dev)) > 0)).flatten()
        return rows[: q.afford(torch.ones_like(rows))]

    rows = round_of(torch.ones(n, dtype=torch.bool, device=dev))
    if rows.numel():
        clean[rows] = q.ask(rows, x[rows])
        ok |= clean
    far = x.clone()
    if x_init is not None:
        rows = round_of(~ok)
        if rows.numel():
            hit = q.ask(rows, x_init[rows])
            far[rows[hit]] = x_init[rows[hit]]
            ok[rows[hit]] = True
    for _ in range(tries):
        rows = round_of(~ok)
        if rows.numel() == 0:
            break
        noise = torch.rand((rows.numel(), *x.shape[1:]), generator=generator, device=gen_dev)
        noise = (lo + (hi - lo) * noise).to(dev, x.dtype)
        hit = q.ask(rows, noise)
        far[rows[hit]] = noise[hit]
        ok[rows[hit]] = True
    rows = torch.nonzero(ok & ~clean).flatten()
    if rows.numel():
        m = rows.numel()
        lows = torch.zeros(m, dtype=torch.float64, device=dev)
        highs = torch.ones(m, dtype=torch.float64, device=dev)
        start[rows] = _bisect(q, rows, lows, highs, _INIT_TOL,
                              _blend(x[rows], far[rows]), far[rows])
    return start, ok, clean


def _start(oracle: Oracle, x: Tensor, y: Tensor, ids: Tensor, *, target: Tensor | None,
           x_init: Tensor | None, max_queries: int, init_tries: int, batch_size: int | None,
           generator: torch.Generator | None) -> tuple[_LabelQueries, Tensor, Tensor, Tensor]:
    """Check a decision-based attack's inputs, set up its label queries and find its
    starting points: ``(q, start, ok, clean)`` (see :func:`_starting_points`)."""
    if y.dim() != 1:
        raise AttackError(f"y must be a vector of N labels, got shape {tuple(y.shape)}")
    if tuple(x.shape[1:]) != tuple(oracle.input_shape):
        raise AttackError(f"inputs of shape {tuple(x.shape[1:])} do not match the oracle's "
                          f"{tuple(oracle.input_shape)}")
    if target is not None and tuple(target.shape) != tuple(y.shape):
        raise AttackError(f"target must have the shape of y {tuple(y.shape)}")
    if x_init is not None and tuple(x_init.shape) != tuple(x.shape):
        raise AttackError(f"x_init must have the shape of x {tuple(x.shape)}")
    d = x[0].numel() if x.shape[0] else 1
    q = _LabelQueries(oracle, x, y, ids, max_queries=max_queries,
                      target=None if target is None else target.to(x.device),
                      rows_per_call=_rows_per_call(batch_size, d))
    x_init = None if x_init is None else x_init.to(x.device, x.dtype)
    return q, *_starting_points(q, x, x_init=x_init, tries=init_tries, bounds=oracle.bounds,
                                generator=generator)


def _finish(q: _LabelQueries, x: Tensor, best: Tensor, ok: Tensor, trace_q: list[Tensor],
            trace_d: list[Tensor]) -> BlackBoxResult:
    """The result: the closest adversarial where a start was found (``x`` elsewhere)."""
    x_adv = torch.where(ok.view(-1, *([1] * (x.dim() - 1))), best, x)
    return _result(x, x_adv, ok, q.queries, trace_queries=torch.stack(trace_q),
                   trace_dist=torch.stack(trace_d))
