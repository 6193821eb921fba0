"""The model server's HTTP API (FastAPI): ``create_app`` puts one model behind keys,
rate limits, budgets and the query log.

Routes (the contract :class:`dlsec.serve.http_oracle.HttpOracle` speaks):

* ``POST /v1/predict`` (key): body ``{"inputs": [row, ...]}`` (``application/json``)
  or a float32 ``.npy`` file (``application/x-npy``), see
  :func:`dlsec.serve.limits.parse_inputs`. Answer ``{"outputs": [...], "policy": spec,
  "remaining": int}``: the model's softmax probabilities through the key's output policy
  (the server's when the key has none), a list of float rows, or of int labels for
  ``label``; ``remaining`` is the key's rows left (``-1``: no budget).
* ``GET /v1/model`` (key): ``input_shape``, ``classes``, ``bounds``, ``policy`` (the
  caller's), ``max_rows`` and ``max_body_bytes``. Nothing else of the card (no
  architecture, metrics or training record).
* ``GET /metrics`` (key): Prometheus text from a registry of this app alone.
* ``GET /healthz`` (no key): ``{"status": "ok"}``.
* ``GET /openapi.json`` (no key): the schema. It is public on purpose: it names routes
  and the security scheme, nothing about the model or the keys; the docs UIs are off.

No route uploads, replaces or deletes a model.

A key is sent as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. A prediction is
handled in this order: authenticate (401 with ``WWW-Authenticate: Bearer`` for a missing,
unknown or revoked key) -> rate limit (429 with ``Retry-After``, whole seconds rounded
up) -> read and check the body (413 too large, 422 malformed, ``{"detail": msg}``) ->
predict -> :meth:`KeyStore.record` (charge the rows, log the request) -> the key's
extraction detectors see the batch (a new flag is stored and counted before the answer)
-> answer. A flagged key (``detect=``, ``on_flag=``) is refused right after
authentication: 403 ``{"code": "extraction_suspected"}`` under ``block``, or rate limited
to ``throttle_rate`` (429) under ``throttle``. A
budget the request does not fit is 403 ``{"detail": ..., "code": "budget_exhausted",
"remaining": N}`` and nothing is charged or logged. A database locked past its busy
timeout is 503 with ``Retry-After: 1``, never a 500. Only predictions are rate limited
and charged; ``/v1/model`` and ``/metrics`` check the key and read nothing else.

Example:
    >>> store = KeyStore(Path("keys.db"))                               # doctest: +SKIP
    >>> app = create_app("models/digits", store=store, policy="topk:3")  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)                   # doctest: +SKIP

Notes:
    The routes and dependencies are ``async`` and run on the event loop, the model's
    forward pass and the store's calls included, as a bare FastAPI endpoint runs its
    model: each FastAPI thread-pool hop (one per sync dependency and one per sync route)
    cost about 0.25 ms, and Starlette's ``@app.middleware("http")`` as much again (the
    metrics middleware is a plain ASGI one); without them a keys-only batch of 64 went
    from 3.0x to 1.7x a bare endpoint's p50 (``benchmarks/serving.py``). The store's
    writes are short WAL transactions; another process holding the write lock (e.g.
    ``dlsec keys revoke``) pauses the server that long, at most the store's busy
    timeout, after which the request is 503. The body is read by a dependency that stops
    at ``max_body_bytes`` (a larger body is 413 before it is all read). A request that was answered has exactly one log row, written before the
    answer; a refused one has none. The ``noise`` policy draws from one generator per
    app, seeded by ``seed`` (None: a fresh secret seed, so a client cannot predict the
    noise), under a lock.

    Detection runs in the request, under one lock for all keys, so that the request after
    the flagging one is already refused. Its cost grows with a key's history: a PRADA
    update of a batch of 64 after 10,000 queries took 1.3 ms (growing set 1,564) to 4 ms
    (10,000: uniform queries, each one enters it) on one CPU thread, the OOD share
    0.3-0.4 ms (reference 1,438 rows). In-process (TestClient, npy, batch 64 of uniform
    queries, p50 over a key's requests 100-200): bare 3.9 ms, PRADA + OOD in the request
    13 ms, with ``detect_background`` 8 ms (the worker still takes CPU). Detector states
    are in memory (a restart starts them afresh); flags and events are in the key database.

    This module does not use ``from __future__ import annotations``: FastAPI reads the
    ``Annotated[..., Depends(fn)]`` of the routes at run time, and ``fn`` is local to
    :func:`create_app`.
"""

