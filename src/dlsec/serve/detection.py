"""PRADA model-extraction detection (Juuti et al., "PRADA: Protecting Against DNN Model
Stealing Attacks", EuroS&P 2019), one detector per API key.

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


def _shapiro_w(values: list[float]) -> float:
    try:
        from scipy.stats import shapiro
    except ImportError as exc:  # scipy is a base dependency; this guards broken installs
        raise DetectionError("PRADA needs scipy (pip install scipy)") from exc
    # A constant sample has no spread: W is undefined (scipy warns and answers 1.0). All
    # queries at exactly the same distance is the most synthetic stream there is.
    if max(values) - min(values) <= 1e-12 * max(1.0, abs(max(values))):
        return 0.0
    with warnings.catch_warnings():
        # Past 5000 values scipy warns that its *p-value* may be inaccurate; PRADA uses
        # only the statistic W, so the warning would only fill the server's log.
        warnings.filterwarnings("ignore", message=".*N > 5000.*", category=UserWarning)
        return float(shapiro(values).statistic)


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
        self._growing: dict[int, Tensor] = {}  # class -> (k, features) float64
        self._entry_dists: dict[int, list[float]] = {}  # class -> DG_c (starts with 0)
        self._threshold: dict[int, float] = {}  # class -> T_c
        self._distances: list[float] = []  # D, in arrival order
        self._queries = 0
        self._w: float | None = None
        self._flagged_at: int | None = None

    def _observe_one(self, x: Tensor, cls: int) -> None:
        self._queries += 1
        grown = self._growing.get(cls)
        if grown is None:
            self._growing[cls] = x.unsqueeze(0)
            self._entry_dists[cls] = [0.0]
            self._threshold[cls] = 0.0
            return
        if grown.shape[1] != x.shape[0]:
            raise DetectionError(
                f"query has {x.shape[0]} features, earlier queries had {grown.shape[1]}"
            )
        d = float((grown - x).norm(dim=1).min())
        self._distances.append(d)
        if d > self._threshold[cls]:
            self._growing[cls] = torch.cat([grown, x.unsqueeze(0)])
            dg = self._entry_dists[cls]
            dg.append(d)
            mean = math.fsum(dg) / len(dg)
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in dg) / len(dg))
            self._threshold[cls] = max(self._threshold[cls], mean - std)

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
        classes = predicted.detach().to("cpu").tolist() if self.per_class else [0] * len(flat)
        for row, cls in zip(flat, classes, strict=True):
            self._observe_one(row, int(cls))
        if len(self._distances) >= self.min_distances:
            self._w = _shapiro_w(self._distances)
            if self._w < self.delta and self._flagged_at is None:
                self._flagged_at = self._queries
        return self.state

    @property
    def state(self) -> PradaState:
        return PradaState(
            queries=self._queries,
            distances=len(self._distances),
            growing_set=sum(int(g.shape[0]) for g in self._growing.values()),
            w=self._w,
            flagged=self._w is not None and self._w < self.delta,
            flagged_at=self._flagged_at,
        )

    @property
    def distances(self) -> list[float]:
        """The set D: each query's minimum distance to its class's growing set, in order."""
        return list(self._distances)

    def growing_set(self, cls: int = 0) -> Tensor:
        """The flattened queries of ``G_cls`` (float64), in the order they entered."""
        grown = self._growing.get(cls)
        return grown.clone() if grown is not None else torch.zeros(0, dtype=torch.float64)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume this detector (tensors and plain Python values)."""
        return {
            "delta": self.delta,
            "min_distances": self.min_distances,
            "per_class": self.per_class,
            "growing": {c: g.clone() for c, g in self._growing.items()},
            "entry_dists": {c: list(v) for c, v in self._entry_dists.items()},
            "threshold": dict(self._threshold),
            "distances": list(self._distances),
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
            growing = {int(c): g.to(torch.float64).clone() for c, g in state["growing"].items()}
            entry = {int(c): [float(v) for v in d] for c, d in state["entry_dists"].items()}
            threshold = {int(c): float(t) for c, t in state["threshold"].items()}
            distances = [float(v) for v in state["distances"]]
            queries = int(state["queries"])
            w = None if state["w"] is None else float(state["w"])
            flagged_at = None if state["flagged_at"] is None else int(state["flagged_at"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DetectionError(f"not a PRADA state_dict: {exc}") from exc
        if not (growing.keys() == entry.keys() == threshold.keys()):
            raise DetectionError("not a PRADA state_dict: per-class entries disagree")
        self.delta, self.min_distances, self.per_class = (
            fresh.delta,
            fresh.min_distances,
            fresh.per_class,
        )
        self._growing, self._entry_dists, self._threshold = growing, entry, threshold
        self._distances, self._queries = distances, queries
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
