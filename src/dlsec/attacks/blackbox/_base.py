"""What the black-box attacks share: the calling convention (:class:`BlackBoxAttack`), the
result types, oracle checks, the global-budget cut and the score margin. The package face
(``dlsec.attacks.blackbox``) re-exports the public part."""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, overload

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

    def at_eps(self, eps: float) -> BlackBoxResult:
        """A decision-based result read at radius ``eps``: ``success`` is "an adversarial
        within eps was found" (``x_adv``, the closest found, is then within eps); the
        queries, norms and trace stay those of the run."""
        if self.trace_dist is None:
            raise AttackError("at_eps applies to decision-based results (with a trace)")
        within = self.trace_dist.amin(0) <= eps * (1 + 1e-6)
        return BlackBoxResult(self.x_adv, self.success & within, self.queries, self.linf,
                              self.l2, self.trace_queries, self.trace_dist)

    def queries_to(self, eps: float) -> Tensor:
        """Per point, the queries a decision-based run had spent when its best adversarial
        first came within ``eps`` (``-1`` where it never did)."""
        if self.trace_dist is None or self.trace_queries is None:
            raise AttackError("queries_to applies to decision-based results (with a trace)")
        inside = self.trace_dist <= eps * (1 + 1e-6)  # T x N
        first = inside.to(torch.int64).argmax(0)
        spent = self.trace_queries.gather(0, first.view(1, -1)).squeeze(0)
        return torch.where(inside.any(0), spent, torch.full_like(spent, -1))

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


@dataclass
class BlackBoxSweep:
    """One black-box attack at several radii: ``results[i]`` is the outcome at ``eps[i]``
    (in the order asked). ``queries_total``: what the whole sweep cost the oracle (the sum
    of the runs for score-based attacks; the one run of a decision-based attack)."""

    eps: list[float]
    results: list[BlackBoxResult]
    queries_total: int

    @property
    def success_rate(self) -> list[float]:
        return [r.success_rate for r in self.results]

    def __getitem__(self, i: int) -> BlackBoxResult:
        return self.results[i]

    def __len__(self) -> int:
        return len(self.results)


AttackKind = Literal["score", "decision"]


class BlackBoxAttack(abc.ABC):
    """Base of the black-box evasion attacks: the object holds the algorithm's settings
    (``max_queries`` per point, ...), the call takes the oracle, the points and ``eps``.

    ``attack(oracle, x, y, *, eps, generator=None, ids=None)``: one ``eps`` gives a
    :class:`BlackBoxResult`; a sequence gives a :class:`BlackBoxSweep` from one call.

    * Score-based attacks (``kind = "score"``) run once per eps, in the order given, each
      run from the generator's state at the call (so ``sweep.results[i]`` equals a call
      with ``eps[i]`` alone). No point is skipped at a smaller eps: a random search at
      another radius is another search, so reusing a larger radius's outcome is not exact.
    * Decision-based attacks (``kind = "decision"``) are minimum-norm attacks: ``eps`` is
      the radius at which a point stops (``None``: never, a pure minimum-norm run; then
      ``success`` means an adversarial was found). A sequence runs ONCE, stopping points
      at the smallest eps, and reads every eps off the run's trace
      (:meth:`BlackBoxResult.at_eps`); with one eps or a list, ``success`` is "an
      adversarial within eps was found".
    """

    kind: ClassVar[AttackKind] = "score"
    max_queries: int

    @overload
    def __call__(self, oracle: Oracle, x: Tensor, y: Tensor, *, eps: float | None = ...,
                 generator: torch.Generator | None = ..., ids: Tensor | None = ...,
                 **options: Any) -> BlackBoxResult: ...

    @overload
    def __call__(self, oracle: Oracle, x: Tensor, y: Tensor, *, eps: Sequence[float],
                 generator: torch.Generator | None = ..., ids: Tensor | None = ...,
                 **options: Any) -> BlackBoxSweep: ...

    def __call__(self, oracle: Oracle, x: Tensor, y: Tensor, *,
                 eps: float | Sequence[float] | None = None,
                 generator: torch.Generator | None = None, ids: Tensor | None = None,
                 **options: Any) -> BlackBoxResult | BlackBoxSweep:
        """Attack ``(x, y)`` through ``oracle`` at ``eps`` (one value or a sequence);
        ``ids`` attribute queries to samples (default ``0..N-1``); ``options`` are the
        attack's own call options (decision-based: ``target``, ``x_init``)."""
        if options and self.kind == "score":
            raise AttackError(f"{type(self).__name__} takes no options {sorted(options)}")
        ids = _check_oracle(oracle, x, y, ids, scores=self.kind == "score")
        y = y.to(x.device)
        if eps is None or isinstance(eps, int | float):
            e = self._check_eps(eps)
            res = self._run(oracle, x, y, e, ids, generator, **options)
            return res if e is None or self.kind == "score" else res.at_eps(e)
        eps_list = [float(e) for e in eps]
        for e in eps_list:
            self._check_eps(e)
        if not eps_list:
            raise AttackError("eps: give one value or a non-empty list")
        spent = oracle.queries_total
        if self.kind == "decision":  # one run stopping at the smallest eps, read off per eps
            run = self._run(oracle, x, y, min(eps_list), ids, generator, **options)
            return BlackBoxSweep(eps_list, [run.at_eps(e) for e in eps_list],
                                 oracle.queries_total - spent)
        state = generator.get_state() if generator is not None else None
        results = []
        for e in eps_list:
            if generator is not None and state is not None:
                generator.set_state(state)
            results.append(self._run(oracle, x, y, e, ids, generator, **options))
        return BlackBoxSweep(eps_list, results, oracle.queries_total - spent)

    def _check_eps(self, eps: float | None) -> float | None:
        if eps is None:
            if self.kind == "score":
                raise AttackError(f"{type(self).__name__} needs eps (one value or a list)")
            return None
        if isinstance(eps, bool) or not math.isfinite(float(eps)) or eps < 0:
            raise AttackError(f"eps must be finite and >= 0, got {eps!r}")
        return float(eps)

    @abc.abstractmethod
    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, eps: float | None, ids: Tensor,
             generator: torch.Generator | None, **options: Any) -> BlackBoxResult:
        """The attack at one eps (``None`` only for decision-based attacks); ``ids``
        checked; ``options`` only for decision-based attacks (``target``, ``x_init``)."""


def _result(x: Tensor, x_adv: Tensor, success: Tensor, queries: Tensor, *,
            trace_queries: Tensor | None = None, trace_dist: Tensor | None = None
            ) -> BlackBoxResult:
    d = (x_adv - x).flatten(1)
    linf = d.abs().amax(1) if d.shape[1] else d.new_zeros(d.shape[0])
    return BlackBoxResult(x_adv, success, queries, linf, d.norm(p=2, dim=1),
                          trace_queries=trace_queries, trace_dist=trace_dist)


def _check_oracle(oracle: Oracle, x: Tensor, y: Tensor, ids: Tensor | None, *,
                  scores: bool = True) -> Tensor:
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
