"""Black-box evasion: dlsec's Square, SimBA, HopSkipJump (and NES) beside ART's.

Usage: python benchmarks/blackbox.py [--quick]
Writes benchmarks/results/blackbox.md (``--quick``: a smoke run on 6 points per target,
written to benchmarks/.cache/blackbox-quick.md so it never replaces the real results).

Everything runs in this one process, 2 torch threads, on the same model, the same points
(the correctly classified ones among the first 100 test images), the same epsilon and the
same query budget per point; numpy's and Python's global RNGs are seeded (ART draws from
them) and dlsec gets ``torch.Generator().manual_seed(0)``.

Counting. Every model given to ART or to dlsec's oracle is wrapped in a module that counts
each row forwarded. Rows are attributed to points: dlsec's oracle calls carry ``ids``;
ART's SimBA and HopSkipJump handle one point at a time, so they are run point by point;
ART's SquareAttack works on the whole batch, so each row goes to the original within
``eps`` of it; where two originals are within ``eps`` (their balls overlap: digits, L2),
the call's order decides (one row per point per call, in point order) and the script
stops unless that leaves exactly one possible assignment. Per point we keep the rows
pushed through the model, the rows up to and including the first *success row*
(misclassified, and within the stated radius for HopSkipJump), and the distinct inputs up
to and including that row (a row equal to one already sent for the same point is a
repeat). dlsec's queries are what its oracle charges (repeats included); ART's algorithmic
queries are its distinct inputs. For dlsec the wrapper's total must equal the oracle's
count and the per-point counts must equal ``oracle.queries_for(ids)`` and the result's
``queries`` (no hidden model calls); for Square the ids must also agree with the geometry.
The bookkeeping's own time is measured and subtracted from every wall time.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from evasion import target as cached_target  # noqa: E402  (same cache and training as evasion)
from machine import describe, load_average  # noqa: E402

from dlsec.threat import OracleWrapper  # noqa: E402

OUT = HERE / "results" / "blackbox.md"
OUT_QUICK = HERE / ".cache" / "blackbox-quick.md"
THREADS = 2
SEED = 0
N_POINTS = 100
SQUARE_Q = 1_000
SIMBA_Q = 1_000
SIMBA_STEP = 0.2
NES_Q = 1_000
HSJA_Q = 5_000
HSJA_ART_ITERS = 16  # ART's HopSkipJump has no query budget: 16 iterations ~ 5,000 calls

warnings.filterwarnings("ignore")
logging.getLogger("art").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Target:
    name: str
    cache: str
    linf_eps: float
    l2_eps: float


TARGETS = (
    Target("Fashion-MNIST SmallCNN (1 epoch)", "fashion-mnist-smallcnn", 0.1, 1.5),
    Target("digits SimpleNet (30 epochs, Adam 3e-3)", "digits-simplenet", 0.2, 1.0),
)


def dist(d: torch.Tensor, norm: str) -> torch.Tensor:
    """Row norms of a flat ``M x D`` difference."""
    return d.abs().amax(-1) if norm == "linf" else d.norm(dim=-1)


# -- bookkeeping -------------------------------------------------------------------------------
class Tracker:
    """Per-point record of every row answered: rows, distinct inputs, first success row.

    A success row is misclassified and within ``radius`` (in ``norm``) of its point.
    Rows are attributed by ``owner`` ids, a fixed point (``fixed``), or (``attribute``:
    ``(norm, eps)``) to the unique original within ``eps``.
    """

    def __init__(self, x0: torch.Tensor, y0: torch.Tensor, *, norm: str = "l2",
                 radius: float = math.inf, attribute: tuple[str, float] | None = None) -> None:
        n = x0.shape[0]
        self.x0, self.y0 = x0.flatten(1).float(), y0
        self.norm, self.radius, self.attribute = norm, radius, attribute
        self.fixed: int | None = None
        self.rows = np.zeros(n, dtype=np.int64)
        self.distinct = np.zeros(n, dtype=np.int64)
        self.rows_to_success = np.full(n, -1, dtype=np.int64)
        self.queries_to_success = np.full(n, -1, dtype=np.int64)
        self.seen: list[set[int]] = [set() for _ in range(n)]
        self.overhead = 0.0
        self.resolved = 0  # rows within eps of two originals, resolved by the call order
        self.nan_rows = 0  # rows holding NaN (owner from the call order alone)
        if attribute is not None:
            anorm, aeps = attribute
            pair = torch.stack([dist(self.x0 - r, anorm) for r in self.x0])
            pair.fill_diagonal_(math.inf)
            self.close = (pair <= 2 * aeps + 1e-5).any(1)  # points whose ball may overlap
            self.sq = (self.x0 * self.x0).sum(1)

    def _owners(self, f: torch.Tensor) -> torch.Tensor:
        """The original each row of one model call belongs to.

        A row belongs to an original within ``eps`` of it. A call with fewer rows than
        points holds only points not yet fooled (both attacks stop querying a point once a
        row fooled it; ART's per-iteration check of all points is a call of ``n`` rows).
        Where a row is within ``eps`` of several candidates (possible only for originals
        closer than ``2 eps``), the call's order decides: both attacks send at most one
        row per point per call, in increasing point order, so the owners must increase
        strictly along the call. The smallest and the largest increasing assignments are
        computed; they must agree (the assignment is then the only one possible), else
        the script stops.
        """
        anorm, aeps = self.attribute  # type: ignore[misc]
        lim = aeps + 1e-5
        n = len(self.sq)
        live = torch.ones(n, dtype=torch.bool)
        if f.shape[0] < n:
            live = torch.from_numpy(self.rows_to_success < 0)
        d2 = (f * f).sum(1, keepdim=True) - 2 * f @ self.x0.t() + self.sq.view(1, -1)
        cand = d2.masked_fill(~live.view(1, -1), math.inf).argmin(1)
        bad = ~torch.isfinite(f).all(1)  # NaN rows (ART's L2 Square on 8 x 8 images)
        need = ((dist(f - self.x0[cand], anorm) > lim) | self.close[cand]) & ~bad
        idx = torch.nonzero(need).flatten()
        live_ids = torch.nonzero(live).flatten().tolist()
        options = {k: live_ids for k in torch.nonzero(bad).flatten().tolist()}
        nan_rows = len(options)
        self.nan_rows += nan_rows
        for i in range(0, idx.numel(), 256):
            part = idx[i : i + 256]
            within = dist(f[part].unsqueeze(1) - self.x0.unsqueeze(0), anorm) <= lim
            within &= live.view(1, -1)
            if not bool(within.any(1).all()):
                raise AssertionError("a row is within eps of no live original")
            cand[part] = within.to(torch.int64).argmax(1)
            for k in torch.nonzero(within.sum(1) > 1).flatten().tolist():
                options[int(part[k])] = torch.nonzero(within[k]).flatten().tolist()
        if not options:
            return cand
        sets = [options.get(k, [v]) for k, v in enumerate(cand.tolist())]
        low, prev = [], -1
        for c in sets:
            prev = min((j for j in c if j > prev), default=-2)
            low.append(prev)
        high, nxt = [], n
        for c in reversed(sets):
            nxt = max((j for j in c if j < nxt), default=-2)
            high.append(nxt)
        high.reverse()
        if -2 in low or low != high:
            raise AssertionError("rows within eps of two originals that the call order "
                                 "does not resolve: attribution is not valid here")
        self.resolved += len(options) - nan_rows
        return torch.tensor(low, dtype=torch.int64)

    def add(self, x: torch.Tensor, labels: torch.Tensor, owner: torch.Tensor | None = None) -> None:
        t0 = time.perf_counter()
        f = x.detach().flatten(1).float().cpu()
        labels = labels.detach().cpu()
        if owner is None:
            if self.fixed is not None:
                owner = torch.full((f.shape[0],), self.fixed, dtype=torch.int64)
            else:
                owner = self._owners(f)
        owner = owner.cpu()
        ok = (labels != self.y0[owner]) & (
            dist(f - self.x0[owner], self.norm) <= self.radius * (1 + 1e-6) + 1e-6)
        raw = f.numpy()
        for k, (i, good) in enumerate(zip(owner.tolist(), ok.tolist(), strict=True)):
            self.rows[i] += 1
            h = hash(raw[k].tobytes())
            if h not in self.seen[i]:
                self.seen[i].add(h)
                self.distinct[i] += 1
            if good and self.rows_to_success[i] < 0:
                self.rows_to_success[i] = self.rows[i]
                self.queries_to_success[i] = self.distinct[i]
        self.overhead += time.perf_counter() - t0


class Counted(nn.Module):
    """Wraps a logits model: counts every row forwarded, feeds an optional Tracker, and
    returns probabilities when ``probs`` (ART's SimBA wants them)."""

    def __init__(self, net: nn.Module, *, probs: bool = False) -> None:
        super().__init__()
        self.net, self.probs = net, probs
        self.rows = 0
        self.model_time = 0.0
        self.tracker: Tracker | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ART's HopSkipJump bisection sends float64 under numpy 2 (a 0-d float64 alpha is
        # not a weak scalar any more); the float32 model would refuse it
        t0 = time.perf_counter()
        out = self.net(x.float())
        self.model_time += time.perf_counter() - t0
        self.rows += int(x.shape[0])
        if self.tracker is not None:
            self.tracker.add(x, out.argmax(1))
        return torch.softmax(out, 1) if self.probs else out


class SpyOracle(OracleWrapper):
    """An Oracle that forwards to a LocalOracle and records every row with its id."""

    def __init__(self, inner, tracker: Tracker) -> None:
        super().__init__(inner)
        self.tracker = tracker

    def query(self, x: torch.Tensor, *, ids: torch.Tensor | None = None) -> torch.Tensor:
        assert ids is not None, "dlsec attacks must attribute every query"
        out = self.inner.query(x, ids=ids)
        self.tracker.add(x, out if out.dim() == 1 else out.argmax(1), owner=ids)
        return out


# -- one method's outcome ----------------------------------------------------------------------
@dataclass(eq=False)
class Outcome:
    method: str
    success: np.ndarray
    tracker: Tracker
    x_adv: torch.Tensor
    x0: torch.Tensor
    wall: float
    model_time: float = math.nan
    charged: bool = False  # dlsec: every row is an oracle query it pays for
    note: str = ""
    extra: dict = field(default_factory=dict)

    def _med(self, a: np.ndarray) -> float:
        a = a[self.success & (a >= 0)]
        return float(np.median(a)) if a.size else math.nan

    @property
    def success_rate(self) -> float:
        return float(self.success.mean()) if self.success.size else math.nan

    @property
    def to_success(self) -> np.ndarray:
        """Queries to success per point: the oracle's charge for dlsec (repeats included),
        distinct inputs for ART (its repeated rows are not the algorithm's queries)."""
        t = self.tracker
        return t.rows_to_success if self.charged else t.queries_to_success

    @property
    def med_queries(self) -> float:
        return self._med(self.to_success)

    @property
    def med_distinct(self) -> float:
        return self._med(self.tracker.queries_to_success)

    @property
    def repeated(self) -> float:
        """Share of all rows that repeat an input already sent for the same point."""
        rows = int(self.tracker.rows.sum())
        return 1 - int(self.tracker.distinct.sum()) / rows if rows else math.nan

    @property
    def med_rows_to_success(self) -> float:
        return self._med(self.tracker.rows_to_success)

    @property
    def med_rows(self) -> float:
        return float(np.median(self.tracker.rows))

    def med_norm(self, norm: str) -> float:
        d = dist((self.x_adv - self.x0).flatten(1), norm).numpy()[self.success]
        return float(np.median(d)) if d.size else math.nan


def judge(net: nn.Module, x0, y0, x_adv, *, norm: str = "l2", radius: float = math.inf):
    """Success on the final inputs (the raw, uncounted model): misclassified and within."""
    with torch.inference_mode():
        wrong = net(x_adv).argmax(1) != y0
    ok = dist((x_adv - x0).flatten(1), norm) <= radius * (1 + 1e-6) + 1e-6
    return (wrong & ok).numpy()


def seed_all() -> None:
    np.random.seed(SEED)
    random.seed(SEED)
    torch.manual_seed(SEED)


# -- dlsec -------------------------------------------------------------------------------------
def run_dlsec(label: str, attack, net, card, x0, y0, *, output: str, norm: str,
              radius: float, attribute: bool, eps: float | None = None) -> Outcome:
    from dlsec.threat import LocalOracle

    counted = Counted(net)
    tracker = Tracker(x0, y0, norm=norm, radius=radius)
    if attribute:  # also check the ids against the geometry (Square: rows stay in the ball)
        counted.tracker = Tracker(x0, y0, norm=norm, radius=radius, attribute=(norm, radius))
    inner = LocalOracle(counted, card=card, output=output)
    oracle = SpyOracle(inner, tracker)
    ids = torch.arange(x0.shape[0])
    seed_all()
    t0 = time.perf_counter()
    res = attack(oracle, x0, y0, eps=eps, ids=ids, generator=torch.Generator().manual_seed(SEED))
    wall = time.perf_counter() - t0 - tracker.overhead
    if counted.tracker is not None:
        wall -= counted.tracker.overhead
        assert (counted.tracker.rows == tracker.rows).all(), "ids disagree with geometry"
    assert counted.rows == inner.queries_total == int(tracker.rows.sum()), (
        f"{label}: model rows {counted.rows} != oracle count {inner.queries_total}")
    assert (inner.queries_for(ids).numpy() == tracker.rows).all()
    assert (res.queries.cpu().numpy() == tracker.rows).all(), f"{label}: result.queries off"
    success = judge(net, x0, y0, res.x_adv, norm=norm, radius=radius)
    out = Outcome(label, success, tracker, res.x_adv, x0, wall, counted.model_time,
                  charged=True)
    out.extra["result"] = res
    if counted.tracker is not None:
        out.extra["geometry"] = counted.tracker
    return log(out)


# -- ART ---------------------------------------------------------------------------------------
def art_classifier(counted: Counted, x0: torch.Tensor):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=counted, loss=nn.CrossEntropyLoss(),
                             input_shape=tuple(x0.shape[1:]), nb_classes=10,
                             clip_values=(0.0, 1.0), device_type="cpu")


def run_art_batch(label: str, make: Callable, net, x0, y0, *, norm: str, radius: float) -> Outcome:
    """An ART attack run on the whole batch; rows attributed to the original within eps."""
    counted = Counted(net)
    tracker = Tracker(x0, y0, norm=norm, radius=radius, attribute=(norm, radius))
    attack = make(art_classifier(counted, x0))
    counted.tracker = tracker
    seed_all()
    t0 = time.perf_counter()
    adv = attack.generate(x0.numpy(), y0.numpy())
    wall = time.perf_counter() - t0 - tracker.overhead
    assert counted.rows == int(tracker.rows.sum())
    x_adv = torch.from_numpy(adv).float()
    success = judge(net, x0, y0, x_adv, norm=norm, radius=radius)
    return log(Outcome(label, success, tracker, x_adv, x0, wall, counted.model_time))


def log(o: Outcome) -> Outcome:
    print(f"  {o.method}: success {o.success_rate:.2%}, median queries {o.med_queries}, "
          f"rows/point {o.med_rows}, {o.wall:.2f} s", file=sys.stderr, flush=True)
    return o


@contextmanager
def seeded_random_state():
    """ART's HopSkipJump draws its starting noise from an unseeded ``RandomState()``:
    give it a seeded one (a new seed per point) so the run is reproducible."""
    orig = np.random.RandomState
    counter = iter(range(10**9))

    def seeded(seed=None):
        return orig(SEED * 100_003 + next(counter) if seed is None else seed)

    with mock.patch("numpy.random.RandomState", seeded):
        yield


def run_art_points(label: str, make: Callable, net, x0, y0, *, norm: str, radius: float,
                   probs: bool = False, onehot: bool = False,
                   seeded_state: bool = False) -> Outcome:
    """An ART attack that handles points one at a time, run one point per ``generate``."""
    counted = Counted(net, probs=probs)
    tracker = Tracker(x0, y0, norm=norm, radius=radius)
    attack = make(art_classifier(counted, x0))
    counted.tracker = tracker
    xs, ys = x0.numpy(), y0.numpy()
    if onehot:
        ys = np.eye(10, dtype=np.float32)[ys]
    adv = np.empty_like(xs)
    seed_all()
    t0 = time.perf_counter()
    with seeded_random_state() if seeded_state else _null():
        for i in range(xs.shape[0]):
            tracker.fixed = i
            adv[i] = attack.generate(xs[i : i + 1], ys[i : i + 1])[0]
    wall = time.perf_counter() - t0 - tracker.overhead
    assert counted.rows == int(tracker.rows.sum())
    x_adv = torch.from_numpy(adv).float()
    success = judge(net, x0, y0, x_adv, norm=norm, radius=radius)
    return log(Outcome(label, success, tracker, x_adv, x0, wall, counted.model_time))


@contextmanager
def _null():
    yield


# -- the comparisons ---------------------------------------------------------------------------
@dataclass
class Comparison:
    title: str
    ours: list[Outcome]
    art: list[Outcome]
    hsja: bool = False
    kind: str = ""  # square-linf, square-l2, simba, hsja, nes: what the summaries pick


def compare(t: Target, net, card, x0, y0) -> list[Comparison]:
    from art.attacks.evasion import HopSkipJump as ArtHSJ
    from art.attacks.evasion import SimBA as ArtSimBA
    from art.attacks.evasion import SquareAttack as ArtSquare

    from dlsec.attacks.blackbox import NESAttack, SimBA, SquareAttack

    out: list[Comparison] = []
    side = x0.shape[-1]
    freq = max(1, math.ceil(side / 4))  # dlsec's default low-frequency block, given to ART too

    # Square Linf: the paper's p_init 0.05 (dlsec's default), then ART's default 0.8 for both
    e = t.linf_eps
    for p, why in ((0.05, "the paper's"), (0.8, "ART's default")):
        ours = run_dlsec(f"dlsec SquareAttack (p_init {p})",
                         SquareAttack(norm="linf", max_queries=SQUARE_Q, p_init=p),
                         net, card, x0, y0, output="scores", norm="linf", radius=e,
                         attribute=True, eps=e)
        art = run_art_batch(f"ART SquareAttack (p_init {p})",
                            lambda c, p=p: ArtSquare(c, norm=np.inf, eps=e, max_iter=SQUARE_Q,
                                                     p_init=p, nb_restarts=1, batch_size=1024,
                                                     verbose=False),
                            net, x0, y0, norm="linf", radius=e)
        out.append(Comparison(f"Square Linf, eps {e:g}, {SQUARE_Q} queries, p_init {p} ({why})",
                              [ours], [art], kind=f"square-linf-{p:g}"))

    # Square L2
    e = t.l2_eps
    ours = run_dlsec("dlsec SquareAttack", SquareAttack(norm="l2", max_queries=SQUARE_Q),
                     net, card, x0, y0, output="scores", norm="l2", radius=e, attribute=True, eps=e)
    arts = []
    for p in (0.1,):
        try:
            arts.append(run_art_batch(
                f"ART SquareAttack (p_init {p})",
                lambda c, p=p: ArtSquare(c, norm=2, eps=e, max_iter=SQUARE_Q, p_init=p,
                                         nb_restarts=1, batch_size=1024, verbose=False),
                net, x0, y0, norm="l2", radius=e))
        except Exception as err:  # ART's L2 tiles are empty on 8 x 8 images
            arts.append(failed(f"ART SquareAttack (p_init {p})", x0, err))
    out.append(Comparison(f"Square L2, eps {e:g}, {SQUARE_Q} queries", [ours], arts,
                          kind="square-l2"))

    # SimBA pixel / DCT: ART queries both sides every iteration, so the same query budget
    # is (Q - 1) // 2 iterations
    iters = (SIMBA_Q - 1) // 2
    for basis, art_name in (("pixel", "px"), ("dct", "dct")):
        ours = run_dlsec(f"dlsec SimBA-{basis}",
                         SimBA(basis=basis, max_queries=SIMBA_Q, freq_dims=freq),
                         net, card, x0, y0, output="scores", norm="l2", radius=math.inf,
                         attribute=False, eps=SIMBA_STEP)
        art = run_art_points(
            f"ART SimBA-{basis} ({iters} iterations)",
            lambda c, a=art_name: ArtSimBA(c, attack=a, max_iter=iters, epsilon=SIMBA_STEP,
                                           freq_dim=freq, stride=1, verbose=False),
            net, x0, y0, norm="l2", radius=math.inf, probs=True, onehot=True)
        out.append(Comparison(f"SimBA-{basis}, step {SIMBA_STEP:g}, {SIMBA_Q} queries",
                              [ours], [art], kind="simba"))

    # HopSkipJump L2 (labels only), success = an adversarial within the L2 eps
    hsja = hsja_class()
    if hsja is not None:
        e = t.l2_eps
        ours = run_dlsec("dlsec HopSkipJump", hsja(norm="l2", max_queries=HSJA_Q), net, card,
                         x0, y0, output="label", norm="l2", radius=e, attribute=False)
        stop = run_dlsec(f"dlsec HopSkipJump (eps={e:g}: stops once within)",
                         hsja(norm="l2", max_queries=HSJA_Q), net, card, x0, y0, eps=e,
                         output="label", norm="l2", radius=e, attribute=False)
        art = run_art_points(
            f"ART HopSkipJump ({HSJA_ART_ITERS} iterations)",
            lambda c: ArtHSJ(c, norm=2, max_iter=HSJA_ART_ITERS, max_eval=10_000,
                             init_eval=100, init_size=100, batch_size=1024, verbose=False),
            net, x0, y0, norm="l2", radius=e, seeded_state=True)
        out.append(Comparison(f"HopSkipJump L2 (labels), {HSJA_Q} queries, success = L2 <= {e:g}",
                              [ours, stop], [art], hsja=True, kind="hsja"))

    # NES (no ART counterpart)
    e = t.linf_eps
    ours = run_dlsec("dlsec NES (Linf)", NESAttack(norm="linf", max_queries=NES_Q),
                     net, card, x0, y0, output="scores", norm="linf", radius=e, attribute=False, eps=e)
    out.append(Comparison(f"NES Linf, eps {e:g}, {NES_Q} queries (no ART counterpart)", [ours],
                          [], kind="nes"))
    return out


def failed(label: str, x0: torch.Tensor, err: Exception) -> Outcome:
    o = Outcome(label, np.zeros(0, dtype=bool), Tracker(x0[:0], torch.zeros(0, dtype=torch.int64)),
                x0[:0], x0[:0], math.nan, note=f"failed: {type(err).__name__}: {err}"[:120])
    return o


def hsja_class():
    try:
        from dlsec.attacks.blackbox.hsja import HopSkipJump
    except ImportError:
        return None
    return HopSkipJump


# -- report ------------------------------------------------------------------------------------
def fmt(v: float, spec: str = ".0f") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def ratio(a: float, b: float) -> str:
    if any(isinstance(v, float) and math.isnan(v) for v in (a, b)) or b == 0:
        return "—"
    return f"{a / b:.2f}"


def table(comps: list[Comparison]) -> tuple[list[str], list[str]]:
    lines = [
        "| comparison | method | success | median queries / success | median distinct inputs "
        "/ success | median rows to success | median rows / point | repeated rows | median L2 "
        "| median Linf | wall (s) | in the model | time dlsec/ART | queries dlsec/ART |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for c in comps:
        for k, o in enumerate([*c.ours, *c.art]):
            ref = c.art[0] if (k < len(c.ours) and c.art) else None
            title = c.title if k == 0 else ""
            if o.note:
                lines.append(f"| {title} | {o.method} | {o.note} |" + " |" * 11)
                continue
            lines.append(
                f"| {title} | {o.method} | {o.success_rate:.2%} | {fmt(o.med_queries)} | "
                f"{fmt(o.med_distinct)} | {fmt(o.med_rows_to_success)} | {fmt(o.med_rows)} | "
                f"{fmt(100 * o.repeated, '.1f')}% | "
                f"{fmt(o.med_norm('l2'), '.3f')} | {fmt(o.med_norm('linf'), '.3f')} | "
                f"{o.wall:.2f} | {o.model_time / o.wall:.0%} | "
                f"{ratio(o.wall, ref.wall) if ref else ''} | "
                f"{ratio(o.med_queries, ref.med_queries) if ref else ''} |")
        for a, d in [(a, d) for a in c.art if not a.note for d in c.ours]:
            name = c.title
            if len(c.ours) > 1 or len(c.art) > 1:
                name += f": {d.method} vs {a.method}"
            ok_s = d.success_rate >= a.success_rate
            both = d.success & a.success
            qd, qa = d.to_success[both], a.to_success[both]
            common = (f"{np.median(qd):.0f} vs {np.median(qa):.0f} on the {int(both.sum())} "
                      "points both fooled") if both.any() else "no point fooled by both"
            verdicts.append(
                f"| {name} | {'met' if ok_s else 'missed'} ({d.success_rate:.2%} vs "
                f"{a.success_rate:.2%}) | {query_verdict(d, a)} | {common} | "
                f"{wall_verdict(d, a)} |")
    return lines, verdicts


def query_verdict(d: Outcome, a: Outcome) -> str:
    """Median queries per success, dlsec <= ART; no verdict where a side fooled no point
    (a median over nothing is not a number to beat)."""
    if math.isnan(a.med_queries) and math.isnan(d.med_queries):
        return "no verdict (neither fooled a point)"
    if math.isnan(a.med_queries):
        return f"no verdict (ART fooled no point; dlsec {fmt(d.med_queries)})"
    if math.isnan(d.med_queries):
        return f"missed (dlsec fooled no point; ART {fmt(a.med_queries)})"
    ok = d.med_queries <= a.med_queries
    return f"{'met' if ok else 'missed'} ({fmt(d.med_queries)} vs {fmt(a.med_queries)})"


def wall_verdict(d: Outcome, a: Outcome) -> str:
    """dlsec's wall time at most a quarter of ART's."""
    if not a.wall > 0:
        return f"no verdict (ART's wall time {a.wall:.3f} s)"
    return f"{'met' if d.wall <= a.wall / 4 else 'missed'} ({d.wall / a.wall:.3f}x)"


def hsja_lines(comps: list[Comparison], eps: float) -> list[str]:
    out = []
    for c in comps:
        if not c.hsja:
            continue
        d, a = c.ours[0], c.art[0]
        res = d.extra["result"]
        curve = res.success_at([1000, 2000, 3000, 4000, 5000], eps=eps)
        robust_d = 1 - d.success_rate
        robust_a = 1 - a.success_rate
        l2d = float(res.l2[res.success].median()) if bool(res.success.any()) else math.nan
        l2a_all = dist((a.x_adv - a.x0).flatten(1), "l2")
        found = judge_found(a)
        l2a = float(l2a_all[found].median()) if found.any() else math.nan
        out += [
            f"HopSkipJump: median final L2 over all points with a start: dlsec {l2d:.3f}, ART "
            f"{l2a:.3f}; robust accuracy at L2 {eps:g}: dlsec {robust_d:.2%}, ART "
            f"{robust_a:.2%}; model rows per point (median): dlsec {d.med_rows:.0f}, ART "
            f"{a.med_rows:.0f} (max {int(a.tracker.rows.max())}). dlsec's success at L2 "
            f"{eps:g} after 1,000 / 2,000 / 3,000 / 4,000 / 5,000 queries: "
            + " / ".join(f"{v:.2%}" for v in curve) + ".",
            "",
        ]
    return out


def span(values: list[float], spec: str) -> str:
    """``'a-b'`` over the finite values (one value once), ``'—'`` when there are none."""
    vals = sorted(v for v in values if not math.isnan(v))
    if not vals:
        return "—"
    lo, hi = format(vals[0], spec), format(vals[-1], spec)
    return lo if lo == hi else f"{lo}-{hi}"


def _pairs(measured: list[tuple[Target, list[Comparison]]], kind: str | None = None):
    """Every (target, comparison, dlsec outcome, ART outcome) that ran, optionally of a kind."""
    return [(t, c, d, a) for t, comps in measured for c in comps
            if kind is None or c.kind == kind
            for a in c.art if not a.note for d in c.ours if not d.note]


def art_l2_note(measured: list[tuple[Target, list[Comparison]]]) -> str:
    """What ART's L2 Square does differently, with the figures this run measured."""
    pairs = _pairs(measured, "square-l2")
    text = ("ART's L2 Square update divides the new window by its norm budget where the paper "
            "multiplies by it (`delta_new /= norm(delta_new) * sqrt(budget)` in "
            "`square_attack.py`): after the rescale to eps the perturbation sits mostly in one "
            "window.")
    if not pairs:
        return text + " (No L2 Square comparison ran.)"
    text += (f" Measured here at the same L2 radius: ART's median Linf "
             f"{span([a.med_norm('linf') for *_, a in pairs], '.2f')} against dlsec's "
             f"{span([d.med_norm('linf') for _, _, d, _ in pairs], '.2f')}; points fooled, "
             "dlsec vs ART: " + "; ".join(
                 f"{d.success_rate:.2%} vs {a.success_rate:.2%} on {t.cache}"
                 for t, _, d, a in pairs))
    both_med = [(t, d, a) for t, _, d, a in pairs
                if not math.isnan(d.med_queries) and not math.isnan(a.med_queries)]
    if both_med:
        text += ("; median queries per success, dlsec vs ART: " + "; ".join(
            f"{d.med_queries:.0f} vs {a.med_queries:.0f} on {t.cache}" for t, d, a in both_med))
    return text + ". The L2 Square rows therefore compare with a defective implementation."


def readme_summary(measured: list[tuple[Target, list[Comparison]]]) -> list[str]:
    """The paragraph README.md quotes (``run_all.py`` copies it there), from this run only."""
    pairs = _pairs(measured)
    if not pairs:
        return []
    ok = [p for p in pairs if p[2].success_rate >= p[3].success_rate]
    missed = [p for p in pairs if p[2].success_rate < p[3].success_rate]
    l2 = _pairs(measured, "square-l2")
    text = (f"Side by side with ART on the same models, points, eps and budgets "
            f"([BENCHMARKS.md](BENCHMARKS.md), `benchmarks/blackbox.py`, measured "
            f"{time.strftime('%Y-%m-%d')}): dlsec's Square, SimBA and HopSkipJump fool as many "
            f"points as ART's or more in {len(ok)} of {len(pairs)} comparisons")
    if missed:
        text += " (fewer in " + "; ".join(
            f"{c.title} on {t.cache}: {d.success_rate:.2%} vs {a.success_rate:.2%}"
            for t, c, d, a in missed) + ")"
    text += ". "
    if l2:
        text += ("Square L2 is compared with ART's L2 Square, whose update this benchmark "
                 "finds defective (it divides by the norm budget where the paper multiplies): "
                 + "; ".join(f"{d.success_rate:.2%} vs {a.success_rate:.2%} on {t.cache}"
                             for t, _, d, a in l2) + ". ")
    ours = [o for _, comps in measured for c in comps for o in c.ours if not o.note]
    repeated = max((o.repeated for o in ours if not math.isnan(o.repeated)), default=math.nan)
    art_sq = [a.repeated for t, c, d, a in pairs if c.kind.startswith("square")]
    if repeated == 0:
        text += "dlsec's attacks sent no input twice for the same point"
    else:
        text += f"Up to {repeated:.1%} of the rows a dlsec attack sent repeat an input"
    if art_sq:
        text += f" ({span([100 * r for r in art_sq], '.0f')}% of the rows ART's Square sent are repeats)"
    ratios = [(d.wall / a.wall, t, c, d) for t, c, d, a in pairs if a.wall > 0]
    if ratios:
        top = max(ratios, key=lambda r: r[0])
        text += (f", and took {span([r[0] for r in ratios], '.2f')}× ART's wall time (the "
                 f"highest: {top[3].method}, {top[2].title} on {top[1].cache}, {top[0]:.2f}×, "
                 f"{top[3].model_time / top[3].wall:.0%} of its time in the model's forward "
                 "passes)")
    text += "."
    square = [(t, d) for t, comps in measured for c in comps if c.kind == "square-linf-0.05"
              for d in c.ours if not d.note]
    if square:
        text += " Square Linf with the paper's p_init 0.05 fools " + "; ".join(
            f"{d.success_rate:.2%} of the correctly classified test points of {t.cache} at eps "
            f"{t.linf_eps:g} with a median of {fmt(d.med_queries)} queries" for t, d in square) + "."
    return ["<!-- readme: blackbox -->", text, "<!-- end readme: blackbox -->"]


def judge_found(o: Outcome) -> torch.Tensor:
    """Points whose final input is misclassified at all (any distance)."""
    net = o.extra.get("net")
    if net is None:
        return torch.ones(o.x0.shape[0], dtype=torch.bool)
    with torch.inference_mode():
        return net(o.x_adv).argmax(1) != o.extra["y0"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="6 points per target (smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    t_start = time.perf_counter()
    lines = [
        "## Black-box evasion: Square, SimBA, HopSkipJump against ART",
        "",
        f"Command: `.venv/bin/python benchmarks/blackbox.py{' --quick' if args.quick else ''}` "
        f"({describe(threads=THREADS)}). One process; per target the same model, the same "
        "points (the correctly classified ones among the first "
        f"{N_POINTS if not args.quick else 6} test images), epsilon and per-point budget.",
        "",
        "Columns. *success*: the final input is misclassified (and within eps; for "
        "HopSkipJump within the stated L2 radius). *queries / success*: per successful "
        "point, the queries up to and including its first success row (median): for dlsec "
        "every query its oracle charged (repeats included), for ART the algorithm's queries, "
        "i.e. the distinct inputs it sent for that point (its re-evaluations of inputs "
        "already sent are not counted). *distinct inputs / success*: distinct inputs up to "
        "that row, for both. *rows to success*: every row the model computed for that point "
        "up to that row. *rows / point*: all rows the model computed per point over the "
        "whole run; *repeated rows*: the share of all rows that repeat an input already sent "
        "for the same point. Norms are medians over successful points. Wall times exclude "
        "this script's counting; *in the model*: the share of the wall time spent in the "
        "model's forward passes; ratios are dlsec / the first ART row. dlsec's rows = its "
        "oracle's count = its result's `queries` (asserted); ART's rows are counted by a "
        "module wrapped around the same model.",
        "",
    ]
    all_verdicts = []
    measured: list[tuple[Target, list[Comparison]]] = []
    hsja_available = hsja_class() is not None
    for t in TARGETS:
        net, card, x, y, _ = cached_target(t.cache)
        x, y = x[:N_POINTS], y[:N_POINTS]
        with torch.inference_mode():
            ok = net(x).argmax(1) == y
        x0, y0 = x[ok].contiguous(), y[ok].contiguous()
        if args.quick:
            x0, y0 = x0[:6], y0[:6]
        with torch.inference_mode():  # warm-up: first calls at each batch size are slow
            for bs in (1, 8, 128, 1024):
                net(x0[:1].expand(bs, *x0.shape[1:]).contiguous())
        comps = compare(t, net, card, x0, y0)
        measured.append((t, comps))
        for c in comps:
            for o in c.art:
                o.extra.update(net=net, y0=y0)
        rows, verdicts = table(comps)
        resolved = [f"{o.method} ({c.title}): {o.tracker.resolved}" for c in comps
                    for o in [*c.ours, *c.art] if o.tracker.resolved]
        nans = [f"{o.method} ({c.title}) sent {o.tracker.nan_rows} rows holding NaN"
                for c in comps for o in [*c.ours, *c.art] if o.tracker.nan_rows]
        repeats = [f"{o.method} ({c.title}): {o.repeated:.1%} of its queries "
                   f"({int(o.tracker.rows.sum() - o.tracker.distinct.sum())} of "
                   f"{int(o.tracker.rows.sum())})" for c in comps for o in c.ours
                   if o.repeated > 0.05]
        counted = [f"{o.method} ({c.title}): {o.extra['geometry'].resolved}" for c in comps
                   for o in c.ours if o.extra.get("geometry") and o.extra["geometry"].resolved]
        lines += [
            f"### {t.name}: {int(ok[: N_POINTS].sum())} of {N_POINTS} test images correctly "
            f"classified, {x0.shape[0]} attacked",
            "",
            *rows,
            "",
            *hsja_lines(comps, t.l2_eps),
            *([f"Rows within eps of two originals, attributed by the call order: "
               f"{'; '.join(resolved + counted)}.", ""] if resolved or counted else []),
            *([f"dlsec queries that re-send an input already sent for the same point (the "
               f"oracle charges them, the answer was known): {'; '.join(repeats)}.", ""]
              if repeats else []),
            *([f"{'; '.join(nans)}: divisions by zero norms in its L2 updates (and, on "
               "8 x 8 images, in its start, whose tiles are 8 // 5 = 1 pixel wide and all "
               "zero). A NaN candidate is never accepted: those rows are wasted.", ""]
              if nans else []),
        ]
        all_verdicts += [v.replace("| ", f"| {t.cache}: ", 1) for v in verdicts]
    lines += [
        "### The issue's targets (each dlsec row against each ART row)",
        "",
        "| comparison | success >= ART | median queries <= ART | (same points) "
        "| wall <= 1/4 ART |",
        "|---|---|---|---|---|",
        *all_verdicts,
        "",
        "Settings. Square: dlsec `SquareAttack(eps, norm, max_queries=1000)` (p_init 0.05 "
        "Linf, 0.1 L2, the paper's) against ART `SquareAttack(max_iter=1000, p_init=0.05 / "
        "0.1, nb_restarts=1)`; for Linf both also with ART's default p_init 0.8. ART's 1,000 "
        "iterations allow 1,001 candidates, dlsec's budget 1,000 including the start. "
        "SimBA: step 0.2, DCT low-frequency block ceil(side / 4) for both; ART queries "
        "both sides of every direction, so its equal budget is "
        f"{(SIMBA_Q - 1) // 2} iterations (up to {2 * ((SIMBA_Q - 1) // 2) + 1} queries). "
        f"HopSkipJump: dlsec `HopSkipJump(norm='l2', max_queries={HSJA_Q})` (the paper's "
        "gamma 1, 100 initial probes) against ART `HopSkipJump(norm=2, "
        f"max_iter={HSJA_ART_ITERS}, init_eval=100, max_eval=10000, init_size=100)`, which "
        "has no query budget: the iteration count was picked so its calls per point are "
        "comparable (reported above); ART's unseeded start noise "
        "(`np.random.RandomState()`) is seeded per point by this script. NES: dlsec only, "
        "50 probes per estimate, step eps / 4. " + art_l2_note(measured),
        "",
        f"Whole script: {time.perf_counter() - t_start:.0f} s; load average at the end "
        f"{load_average()}."
        + ("" if hsja_available else " dlsec's HopSkipJump was not available: no HSJA rows."),
        "",
        *readme_summary(measured),
        "",
    ]
    text = "\n".join(lines)
    dest = OUT_QUICK if args.quick else OUT
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