import hashlib
import json
import logging
import math
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic_core import to_json
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from torch import Tensor, nn

from dlsec import __version__
from dlsec.errors import DlsecError
from dlsec.models.card import ModelCard
from dlsec.models.io import load
from dlsec.output_policies import OutputPolicy
from dlsec.serve.detection import DEFAULT_DELTA, DetectionError, KeyDetectors
from dlsec.serve.ledger import ServedWatermark
from dlsec.serve.limits import CONTENT_TYPES, RateLimiter, RequestError, RequestLimits, parse_inputs
from dlsec.serve.store import BudgetExceeded, KeyRecord, KeyRevoked, KeyStore, StoreError
from dlsec.training import resolve_device

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY (dlsec keys create)")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the same key in X-API-Key")

_ROUTES = ("/v1/predict", "/v1/model", "/metrics", "/healthz", "/openapi.json")

_PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {
                "type": "object", "required": ["inputs"],
                "properties": {"inputs": {"type": "array", "items": {}}},
            }},
            "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


ON_FLAG_ACTIONS = ("log", "throttle", "block")
DEFAULT_THROTTLE_RATE = 0.2  # requests per second of a flagged key under "throttle"

_log = logging.getLogger(__name__)


class ServeError(DlsecError):
    """A server that cannot be built (bad policy, limits or model argument)."""


class _Watcher:
    """Detection off the request path: answered batches go to a queue that one daemon
    worker thread drains (started with the first batch, then kept: a thread of its own
    keeps one store connection). ``join`` waits until every submitted batch has been
    observed."""

    def __init__(self, fn: Callable[..., None], *, maxsize: int = 256) -> None:
        self._fn = fn
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=maxsize)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, *args: Any) -> None:
        """Queue one batch (blocks while ``maxsize`` batches wait: back-pressure)."""
        self._queue.put(args)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dlsec-detect",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            args = self._queue.get()
            try:
                self._fn(*args)
            except Exception:  # a detector bug must not stop detection for every key
                _log.exception("extraction detection failed for one batch")
            finally:
                self._queue.task_done()

    def join(self) -> None:
        self._queue.join()


class _Blocked(Exception):
    """A flagged key under ``on_flag="block"`` (answered 403 extraction_suspected)."""


class _Unavailable(Exception):
    """The key database is locked past its timeout (answered 503)."""


def _policy(spec: OutputPolicy | str) -> OutputPolicy:
    if isinstance(spec, OutputPolicy):
        return spec
    return OutputPolicy.parse(spec)


