"""A bounded load generator for a ``dlsec serve`` endpoint on this machine.

``run_load`` sends ``requests`` predictions from ``clients`` concurrent threads (one
``httpx.Client`` each, kept alive) to ``POST /v1/predict``, stops early at ``duration_s``,
and returns every request's status code and latency and the sha256 of the inputs it
sent, computed the way the server logs them (``sha256`` of the float32 C-order bytes), so
a test can match the answers to the query log. Loopback only: any other host is refused
(it is a test and benchmark tool, not a way to load someone else's server).

Inputs are seeded: request ``i`` sends ``batch`` rows drawn uniformly within ``bounds``
from ``numpy.random.default_rng((seed, i))``, whatever thread sends it, so two runs with
one seed send the same bytes.

Example:
    >>> report = run_load("http://127.0.0.1:8000", token, input_shape=(64,),   # doctest: +SKIP
    ...                   bounds=(0.0, 1.0), clients=8, requests=400, batch=1)
    >>> report.counts(), report.percentile(50), report.requests_per_second()  # doctest: +SKIP
    ({200: 400}, 0.0031, 1800.2)

Notes:
    A request that got no HTTP answer (connection refused or reset, a timeout) has status
    0. A client thread keeps going after one: the caller bounds the run with
    ``requests`` and ``duration_s``. ``on_result`` is called from the client threads as
    each request ends (keep it short and thread-safe); a crash test uses it to kill the
    server mid-load.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import httpx
import numpy as np

from dlsec.errors import DlsecError

Encoding = Literal["npy", "json"]


class LoadError(DlsecError):
    """A load run that cannot start: a non-loopback URL or a bad argument."""


def check_loopback_url(url: str) -> str:
    """``url`` without a trailing slash, if it is ``http(s)://`` on a loopback host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoadError(f"load needs an http:// URL, got {url!r}")
    host = parts.hostname
    if host.lower() != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise LoadError(f"load generation is for loopback servers only, not {host!r}")
    return url.rstrip("/")


@dataclass(frozen=True)
class RequestResult:
    """One request: its index, HTTP status (0: no answer), seconds from send to answer,
    start and end (seconds since the run began), rows sent and the sha256 of its inputs."""

    index: int
    status: int
    seconds: float
    start: float
    end: float
    rows: int
    input_sha256: str


@dataclass
class LoadReport:
    """Every request of a run (in index order) and the run's wall seconds."""

    results: list[RequestResult]
    wall_seconds: float
    clients: int
    batch: int
    encoding: Encoding
    stopped_by_duration: bool = False
    errors: list[str] = field(default_factory=list)

    def counts(self) -> dict[int, int]:
        """Requests by status code (0: no answer)."""
        return dict(sorted(Counter(r.status for r in self.results).items()))

    def answered(self) -> list[RequestResult]:
        """The requests answered 200."""
        return [r for r in self.results if r.status == 200]

    def percentile(self, q: float, *, status: int | None = 200) -> float:
        """The ``q``-th percentile (0-100, linear interpolation) of the latencies of the
        requests with ``status`` (None: all), in seconds; NaN when there are none."""
        lat = [r.seconds for r in self.results if status is None or r.status == status]
        return float(np.percentile(lat, q)) if lat else math.nan

    def requests_per_second(self, *, status: int | None = 200) -> float:
        """Requests with ``status`` (None: all) per second of the run's wall time."""
        n = sum(1 for r in self.results if status is None or r.status == status)
        return n / self.wall_seconds if self.wall_seconds > 0 else math.nan


def model_facts(url: str, api_key: str, *, timeout_s: float = 10.0
                ) -> tuple[tuple[int, ...], tuple[float, float]]:
    """The served model's input shape and bounds, from ``GET /v1/model``."""
    base = check_loopback_url(url)
    r = httpx.get(f"{base}/v1/model", headers={"Authorization": f"Bearer {api_key}"},
                  timeout=timeout_s)
    if r.status_code != 200:
        raise LoadError(f"GET /v1/model answered {r.status_code}: {r.text[:200]}")
    facts = r.json()
    lo, hi = facts["bounds"]
    return tuple(int(s) for s in facts["input_shape"]), (float(lo), float(hi))


