"""Model-extraction detection per API key: PRADA (Juuti et al., "PRADA: Protecting Against
DNN Model Stealing Attacks", EuroS&P 2019) and an out-of-distribution-share detector
(:class:`OodShare`, its reasoning and sources in its docstring); :class:`KeyDetectors`
holds several named ones per key for the server (:func:`dlsec.serve.app.create_app`).

PRADA:

Threat model: a client queries a served classifier to train a copy of it. Natural
queries (photos, scans) lie at distances from each other that are roughly normally
distributed; extraction queries synthesised from a few seeds (Jacobian-based
augmentation, small sign-gradient steps, interpolations) come at a handful of fixed
step sizes, so their distances are not. PRADA tests exactly that:

* per client and per *predicted class* c it keeps a growing set ``G_c`` of queries and
  the list ``DG_c`` of the distances with which they entered (the first query of a
  class enters ``G_c`` with distance 0, and that 0 is not a sample of ``D``);
* every later query ``x`` of class c gives ``d = min_{g in G_c} ||x - g||_2``; ``d`` is
  appended to ``D`` always, and ``x`` joins ``G_c`` (``d`` joins ``DG_c``) only when
  ``d > T_c``, after which ``T_c <- max(T_c, mean(DG_c) - std(DG_c))`` (population std;
  ``T_c`` starts at 0);
* once ``D`` holds at least ``min_distances`` values, the Shapiro-Wilk statistic ``W``
  of ``D`` is computed after every :meth:`Prada.observe`; the client is flagged while
  ``W < delta``.

Defaults: ``delta = 0.9`` and ``min_distances = 100`` (the authors' reference code
tests once more than 100 distances are in). The paper sets ``delta`` per victim model so
that benign streams raise no alarm; 0.95 is common in public reproductions, but on
dlsec's digits (raw 8x8 pixels, logistic regression) it flagged the held-out test
stream of 2 of 4 splits (lowest benign W along the stream 0.939, seeds 0-3), while
Jacobian-augmentation streams stay at W 0.29-0.45 (step 0.05-0.2); 0.9 separates both
with a wide margin. Tune ``delta`` on your own benign traffic: a lower ``delta`` means
fewer false alarms and later detection. Distances are computed in input units on the
flattened input, in float64.

Notes:
    The authors' reference code also drops distances more than 3 std from the mean and
    classes with fewer than 10 distances before the test, and tests every 10 queries;
    this module implements the paper's Algorithm 1 without those heuristics, so its
    verdicts are exact and reproducible query by query. PRADA can be evaded by an
    attacker who shapes its query distances (Juuti et al. say so themselves); it is one
    signal among the server's limits, not a guarantee. Memory grows with ``G``: one
    stored query per accepted point, per key.

Example:
    >>> det = Prada(delta=0.9)
    >>> state = det.observe(x_batch, predicted=logits.argmax(1))   # doctest: +SKIP
    >>> state.flagged, state.w, state.queries                      # doctest: +SKIP
"""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dlsec.errors import DlsecError

DEFAULT_DELTA = 0.9
DEFAULT_MIN_DISTANCES = 100


class DetectionError(DlsecError):
    """A PRADA setting or a query batch is unusable; the message says which."""


@dataclass(frozen=True)
class PradaState:
    """What one client looks like after its latest batch.

    ``w`` is the Shapiro-Wilk statistic of the distances so far (None until
    ``min_distances`` are in); ``flagged`` is the current verdict ``w < delta``;
    ``flagged_at`` the query count at which the client was first flagged (None if never).
    """

    queries: int
    distances: int
    growing_set: int
    w: float | None
    flagged: bool
    flagged_at: int | None

    @property
    def statistic(self) -> float | None:
        """The detector's test statistic (here ``w``), as every detector state names it."""
        return self.w


