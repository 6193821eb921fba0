"""What the black-box attacks share: the result type, oracle checks, the global-budget cut
and the score margin. The package face (``dlsec.attacks.blackbox``) re-exports the public part."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dlsec.attacks.core import AttackError
from dlsec.threat import Oracle


def median(t: Tensor) -> float:
    """The usual median of ``t``'s values: the middle one, or the mean of the two middle
    ones for an even count (``torch.median`` returns the lower of the two); ``nan`` when
    ``t`` is empty. Example: the median of 1, 2, 9, 10 is 5.5."""
    v = t.detach().flatten().double().sort().values
    k = v.numel()
    return float((v[(k - 1) // 2] + v[k // 2]) / 2) if k else float("nan")


@dataclass
class BlackBoxResult:
    """The outcome of a black-box attack on ``N`` points.

    ``x_adv``: the final inputs (the best found where the attack failed); ``success``: the
    oracle's label differs from ``y``; ``queries``: oracle queries spent on each point;
    ``linf`` / ``l2``: per-point perturbation norms of ``x_adv - x``.
    """

    x_adv: Tensor
    success: Tensor
    queries: Tensor
    linf: Tensor
    l2: Tensor
    trace_queries: Tensor | None = None
    trace_dist: Tensor | None = None

    def success_at(self, budgets: Sequence[int], *, eps: float | None = None) -> list[float]:
        """Success rate had the attack stopped after each of ``budgets`` queries per point.

        Score-based results: a point counts when it was fooled within the budget (a fooled
        point is never queried again, so its query count is the cost of its success).
        Decision-based results (with a trace, ``T x N``: queries spent and best distance
        after each iteration) need ``eps``: a point counts when the best adversarial found
        within the budget lies within ``eps`` (in the attack's norm).
        """
        out = []
        for b in budgets:
            if self.trace_queries is None or self.trace_dist is None:
                if eps is not None:
                    raise AttackError("eps applies to decision-based results only")
                ok = self.success & (self.queries <= b)
            else:
                if eps is None:
                    raise AttackError("a decision-based result needs eps for success_at")
                within = self.trace_queries <= b
                inf = torch.full_like(self.trace_dist, float("inf"))
                dist = torch.where(within, self.trace_dist, inf)
                ok = dist.amin(0) <= eps * (1 + 1e-6)
            out.append(float(ok.double().mean()) if ok.numel() else 0.0)
        return out

    @property
    def success_rate(self) -> float:
        return float(self.success.double().mean()) if self.success.numel() else 0.0

    @property
    def queries_total(self) -> int:
        return int(self.queries.sum())

    @property
    def median_queries(self) -> float:
        """Median queries over the successful points (the mean of the two middle counts
        for an even number of points; ``nan`` when none succeeded)."""
        return median(self.queries[self.success])

    @property
    def mean_queries(self) -> float:
        """Mean queries over the successful points (``nan`` when none succeeded)."""
        q = self.queries[self.success]
        return float(q.double().mean()) if q.numel() else float("nan")


def _result(
    x: Tensor,
    x_adv: Tensor,
    success: Tensor,
    queries: Tensor,
    *,
    trace_queries: Tensor | None = None,
    trace_dist: Tensor | None = None,
) -> BlackBoxResult:
    d = (x_adv - x).flatten(1)
    linf = d.abs().amax(1) if d.shape[1] else d.new_zeros(d.shape[0])
    return BlackBoxResult(x_adv, success, queries, linf, d.norm(p=2, dim=1),
                          trace_queries=trace_queries, trace_dist=trace_dist)


def _check_oracle(
    oracle: Oracle, x: Tensor, y: Tensor, ids: Tensor | None, *, scores: bool = True
) -> Tensor:
    """Validate the inputs and return the per-row sample ids (default ``0..N-1``).

    ``scores=True`` (score-based attacks) refuses an oracle that answers labels only.
    """
    if scores and oracle.output == "label":
        raise AttackError("a score-based attack needs an oracle with score outputs, not labels")
    if x.shape[0] != y.shape[0]:
        raise AttackError(f"got {x.shape[0]} inputs and {y.shape[0]} labels")
    if ids is None:
        return torch.arange(x.shape[0])
    ids = torch.as_tensor(ids, dtype=torch.int64).flatten().cpu()
    if ids.numel() != x.shape[0]:
        raise AttackError(f"got {ids.numel()} ids for {x.shape[0]} inputs")
    return ids


def _affordable(oracle: Oracle, rows: Tensor) -> Tensor:
    """The rows (indices) the oracle's global budget still pays for, in order."""
    left = oracle.remaining
    return rows if left is None else rows[: max(int(left), 0)]


def _margin(scores: Tensor, y: Tensor) -> Tensor:
    """Margin loss on scores: ``log s_y - max_{k != y} log s_k`` (<= 0 once fooled).

    On probabilities this equals the logit margin of the reference code.
    """
    logs = scores.float().clamp_min(torch.finfo(torch.float32).tiny).log()
    true = logs.gather(1, y.view(-1, 1)).squeeze(1)
    other = logs.scatter(1, y.view(-1, 1), float("-inf")).amax(1)
    return true - other