def make_inputs(index: int, *, seed: int, batch: int, input_shape: tuple[int, ...],
                bounds: tuple[float, float]) -> np.ndarray:
    """The float32 inputs of request ``index``: ``(batch, *input_shape)`` uniform in
    ``bounds``, from ``default_rng((seed, index))``."""
    rng = np.random.default_rng((seed, index))
    lo, hi = bounds
    x = rng.uniform(lo, hi, size=(batch, *input_shape)).astype(np.float32)
    return np.ascontiguousarray(x)


def encode(x: np.ndarray, encoding: Encoding) -> tuple[bytes, str]:
    """The request body and content type of ``x`` as ``.npy`` or JSON."""
    if encoding == "npy":
        buf = io.BytesIO()
        np.save(buf, x.astype("<f4"), allow_pickle=False)
        return buf.getvalue(), "application/x-npy"
    import json

    return json.dumps({"inputs": x.tolist()}).encode(), "application/json"


def run_load(
    url: str,
    api_key: str | None,
    *,
    input_shape: tuple[int, ...],
    bounds: tuple[float, float],
    clients: int = 8,
    requests: int = 400,
    duration_s: float = 60.0,
    batch: int = 1,
    encoding: Encoding = "npy",
    seed: int = 0,
    timeout_s: float = 10.0,
    on_result: Callable[[RequestResult], None] | None = None,
) -> LoadReport:
    """Send ``requests`` predictions from ``clients`` threads; stop early at
    ``duration_s`` (requests not sent by then are not in the report).

    Raises:
        LoadError: a non-loopback URL, or a count, batch or duration below 1.
    """
    base = check_loopback_url(url)
    if clients < 1 or requests < 1 or batch < 1:
        raise LoadError(f"clients, requests and batch must be >= 1, got {clients}, "
                        f"{requests}, {batch}")
    if not (duration_s > 0 and timeout_s > 0):
        raise LoadError("duration_s and timeout_s must be > 0")
    if encoding not in ("npy", "json"):
        raise LoadError(f"encoding must be 'npy' or 'json', got {encoding!r}")
    shape = tuple(int(s) for s in input_shape)
    bodies = []
    for i in range(requests):  # built before the clock starts: the run measures the server
        x = make_inputs(i, seed=seed, batch=batch, input_shape=shape, bounds=bounds)
        body, ctype = encode(x, encoding)
        bodies.append((body, ctype, hashlib.sha256(x.tobytes()).hexdigest()))
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    lock = threading.Lock()
    next_index = [0]
    results: list[RequestResult] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    deadline = t0 + duration_s
    stopped = threading.Event()

    def take() -> int | None:
        with lock:
            if next_index[0] >= requests:
                return None
            if time.perf_counter() >= deadline:
                stopped.set()
                return None
            next_index[0] += 1
            return next_index[0] - 1

    def client() -> None:
        with httpx.Client(base_url=base, timeout=timeout_s) as http:
            while (i := take()) is not None:
                body, ctype, digest = bodies[i]
                start = time.perf_counter()
                try:
                    r = http.post("/v1/predict", content=body,
                                  headers={**headers, "Content-Type": ctype})
                    r.read()
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status = 0
                    with lock:
                        if len(errors) < 20:
                            errors.append(f"request {i}: {type(exc).__name__}: {exc}")
                end = time.perf_counter()
                res = RequestResult(index=i, status=status, seconds=end - start,
                                    start=start - t0, end=end - t0, rows=batch,
                                    input_sha256=digest)
                with lock:
                    results.append(res)
                if on_result is not None:
                    on_result(res)

    threads = [threading.Thread(target=client, name=f"loadgen-{c}", daemon=True)
               for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    results.sort(key=lambda r: r.index)
    return LoadReport(results=results, wall_seconds=wall, clients=clients, batch=batch,
                      encoding=encoding, stopped_by_duration=stopped.is_set(), errors=errors)


__all__ = ["LoadError", "LoadReport", "RequestResult", "check_loopback_url", "encode",
           "make_inputs", "model_facts", "run_load"]