def _shapiro_w(values: np.ndarray) -> float:
    try:
        from scipy.stats import shapiro
    except ImportError as exc:  # scipy is a base dependency; this guards broken installs
        raise DetectionError("PRADA needs scipy (pip install scipy)") from exc
    # A constant sample has no spread: W is undefined (scipy warns and answers 1.0). All
    # queries at exactly the same distance is the most synthetic stream there is.
    top, bottom = float(values.max()), float(values.min())
    if top - bottom <= 1e-12 * max(1.0, abs(top)):
        return 0.0
    with warnings.catch_warnings():
        # Past 5000 values scipy warns that its *p-value* may be inaccurate; PRADA uses
        # only the statistic W, so the warning would only fill the server's log.
        warnings.filterwarnings("ignore", message=".*N > 5000.*", category=UserWarning)
        return float(shapiro(values).statistic)


_EPS = float(torch.finfo(torch.float64).eps)


def _exact(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances between paired rows of ``a`` and ``b`` (m, f), computed
    directly (difference, squares, sum, root), never through a matrix product."""
    diff = a - b
    return (diff * diff).sum(dim=1).sqrt()


class _Rows:
    """One growing set ``G_c``: its queries (float64) in entry order with their squared
    norms, in buffers that double (amortised O(1) copy per entered query)."""

    def __init__(self, features: int, rows: Tensor | None = None) -> None:
        self.features = features
        self.n = 0
        self._data = torch.zeros(0, features, dtype=torch.float64)
        self._sq = torch.zeros(0, dtype=torch.float64)
        if rows is not None and len(rows):
            self.add(rows, (rows * rows).sum(dim=1))

    def add(self, rows: Tensor, norms: Tensor) -> None:
        need = self.n + int(rows.shape[0])
        if need > self._data.shape[0]:
            cap = max(need, 2 * int(self._data.shape[0]), 16)
            data = torch.zeros(cap, self.features, dtype=torch.float64)
            sq = torch.zeros(cap, dtype=torch.float64)
            data[: self.n] = self._data[: self.n]
            sq[: self.n] = self._sq[: self.n]
            self._data, self._sq = data, sq
        self._data[self.n : need] = rows
        self._sq[self.n : need] = norms
        self.n = need

    @property
    def rows(self) -> Tensor:
        return self._data[: self.n]

    def nearest(self, x: Tensor, norms: Tensor) -> list[float]:
        """Exact ``min_g ||x_i - g||`` per row of ``x`` (see :meth:`Prada._observe_class`).

        ``s = |g|^2 - 2 x.g`` is the squared distance less ``|x|^2`` (a per-row constant
        that changes no ranking), off by at most ``(2f + 12) eps (|x|^2 + |g|^2)`` in
        float64 whatever the summation order (dot products of length f); ``tol`` is
        twice that. A ``g`` whose ``s`` exceeds the row's smallest by more than
        ``3 tol`` is farther than the nearest by more than ``tol``, more than the
        rounding of :func:`_exact`, so it cannot win: only the rest are recomputed
        exactly (almost always one per row: the two smallest ``s`` tell)."""
        if self.n == 0:
            return [math.inf] * int(x.shape[0])
        g, gsq = self.rows, self._sq[: self.n]
        s = torch.addmm(gsq, x, g.T, alpha=-2.0)
        two = torch.topk(s, min(2, self.n), dim=1, largest=False)
        low, idx = two.values, two.indices
        limit = low[:, 0] + 3.0 * (self.features + 8) * _EPS * 4.0 * (norms + gsq.max())
        if self.n == 1:
            hard = ~torch.isfinite(limit)
        else:  # a NaN or infinite limit (overflowing magnitudes) also lands here
            hard = ~(low[:, 1] > limit)
        if not bool(hard.any()):  # the common case: one candidate per row
            return _exact(x, g[idx[:, 0]]).tolist()
        unsure = ~torch.isfinite(limit)
        ties = hard & ~unsure
        cand = torch.zeros_like(s, dtype=torch.bool)
        cand[torch.arange(int(x.shape[0])), idx[:, 0]] = True
        cand[ties] = s[ties] <= limit[ties, None]
        cand[unsure] = True  # overflowing magnitudes: every g is a candidate
        ri, gi = cand.nonzero(as_tuple=True)
        dist = _exact(x[ri], g[gi])
        best = torch.full((int(x.shape[0]),), math.inf, dtype=torch.float64)
        return best.scatter_reduce(0, ri, dist, reduce="amin").tolist()


class Prada:
    """PRADA detector for one client (see the module docstring for the algorithm).

    Args:
        delta: flag while the Shapiro-Wilk ``W`` of the distances is below it; in (0, 1].
        min_distances: distances needed before the test runs; at least 3 (Shapiro-Wilk's
            minimum), at most 5000 (scipy's exact range).
        per_class: group queries by predicted class as the paper does; False pools them
            (one growing set, for servers that do not reveal classes).
    """

    def __init__(
        self,
        *,
        delta: float = DEFAULT_DELTA,
        min_distances: int = DEFAULT_MIN_DISTANCES,
        per_class: bool = True,
    ) -> None:
        if not (isinstance(delta, (int, float)) and 0.0 < float(delta) <= 1.0):
            raise DetectionError(f"PRADA delta must be in (0, 1], got {delta!r}")
        if isinstance(min_distances, bool) or not isinstance(min_distances, int):
            raise DetectionError(f"PRADA min_distances must be an integer, got {min_distances!r}")
        if not 3 <= min_distances <= 5000:
            raise DetectionError(f"PRADA min_distances must be in [3, 5000], got {min_distances}")
        self.delta = float(delta)
        self.min_distances = min_distances
        self.per_class = per_class
        self._growing: dict[int, _Rows] = {}  # class -> G_c (k, features) float64
        self._entry_dists: dict[int, list[float]] = {}  # class -> DG_c (starts with 0)
        self._threshold: dict[int, float] = {}  # class -> T_c
        self._moments: dict[int, tuple[int, float, float]] = {}  # class -> DG_c count, mean, M2
        self._dist = np.zeros(0)  # D, in arrival order: the first _ndist entries
        self._ndist = 0
        self._queries = 0
        self._w: float | None = None
        self._flagged_at: int | None = None

    def _enter(self, cls: int, d: float) -> None:
        """``d`` joins ``DG_cls``; ``T_cls <- max(T_cls, mean - std)`` (population std,
        Welford's running mean and sum of squares: O(1) per entry, not O(|DG|))."""
        dg = self._entry_dists[cls]
        dg.append(d)
        count, mean, m2 = self._moments[cls]
        count += 1
        delta = d - mean
        mean += delta / count
        m2 += delta * (d - mean)
        self._moments[cls] = (count, mean, m2)
        self._threshold[cls] = max(self._threshold[cls], mean - math.sqrt(max(m2, 0.0) / count))

    def _observe_class(
        self, rows: Tensor, norms: Tensor, cls: int, pair: list[list[float]]
    ) -> list[float | None]:
        """Algorithm 1 for one class's rows of a batch, in order; each row's distance
        (None for the class's very first query).

        The distance to ``G_cls`` as it was is found with one matrix product per class
        (``|x|^2 + |g|^2 - 2 x.g``) and then made exact: every ``g`` whose approximate
        squared distance is within three times a rigorous rounding bound of the row's
        approximate minimum is recomputed directly (:func:`_exact`), and the exact
        minimum among those is the answer, the same value as the minimum of exact
        distances over all of ``G_cls``. ``pair[i][j]`` (j < i) is the exact distance
        between the class's rows i and j of this batch; the sequential pass over the
        rows is plain Python."""
        n, features = int(rows.shape[0]), int(rows.shape[1])
        grown = self._growing.get(cls)
        first = grown is None
        if grown is None:
            grown = _Rows(features)
            self._growing[cls] = grown
            self._entry_dists[cls] = [0.0]
            self._moments[cls] = (1, 0.0, 0.0)
            self._threshold[cls] = 0.0
        elif grown.features != features:
            raise DetectionError(
                f"query has {features} features, earlier queries had {grown.features}"
            )
        base = [math.inf] * n if first else grown.nearest(rows, norms)
        out: list[float | None] = [None] if first else []
        joined: list[int] = [0] if first else []  # rows of this batch now in G
        threshold = self._threshold
        for i in range(1 if first else 0, n):
            pi = pair[i]
            d = base[i]
            for j in joined:
                if pi[j] < d:
                    d = pi[j]
            out.append(d)
            if d > threshold[cls]:
                joined.append(i)
                self._enter(cls, d)
        if joined:
            grown.add(rows[joined], norms[joined])
        return out

    def observe(self, x: Tensor, predicted: Tensor) -> PradaState:
        """Take a batch ``x`` (n, ...) with the served model's predicted classes (n,), in
        order, and return the client's state after it (``W`` is computed once per batch)."""
        if x.ndim < 1 or predicted.ndim != 1 or x.shape[0] != predicted.shape[0]:
            raise DetectionError(
                f"PRADA needs x (n, ...) and predicted (n,), got {tuple(x.shape)} "
                f"and {tuple(predicted.shape)}"
            )
        flat = x.detach().reshape(x.shape[0], -1).to(device="cpu", dtype=torch.float64)
        if not bool(torch.isfinite(flat).all()):
            raise DetectionError("PRADA queries must be finite")
        cls_t = predicted.detach().to("cpu")
        if not self.per_class:
            cls_t = torch.zeros(len(flat), dtype=torch.long)
        classes = cls_t.tolist()
        by_class: dict[int, list[int]] = {}
        for i, cls in enumerate(classes):
            by_class.setdefault(int(cls), []).append(i)
        norms = (flat * flat).sum(dim=1)
        # Exact distances between same-class rows of the batch, all in one pass.
        pos: list[int] = [0] * len(flat)  # row -> its place among its class's rows
        for idx in by_class.values():
            for k, i in enumerate(idx):
                pos[i] = k
        pairs: dict[int, list[list[float]]] = {c: [[] for _ in idx] for c, idx in by_class.items()}
        if len(flat) > 1:
            ii, jj = torch.tril_indices(len(flat), len(flat), offset=-1)
            same = cls_t[ii] == cls_t[jj]
            ii, jj = ii[same], jj[same]
            if len(ii):
                dists = _exact(flat[ii], flat[jj]).tolist()
                for i, d in zip(ii.tolist(), dists, strict=True):  # j ascending per i
                    pairs[int(classes[i])][pos[i]].append(d)
        found: list[float | None] = [None] * len(flat)
        for cls, idx in by_class.items():
            rows = self._observe_class(flat[idx], norms[idx], cls, pairs[cls])
            for i, d in zip(idx, rows, strict=True):
                found[i] = d
        self._queries += len(flat)
        self._append([d for d in found if d is not None])  # arrival order
        if self._ndist >= self.min_distances:
            self._w = _shapiro_w(self._dist[: self._ndist])
            if self._w < self.delta and self._flagged_at is None:
                self._flagged_at = self._queries
        return self.state

    @property
    def state(self) -> PradaState:
        return PradaState(
            queries=self._queries,
            distances=self._ndist,
            growing_set=sum(g.n for g in self._growing.values()),
            w=self._w,
            flagged=self._w is not None and self._w < self.delta,
            flagged_at=self._flagged_at,
        )

    @property
    def distances(self) -> list[float]:
        """The set D: each query's minimum distance to its class's growing set, in order."""
        return [float(v) for v in self._dist[: self._ndist]]

    def _append(self, values: list[float]) -> None:
        """Add distances to D (a buffer that doubles: amortised O(1) per distance)."""
        need = self._ndist + len(values)
        if need > len(self._dist):
            grown = np.zeros(max(need, 2 * len(self._dist), 256))
            grown[: self._ndist] = self._dist[: self._ndist]
            self._dist = grown
        self._dist[self._ndist : need] = values
        self._ndist = need

    def growing_set(self, cls: int = 0) -> Tensor:
        """The flattened queries of ``G_cls`` (float64), in the order they entered."""
        grown = self._growing.get(cls)
        return grown.rows.clone() if grown is not None else torch.zeros(0, dtype=torch.float64)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume this detector (tensors and plain Python values)."""
        return {
            "delta": self.delta,
            "min_distances": self.min_distances,
            "per_class": self.per_class,
            "growing": {c: g.rows.clone() for c, g in self._growing.items()},
            "entry_dists": {c: list(v) for c, v in self._entry_dists.items()},
            "threshold": dict(self._threshold),
            "distances": self.distances,
            "queries": self._queries,
            "w": self._w,
            "flagged_at": self._flagged_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; settings are taken from ``state``."""
        try:
            fresh = Prada(
                delta=state["delta"],
                min_distances=state["min_distances"],
                per_class=bool(state["per_class"]),
            )
            growing = {
                int(c): _Rows(int(g.shape[1]), g.to(torch.float64))
                for c, g in state["growing"].items()
            }
            entry = {int(c): [float(v) for v in d] for c, d in state["entry_dists"].items()}
            threshold = {int(c): float(t) for c, t in state["threshold"].items()}
            distances = [float(v) for v in state["distances"]]
            queries = int(state["queries"])
            w = None if state["w"] is None else float(state["w"])
            flagged_at = None if state["flagged_at"] is None else int(state["flagged_at"])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise DetectionError(f"not a PRADA state_dict: {exc}") from exc
        if not (growing.keys() == entry.keys() == threshold.keys()):
            raise DetectionError("not a PRADA state_dict: per-class entries disagree")
        self.delta, self.min_distances, self.per_class = (
            fresh.delta,
            fresh.min_distances,
            fresh.per_class,
        )
        self._growing, self._entry_dists, self._threshold = growing, entry, threshold
        self._moments = {}
        for c, dg in entry.items():
            mean = math.fsum(dg) / len(dg)
            self._moments[c] = (len(dg), mean, math.fsum((v - mean) ** 2 for v in dg))
        self._dist, self._ndist, self._queries = np.zeros(0), 0, queries
        self._append(distances)
        self._w, self._flagged_at = w, flagged_at


class Detectors:
    """One :class:`Prada` per API key, created on first use with shared settings.

    Thread-safe: the app's sync endpoints run in a thread pool, so one lock serialises
    all observations (a PRADA step is cheap next to the model's forward pass).
    """

    def __init__(
        self,
        *,
        delta: float = DEFAULT_DELTA,
        min_distances: int = DEFAULT_MIN_DISTANCES,
        per_class: bool = True,
    ) -> None:
        Prada(delta=delta, min_distances=min_distances, per_class=per_class)  # validate now
        self._settings: dict[str, Any] = {
            "delta": delta,
            "min_distances": min_distances,
            "per_class": per_class,
        }
        self._detectors: dict[str, Prada] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Prada:
        """The detector of ``key`` (created empty on first use)."""
        with self._lock:
            det = self._detectors.get(key)
            if det is None:
                det = self._detectors[key] = Prada(**self._settings)
            return det

    def observe(self, key: str, x: Tensor, predicted: Tensor) -> PradaState:
        """Feed ``key``'s batch to its detector; see :meth:`Prada.observe`."""
        det = self.get(key)
        with self._lock:
            return det.observe(x, predicted)

    def flagged(self) -> list[str]:
        """Keys whose current verdict is flagged, sorted."""
        with self._lock:
            return sorted(k for k, d in self._detectors.items() if d.state.flagged)

    def __len__(self) -> int:
        return len(self._detectors)

    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "settings": dict(self._settings),
                "detectors": {k: d.state_dict() for k, d in self._detectors.items()},
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            settings = dict(state["settings"])
            items = dict(state["detectors"]).items()
        except (KeyError, TypeError, ValueError) as exc:
            raise DetectionError(f"not a Detectors state_dict: {exc}") from exc
        Prada(**settings)  # validate
        detectors: dict[str, Prada] = {}
        for key, sub in items:
            det = Prada(**settings)
            det.load_state_dict(sub)
            detectors[str(key)] = det
        with self._lock:
            self._settings, self._detectors = settings, detectors


# -- the second detector: share of out-of-distribution queries -----------------------------

DEFAULT_OOD_QUANTILE = 0.99
DEFAULT_OOD_THRESHOLD = 0.1
DEFAULT_OOD_MIN_QUERIES = 20
_CHUNK = 1024  # reference rows per distance block (bounds memory to chunk x n floats)


def _nn_distances(x: Tensor, ref: Tensor, *, exclude_self: bool = False) -> Tensor:
    """Each row of ``x``'s L2 distance to its nearest row of ``ref`` (float32, chunked);
    ``exclude_self``: ``x`` is ``ref`` and a row's own distance does not count."""
    out = torch.empty(x.shape[0], dtype=torch.float32)
    for start in range(0, x.shape[0], _CHUNK):
        block = torch.cdist(x[start : start + _CHUNK], ref)
        if exclude_self:
            rows = torch.arange(block.shape[0])
            block[rows, rows + start] = float("inf")
        out[start : start + _CHUNK] = block.min(dim=1).values
    return out


class OodReference:
    """A benign reference sample and its outlier radius, shared by every key's
    :class:`OodShare`.

    ``radius`` is the ``quantile`` of the reference's own leave-one-out nearest-neighbour
    distances: a fresh point from the reference's distribution lies farther than it from
    every reference point with probability about ``1 - quantile``.

    Args:
        reference: benign inputs (n, ...) in the model's input units, n >= 2; e.g. the
            training split or any sample of the traffic the server expects.
        quantile: in (0, 1).
    """

    def __init__(self, reference: Tensor, *, quantile: float = DEFAULT_OOD_QUANTILE) -> None:
        if not (isinstance(quantile, (int, float)) and 0.0 < float(quantile) < 1.0):
            raise DetectionError(f"OOD quantile must be in (0, 1), got {quantile!r}")
        if not isinstance(reference, Tensor) or reference.ndim < 2 or reference.shape[0] < 2:
            shape = tuple(reference.shape) if isinstance(reference, Tensor) else type(reference)
            raise DetectionError(f"an OOD reference needs at least 2 rows (n, ...), got {shape}")
        flat = reference.detach().reshape(reference.shape[0], -1).to("cpu", torch.float32)
        if not bool(torch.isfinite(flat).all()):
            raise DetectionError("the OOD reference must be finite")
        self.points = flat.contiguous()
        self.quantile = float(quantile)
        loo = _nn_distances(self.points, self.points, exclude_self=True)
        self.radius = float(torch.quantile(loo.double(), self.quantile))

    @property
    def features(self) -> int:
        return int(self.points.shape[1])

    def outliers(self, x: Tensor) -> Tensor:
        """A bool per row of ``x``: farther than ``radius`` from every reference point."""
        flat = x.detach().reshape(x.shape[0], -1).to("cpu", torch.float32)
        if flat.shape[1] != self.features:
            raise DetectionError(
                f"query has {flat.shape[1]} features, the OOD reference has {self.features}"
            )
        if not bool(torch.isfinite(flat).all()):
            raise DetectionError("OOD queries must be finite")
        return _nn_distances(flat, self.points) > self.radius


@dataclass(frozen=True)
class OodState:
    """One client after its latest batch: ``outliers`` of ``queries`` were out of
    distribution; ``lower`` is the Wilson 95% lower bound of that share (None before
    ``min_queries``); ``flagged`` while ``lower > threshold``; ``flagged_at`` the query
    count at the first flag (None if never)."""

    queries: int
    outliers: int
    lower: float | None
    flagged: bool
    flagged_at: int | None

    @property
    def statistic(self) -> float | None:
        """The Wilson lower bound of the out-of-distribution share."""
        return self.lower


class OodShare:
    """Out-of-distribution share detector for one client.

    Reasoning and sources: extraction attacks that synthesise their queries (random
    inputs, Papernot et al.'s Jacobian-based augmentation, adversarial-style steps as in
    Tramer et al. 2016 and Juuti et al. 2019) ask about points a benign user never sends,
    far from the data the model serves. Kesarwani et al. ("Model Extraction Warning in
    MLaaS Paradigm", ACSAC 2018) and Atli et al. ("Extraction of Complex DNN Models:
    Real Threat or Boogeyman?", 2020) measure how much of the input space a client covers;
    this is the simplest form of that idea that a test can pin: a query is an *outlier*
    when its nearest-neighbour L2 distance to the server's benign reference sample
    exceeds the reference's own leave-one-out ``quantile`` (so a benign query is one with
    probability about ``1 - quantile``, 1% by default); the client is flagged once it has
    sent ``min_queries`` and the Wilson 95% lower bound of its outlier share exceeds
    ``threshold`` (0.1 by default, ten times the benign rate).

    What it misses: natural queries (Knockoff Nets, Orekondy et al. 2019: real images of
    the same or a related domain) are in distribution and are not flagged; nor is an
    attacker who dilutes synthetic queries with enough benign ones, or one who spreads
    its queries over many keys. Distances are in input units on flattened inputs, so the
    reference must be in the model's input units and sample its benign traffic.

    Args:
        reference: the shared :class:`OodReference`.
        threshold: flag when the lower bound of the outlier share exceeds it; in (0, 1).
        min_queries: queries before any verdict; at least 1.
    """

    def __init__(
        self,
        reference: OodReference,
        *,
        threshold: float = DEFAULT_OOD_THRESHOLD,
        min_queries: int = DEFAULT_OOD_MIN_QUERIES,
    ) -> None:
        if not isinstance(reference, OodReference):
            raise DetectionError("OodShare needs an OodReference")
        if not (isinstance(threshold, (int, float)) and 0.0 < float(threshold) < 1.0):
            raise DetectionError(f"OOD threshold must be in (0, 1), got {threshold!r}")
        if isinstance(min_queries, bool) or not isinstance(min_queries, int) or min_queries < 1:
            raise DetectionError(f"OOD min_queries must be an integer >= 1, got {min_queries!r}")
        self.reference = reference
        self.threshold = float(threshold)
        self.min_queries = min_queries
        self._queries = 0
        self._outliers = 0
        self._lower: float | None = None
        self._flagged_at: int | None = None

    def observe(self, x: Tensor, predicted: Tensor | None = None) -> OodState:
        """Take a batch ``x`` (n, ...); ``predicted`` is accepted for the same signature as
        :meth:`Prada.observe` and not used. The verdict is updated once per batch."""
        if x.ndim < 1:
            raise DetectionError(f"OOD detection needs x (n, ...), got {tuple(x.shape)}")
        flags = self.reference.outliers(x)
        self._queries += int(flags.shape[0])
        self._outliers += int(flags.sum())
        if self._queries >= self.min_queries:
            from dlsec.intervals import wilson_interval

            self._lower = wilson_interval(self._outliers, self._queries)[0]
            if self._lower > self.threshold and self._flagged_at is None:
                self._flagged_at = self._queries
        return self.state

    @property
    def state(self) -> OodState:
        return OodState(
            queries=self._queries,
            outliers=self._outliers,
            lower=self._lower,
            flagged=self._lower is not None and self._lower > self.threshold,
            flagged_at=self._flagged_at,
        )

    def state_dict(self) -> dict[str, Any]:
        """Counts and settings; the shared reference is not included (only its radius)."""
        return {
            "threshold": self.threshold,
            "min_queries": self.min_queries,
            "radius": self.reference.radius,
            "queries": self._queries,
            "outliers": self._outliers,
            "lower": self._lower,
            "flagged_at": self._flagged_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` onto this detector's reference."""
        try:
            fresh = OodShare(self.reference, threshold=state["threshold"],
                             min_queries=state["min_queries"])
            radius = float(state["radius"])
            queries, outliers = int(state["queries"]), int(state["outliers"])
            lower = None if state["lower"] is None else float(state["lower"])
            flagged_at = None if state["flagged_at"] is None else int(state["flagged_at"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DetectionError(f"not an OodShare state_dict: {exc}") from exc
        if not math.isclose(radius, self.reference.radius, rel_tol=1e-6):
            raise DetectionError("OodShare state_dict was made with another reference")
        if not 0 <= outliers <= queries:
            raise DetectionError("not an OodShare state_dict: outliers must be in [0, queries]")
        self.threshold, self.min_queries = fresh.threshold, fresh.min_queries
        self._queries, self._outliers = queries, outliers
        self._lower, self._flagged_at = lower, flagged_at


# -- several named detectors per key --------------------------------------------------------

DETECTOR_NAMES = ("prada", "ood")
DetectorState = PradaState | OodState


@dataclass(frozen=True)
class Verdict:
    """One detector's state for a key after a batch; ``new`` when this batch made the
    detector flag the key for the first time."""

    detector: str
    state: DetectorState
    new: bool


class KeyDetectors:
    """Several named detectors per API key (``"prada"``: :class:`Prada`, ``"ood"``:
    :class:`OodShare`), each created on first use with shared settings.

    Thread-safe: one lock serialises observations (the app's endpoints run in a thread
    pool). States live in memory: a restarted server starts every key's detectors afresh
    (the app persists the *flag* in its key database).

    Args:
        names: which detectors, a subset of :data:`DETECTOR_NAMES` (may be empty).
        prada_delta, prada_min_distances: see :class:`Prada`.
        reference: benign inputs for ``"ood"`` (required by it), see :class:`OodReference`.
        ood_quantile, ood_threshold, ood_min_queries: see :class:`OodReference` and
            :class:`OodShare`.
    """

    def __init__(
        self,
        names: tuple[str, ...] | list[str] = ("prada",),
        *,
        prada_delta: float = DEFAULT_DELTA,
        prada_min_distances: int = DEFAULT_MIN_DISTANCES,
        reference: Tensor | None = None,
        ood_quantile: float = DEFAULT_OOD_QUANTILE,
        ood_threshold: float = DEFAULT_OOD_THRESHOLD,
        ood_min_queries: int = DEFAULT_OOD_MIN_QUERIES,
    ) -> None:
        names = tuple(names)
        for name in names:
            if name not in DETECTOR_NAMES:
                raise DetectionError(
                    f"unknown detector {name!r} (choose from {', '.join(DETECTOR_NAMES)})"
                )
        if len(set(names)) != len(names):
            raise DetectionError(f"detectors named twice: {', '.join(names)}")
        self.names = names
        self._prada = {"delta": prada_delta, "min_distances": prada_min_distances}
        Prada(**self._prada)  # type: ignore[arg-type]  # validate now
        self.reference: OodReference | None = None
        self._ood: dict[str, Any] = {"threshold": ood_threshold, "min_queries": ood_min_queries}
        if "ood" in names:
            if reference is None:
                raise DetectionError("the ood detector needs a benign reference sample")
            self.reference = OodReference(reference, quantile=ood_quantile)
            OodShare(self.reference, **self._ood)  # validate now
        self._keys: dict[str, dict[str, Prada | OodShare]] = {}
        self._lock = threading.Lock()

    def _make(self, name: str) -> Prada | OodShare:
        if name == "prada":
            return Prada(**self._prada)  # type: ignore[arg-type]
        assert self.reference is not None
        return OodShare(self.reference, **self._ood)

    def get(self, key: str) -> dict[str, Prada | OodShare]:
        """The detectors of ``key`` by name (created on first use)."""
        with self._lock:
            return self._get(key)

    def _get(self, key: str) -> dict[str, Prada | OodShare]:
        dets = self._keys.get(key)
        if dets is None:
            dets = self._keys[key] = {n: self._make(n) for n in self.names}
        return dets

    def observe(self, key: str, x: Tensor, predicted: Tensor) -> list[Verdict]:
        """Feed ``key``'s batch (with the model's predicted classes) to each detector."""
        verdicts = []
        with self._lock:
            for name, det in self._get(key).items():
                before = det.state.flagged_at
                state = det.observe(x, predicted)
                verdicts.append(Verdict(name, state, before is None and state.flagged_at is not None))
        return verdicts

    def flagged(self) -> list[str]:
        """Keys that any detector flags now, sorted."""
        with self._lock:
            return sorted(k for k, d in self._keys.items() if any(v.state.flagged for v in d.values()))

    def __len__(self) -> int:
        return len(self._keys)