class _Metrics:
    """The app's Prometheus metrics, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("dlsec_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.rows = Counter("dlsec_rows_answered", "Input rows answered by /v1/predict", registry=r)
        self.latency = Histogram("dlsec_request_seconds", "Request latency by route", ["route"],
                                 registry=r)
        self.unauthorized = Counter("dlsec_unauthorized", "Requests refused for their key (401)",
                                    registry=r)
        self.rate_limited = Counter("dlsec_rate_limited", "Requests refused by a rate limit (429)",
                                    registry=r)
        self.budget_exhausted = Counter("dlsec_budget_exhausted",
                                        "Predictions refused for a spent budget (403)", registry=r)
        self.flagged = Counter("dlsec_extraction_flagged",
                               "Keys newly flagged by an extraction detector", ["detector"],
                               registry=r)
        self.blocked = Counter("dlsec_extraction_blocked",
                               "Predictions refused for a flagged key (403)", registry=r)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)
        if status == 401:
            self.unauthorized.inc()
        elif status == 429:
            self.rate_limited.inc()


class _Observe:
    """Counts and times every HTTP request (a plain ASGI middleware: Starlette's
    ``@app.middleware("http")`` wraps each request in extra tasks and streams, which cost
    about as much as the model's forward pass at batch 64)."""

    def __init__(self, app: ASGIApp, *, metrics: _Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception that escapes every handler is answered 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            route = path if path in _ROUTES else "other"
            self.metrics.observe(route, status, time.perf_counter() - start)


def _locked(fn: Callable[[], Any]) -> Any:
    """``fn()`` with a locked or closed database turned into :class:`_Unavailable`."""
    try:
        return fn()
    except sqlite3.OperationalError as exc:
        raise _Unavailable(str(exc)) from None
    except StoreError as exc:
        if isinstance(exc, (BudgetExceeded, KeyRevoked)):
            raise
        raise _Unavailable(str(exc)) from None


def create_app(
    model: str | Path | tuple[nn.Module, ModelCard],
    *,
    store: KeyStore,
    policy: OutputPolicy | str = "scores",
    limits: RequestLimits | None = None,
    rate: float | None = None,
    burst: int | None = None,
    device: str | torch.device = "cpu",
    trust_code: bool = False,
    seed: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    watermark: ServedWatermark | None = None,
    detect: Sequence[str] = (),
    on_flag: str = "throttle",
    throttle_rate: float = DEFAULT_THROTTLE_RATE,
    prada_delta: float = DEFAULT_DELTA,
    reference: Tensor | None = None,
    detect_background: bool = False,
) -> FastAPI:
    """The FastAPI app serving ``model`` (a directory written by
    :func:`dlsec.models.save`, loaded safely, or a ``(module, card)`` pair) with the keys
    of ``store`` (see the module docstring for the routes and the order of checks).

    Args:
        policy: the output policy of keys that have none of their own (spec or object).
        limits: body size and rows per request (default :class:`RequestLimits`).
        rate, burst: the rate limit (requests per second, bucket size; ``burst``
            defaults to ``ceil(rate)``) of keys that have none of their own; None: no
            limit for them.
        device: where the model runs (``auto``, ``cpu``, ``cuda``...).
        trust_code: let a directory's card name a ``module:factory`` architecture.
        seed: seeds the ``noise`` policy's generator (None: a secret random seed).
        clock: the rate limiter's monotonic clock (tests inject one).
        watermark: DAWN (:class:`dlsec.serve.ledger.ServedWatermark`): a keyed-hash-chosen
            fraction of each key's inputs is answered with a wrong but consistent label
            (in the form of the key's policy) and recorded before the request is charged
            and logged; the log holds what the client got. None: no watermark.
        detect: extraction detectors watching every key's answered batches, names of
            :data:`dlsec.serve.detection.DETECTOR_NAMES` (``"prada"``, ``"ood"``; the
            latter needs ``reference``); empty: none (``dlsec serve`` turns PRADA on).
        on_flag: what a key gets once a detector flags it (the flag is kept in the store,
            so a restarted server applies it too; ``dlsec keys unflag`` clears it):
            ``"log"`` (the event only), ``"throttle"`` (its later predictions at most
            ``throttle_rate`` per second, burst 1: 429 with Retry-After beyond) or
            ``"block"`` (403 ``{"code": "extraction_suspected"}``, nothing charged).
        prada_delta: PRADA's Shapiro-Wilk threshold (:class:`dlsec.serve.detection.Prada`).
        reference: benign inputs (n, *input_shape) for the ``ood`` detector.
        detect_background: observe answered batches in a worker thread after the answer
            instead of before it, in one daemon thread (lower latency; a flag then takes
            effect a few requests later, as soon as the worker reaches the flagging batch).

    Raises:
        ServeError, PolicyError, ModelError: a bad argument, policy or model directory.
    """
    default_policy = _policy(policy)
    limits = limits if limits is not None else RequestLimits()
    if rate is not None and not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise ServeError(f"rate must be a finite number of requests per second > 0, got {rate!r}")
    if burst is not None:
        if rate is None:
            raise ServeError("a burst needs a rate (requests per second)")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ServeError(f"burst must be an integer >= 1, got {burst!r}")
    elif rate is not None:
        burst = max(1, math.ceil(rate))
    if on_flag not in ON_FLAG_ACTIONS:
        raise ServeError(f"on_flag must be one of {', '.join(ON_FLAG_ACTIONS)}, got {on_flag!r}")
    if not (isinstance(throttle_rate, (int, float)) and math.isfinite(throttle_rate)
            and throttle_rate > 0):
        raise ServeError(f"throttle rate must be a finite number of requests per second > 0, "
                         f"got {throttle_rate!r}")
    try:
        detectors = KeyDetectors(tuple(detect), prada_delta=prada_delta, reference=reference)
    except DetectionError as exc:
        raise ServeError(str(exc)) from None
    dev = resolve_device(device)
    if isinstance(model, tuple):
        net, card = model
        net = net.to(dev).eval()
    else:
        net, card = load(model, device=dev, trust_code=trust_code)
    input_shape = tuple(int(s) for s in card.input_shape)
    if detectors.reference is not None and detectors.reference.features != math.prod(input_shape):
        raise ServeError(f"the OOD reference has {detectors.reference.features} features per "
                         f"row, the model's input shape {list(input_shape)} has "
                         f"{math.prod(input_shape)}")
    bounds = (float(card.bounds[0]), float(card.bounds[1]))
    generator = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
    noise_lock = threading.Lock()
    limiter = RateLimiter(clock=clock)
    metrics = _Metrics()
    policies: dict[str, OutputPolicy] = {}

    app = FastAPI(title="dlsec model server", version=__version__, docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json")
    app.state.store = store
    app.state.card = card
    app.state.metrics = metrics
    app.state.detectors = detectors

    # -- errors and metrics ---------------------------------------------------------------
    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        headers = {}
        if exc.status == 429:
            wait = exc.retry_after if exc.retry_after is not None else 1.0
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(_Blocked)
    async def _blocked(request: Request, exc: _Blocked) -> JSONResponse:
        metrics.blocked.inc()
        return JSONResponse({"detail": "this key is blocked: its queries look like a model "
                             "extraction attack (an administrator can clear the flag)",
                             "code": "extraction_suspected"}, status_code=403)

    @app.exception_handler(_Unavailable)
    async def _unavailable(request: Request, exc: _Unavailable) -> JSONResponse:
        return JSONResponse({"detail": "the key database is busy; retry shortly"},
                            status_code=503, headers={"Retry-After": "1"})

    app.add_middleware(_Observe, metrics=metrics)

    # -- dependencies ---------------------------------------------------------------------
    async def caller(
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        x_api_key: Annotated[str | None, Depends(_api_key)],
    ) -> KeyRecord:
        """The live key of the request, or 401."""
        token = bearer.credentials if bearer is not None else x_api_key
        key = _locked(lambda: store.authenticate(token)) if token else None
        if key is None:
            what = "a missing" if not token else "an unknown or revoked"
            raise HTTPException(401, f"{what} API key (send Authorization: Bearer KEY)",
                                headers={"WWW-Authenticate": "Bearer"})
        return key

    async def limited_caller(key: Annotated[KeyRecord, Depends(caller)]) -> KeyRecord:
        """The caller, after its rate limit (the key's own, else the server's)."""
        k_rate, k_burst = (key.rate, key.burst) if key.rate is not None else (rate, burst)
        if key.flagged and on_flag == "block":
            raise _Blocked()
        if key.flagged and on_flag == "throttle":
            slow = min(throttle_rate, k_rate) if k_rate is not None else throttle_rate
            limiter.enforce(f"{key.id}/flagged", rate=slow, burst=1)
            return key
        if k_rate is not None:
            limiter.enforce(key.id, rate=k_rate, burst=k_burst or max(1, math.ceil(k_rate)))
        return key

    async def body(request: Request) -> bytes:
        """The request body, refused (413) as soon as it passes ``max_body_bytes``."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise RequestError(413, f"request body of {declared} bytes exceeds the limit of "
                               f"{limits.max_body_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise RequestError(413, f"request body exceeds the limit of "
                                   f"{limits.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def key_policy(key: KeyRecord) -> OutputPolicy:
        if key.policy is None:
            return default_policy
        found = policies.get(key.policy)
        if found is None:
            found = policies[key.policy] = OutputPolicy.parse(key.policy)
        return found

    def answer(x: Tensor, pol: OutputPolicy, key_id: str) -> tuple[list[Any], Tensor]:
        with torch.inference_mode():
            probs = torch.softmax(net(x.to(dev)).float(), dim=1).cpu()
        if pol.kind == "noise":
            with noise_lock:
                out = pol.apply(probs, generator=generator)
        else:
            out = pol.apply(probs)
        if watermark is not None:  # records committed here, before store.record
            out = _locked(lambda: watermark.apply(key_id, x, probs, out))
        result: list[Any] = out.tolist()
        return result, probs.argmax(dim=1)

    def watch(key: KeyRecord, x: Tensor, predicted: Tensor) -> None:
        """Feed an answered batch to the key's detectors; store and count new flags. A
        database error here is logged, not raised: the answer is charged already."""
        for verdict in detectors.observe(key.id, x, predicted):
            if not verdict.new:
                continue
            metrics.flagged.labels(detector=verdict.detector).inc()
            try:
                store.flag(key.id, detector=verdict.detector, queries=verdict.state.queries,
                           statistic=verdict.state.statistic, action=on_flag)
            except (sqlite3.Error, StoreError) as exc:
                _log.error("could not store the %s flag of key %s: %s", verdict.detector,
                           key.id, exc)

    watcher = _Watcher(watch) if detect_background and detectors.names else None
    app.state.watcher = watcher

    # -- routes ---------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: no key needed, nothing about the model."""
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model_info(key: Annotated[KeyRecord, Depends(caller)]) -> dict[str, Any]:
        """The model's public facts and the caller's output policy."""
        return {
            "input_shape": list(input_shape),
            "classes": list(card.classes),
            "bounds": list(bounds),
            "policy": key_policy(key).spec(),
            "max_rows": limits.max_rows,
            "max_body_bytes": limits.max_body_bytes,
        }

    @app.post("/v1/predict", openapi_extra=_PREDICT_BODY)
    async def predict(
        request: Request,
        key: Annotated[KeyRecord, Depends(limited_caller)],
        raw: Annotated[bytes, Depends(body)],
    ) -> Any:
        """The model's probabilities for a batch, through the caller's output policy."""
        x = parse_inputs(raw, request.headers.get("content-type", ""), input_shape=input_shape,
                         bounds=bounds, limits=limits)
        pol = key_policy(key)
        outputs, predicted = answer(x, pol, key.id)
        digest = hashlib.sha256(x.numpy().tobytes()).hexdigest()
        # pydantic-core's encoder (what FastAPI uses for a typed answer): about 10x faster
        # than json.dumps on 64 x 10 floats, the same values (shortest round-trip repr)
        text = to_json(outputs).decode()
        spec = pol.spec()
        try:
            remaining = _locked(lambda: store.record(
                key.id, rows=int(x.shape[0]), input_sha256=digest, outputs=text, policy=spec))
        except BudgetExceeded as exc:
            metrics.budget_exhausted.inc()
            return JSONResponse(status_code=403, content={
                "detail": f"query budget exhausted: {exc.remaining} rows left, the request "
                          f"has {exc.rows}",
                "code": "budget_exhausted", "remaining": exc.remaining})
        except KeyRevoked:
            raise HTTPException(401, "an unknown or revoked API key",
                                headers={"WWW-Authenticate": "Bearer"}) from None
        metrics.rows.inc(int(x.shape[0]))
        if watcher is not None:
            watcher.submit(key, x, predicted)
        elif detectors.names:
            watch(key, x, predicted)
        # the outputs were serialised once, for the log: the answer reuses those bytes
        content = (f'{{"outputs":{text},"policy":{json.dumps(spec)},'
                   f'"remaining":{int(remaining)}}}')
        return Response(content, media_type="application/json")

    @app.get("/metrics", response_class=Response)
    async def metrics_text(key: Annotated[KeyRecord, Depends(caller)]) -> Response:
        """Prometheus text: requests by route and status, rows answered, latency."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


__all__ = ["CONTENT_TYPES", "ServeError", "create_app"]
