"""Request limits for the model server: per-key rate limits and checked request bodies.

Everything a client sends is refused with a :class:`RequestError` that carries the HTTP
status the app answers with (413 too large, 422 malformed, 429 too many requests, with
``Retry-After``) and a one-line message; nothing in here raises anything else on bad
input, so a hostile body is never a 500.

Example:
    >>> limiter = RateLimiter()
    >>> limiter.enforce("key-1", rate=2.0, burst=3)          # raises RequestError(429) when spent
    >>> x = parse_inputs(b'{"inputs": [[0.1, 0.2]]}', "application/json",
    ...                  input_shape=(2,), bounds=(0.0, 1.0), limits=RequestLimits())
    >>> tuple(x.shape), x.dtype
    ((1, 2), torch.float32)
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.lib import format as npy_format
from torch import Tensor

from dlsec.errors import DlsecError

JSON_TYPE = "application/json"
NPY_TYPE = "application/x-npy"
CONTENT_TYPES: tuple[str, ...] = (JSON_TYPE, NPY_TYPE)


class RequestError(DlsecError):
    """A request the server refuses: ``status`` is 413, 422 or 429, ``message`` one line
    for the client, ``retry_after`` the seconds to wait (429 only)."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.retry_after = retry_after


# -- rate limits --------------------------------------------------------------------------
class TokenBucket:
    """A token bucket: ``burst`` tokens at most, refilled at ``rate`` tokens per second,
    full at the start. Thread-safe; ``clock`` (seconds, monotonic) is injectable for tests.

    Example:
        >>> b = TokenBucket(rate=2.0, burst=3)
        >>> [b.take() for _ in range(4)][-1] > 0   # the 4th take waits ~0.5 s
        True
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
            raise DlsecError(f"rate must be a finite number > 0 per second, got {rate!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise DlsecError(f"burst must be an integer >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, n: int = 1) -> float:
        """Take ``n`` tokens: 0.0 when they were available (and are now taken), otherwise
        the seconds until ``n`` tokens will be (nothing taken); ``inf`` when ``n`` exceeds
        the burst (never possible)."""
        if n < 1:
            raise DlsecError(f"take needs n >= 1 tokens, got {n}")
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._last)
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
            self._last = max(self._last, now)
            if n > self.burst:
                return math.inf
            if self._tokens >= n:
                self._tokens -= n
                return 0.0
            return (n - self._tokens) / self.rate

    @property
    def tokens(self) -> float:
        """Tokens available as of the last :meth:`take` (for logs and tests)."""
        return self._tokens


class RateLimiter:
    """Token buckets per key id, created on first use with that key's ``rate`` and
    ``burst``; a key whose limits changed (an update, a rotation) gets a fresh, full
    bucket. Thread-safe.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def bucket(self, key_id: str, *, rate: float, burst: int) -> TokenBucket:
        with self._lock:
            b = self._buckets.get(key_id)
            if b is None or b.rate != float(rate) or b.burst != burst:
                b = TokenBucket(rate, burst, clock=self._clock)
                self._buckets[key_id] = b
            return b

    def take(self, key_id: str, *, rate: float, burst: int, n: int = 1) -> float:
        """:meth:`TokenBucket.take` on the key's bucket: 0.0 allowed, else seconds to wait."""
        return self.bucket(key_id, rate=rate, burst=burst).take(n)

    def enforce(self, key_id: str, *, rate: float, burst: int, n: int = 1) -> None:
        """Take ``n`` tokens or raise :class:`RequestError` 429 with ``retry_after``."""
        wait = self.take(key_id, rate=rate, burst=burst, n=n)
        if wait > 0:
            if math.isinf(wait):
                raise RequestError(429, f"{n} requests at once exceed this key's burst of {burst}",
                                   retry_after=None)
            raise RequestError(429, f"rate limit of {rate:g}/s exceeded for this key; "
                               f"retry in {wait:.3g} s", retry_after=wait)

    def forget(self, key_id: str) -> None:
        """Drop a key's bucket (a revoked key)."""
        with self._lock:
            self._buckets.pop(key_id, None)


# -- request bodies ------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestLimits:
    """The largest request the server reads: ``max_body_bytes`` of body and ``max_rows``
    inputs per request (both answered 413 beyond)."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_rows: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_rows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DlsecError(f"{name} must be an integer >= 1, got {v!r}")


def parse_inputs(
    body: bytes,
    content_type: str,
    *,
    input_shape: tuple[int, ...],
    bounds: tuple[float, float],
    limits: RequestLimits,
) -> Tensor:
    """The checked inputs of a prediction request, a float32 tensor ``(n, *input_shape)``.

    ``content_type`` (parameters such as ``; charset=utf-8`` ignored) is
    ``application/json`` with a body ``{"inputs": [row, ...]}``, each row nested lists of
    the card's ``input_shape``, or ``application/x-npy``: a numpy ``.npy`` file of
    little-endian float32, shape ``(n, *input_shape)``, C order. The ``.npy`` header is
    read first and the shape, dtype and the body's length checked against it before
    any array is built; object arrays are refused (pickle is never loaded).

    Raises :class:`RequestError` 413 for a body over ``limits.max_body_bytes`` or more
    than ``limits.max_rows`` rows, 422 (naming the problem) for an unknown content type,
    bad JSON, a wrong shape or dtype, non-numbers, NaN or inf, an empty batch, or values
    outside ``bounds`` (with the Oracle's tolerance of ``1e-5 * (high - low)``).
    """
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"request body of {len(body)} bytes exceeds the limit of "
                           f"{limits.max_body_bytes} bytes")
    media = (content_type or "").split(";", 1)[0].strip().lower()
    shape = tuple(int(s) for s in input_shape)
    if media == JSON_TYPE:
        arr = _from_json(body, shape, limits)
    elif media == NPY_TYPE:
        arr = _from_npy(body, shape, limits)
    else:
        raise RequestError(422, f"unsupported content type {content_type!r} "
                           f"(use {' or '.join(CONTENT_TYPES)})")
    if not np.isfinite(arr).all():
        raise RequestError(422, "inputs contain NaN or inf")
    lo, hi = float(bounds[0]), float(bounds[1])
    tol = 1e-5 * (hi - lo)
    low, high = float(arr.min()), float(arr.max())
    if low < lo - tol or high > hi + tol:
        raise RequestError(422, f"input values must lie in [{lo:g}, {hi:g}], got values in "
                           f"[{low:g}, {high:g}]")
    # a copy: the .npy path views the (read-only) request body
    return torch.from_numpy(np.array(arr, dtype=np.float32, order="C", copy=True))


def _check_rows(n: int, limits: RequestLimits) -> None:
    if n == 0:
        raise RequestError(422, "empty batch: send at least one input")
    if n > limits.max_rows:
        raise RequestError(413, f"{n} inputs exceed the limit of {limits.max_rows} per request")


def _reject_constant(name: str) -> float:
    raise RequestError(422, f"inputs contain {name}; only finite numbers are accepted")


def _from_json(body: bytes, shape: tuple[int, ...], limits: RequestLimits) -> np.ndarray:
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except RequestError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RequestError(422, f"body is not valid JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise RequestError(422, 'JSON body must be an object {"inputs": [[...], ...]}')
    rows = doc["inputs"]
    if not isinstance(rows, list):
        raise RequestError(422, '"inputs" must be a list of rows')
    _check_rows(len(rows), limits)
    flat: list[float] = []
    for i, row in enumerate(rows):
        _flatten(row, shape, f"inputs[{i}]", flat)
    try:
        arr = np.asarray(flat, dtype=np.float64)
    except OverflowError:
        raise RequestError(422, "inputs contain a number too large for float32") from None
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    return out.reshape((len(rows), *shape))


def _flatten(node: Any, shape: tuple[int, ...], where: str, out: list[float]) -> None:
    """Append the numbers of ``node`` (nested lists of ``shape``) to ``out``."""
    if not shape:
        if isinstance(node, bool) or not isinstance(node, (int, float)):
            raise RequestError(422, f"{where} must be a number, got {type(node).__name__}")
        out.append(node)
        return
    if not isinstance(node, list) or len(node) != shape[0]:
        got = f"a list of {len(node)}" if isinstance(node, list) else type(node).__name__
        raise RequestError(422, f"{where} must be a list of {shape[0]} (rows of shape "
                           f"{list(shape)}), got {got}")
    if len(shape) == 1:
        for v in node:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise RequestError(422, f"{where} must hold numbers only, got {type(v).__name__}")
        out.extend(node)
        return
    for j, child in enumerate(node):
        _flatten(child, shape[1:], f"{where}[{j}]", out)


def _from_npy(body: bytes, shape: tuple[int, ...], limits: RequestLimits) -> np.ndarray:
    f = io.BytesIO(body)
    try:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            arr_shape, fortran, dtype = npy_format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            arr_shape, fortran, dtype = npy_format.read_array_header_2_0(f)
        else:
            raise ValueError(f"npy version {version}")
    except RequestError:
        raise
    except (ValueError, SyntaxError, EOFError, TypeError, KeyError, OverflowError) as e:
        raise RequestError(422, f"body is not a valid .npy file ({type(e).__name__})") from None
    if dtype != np.dtype("<f4"):
        raise RequestError(422, f".npy dtype must be little-endian float32 ('<f4'), got {dtype.str!r}")
    if fortran:
        raise RequestError(422, ".npy array must be in C order (fortran_order False)")
    if len(arr_shape) != len(shape) + 1 or tuple(arr_shape[1:]) != shape:
        raise RequestError(422, f".npy shape must be (n, {', '.join(map(str, shape))}), "
                           f"got {tuple(arr_shape)}")
    n = int(arr_shape[0])
    _check_rows(n, limits)
    count = n * math.prod(shape)
    offset = f.tell()
    if len(body) - offset != 4 * count:
        raise RequestError(422, f".npy data is {len(body) - offset} bytes, the header "
                           f"promises {4 * count}")
    return np.frombuffer(body, dtype="<f4", count=count, offset=offset).reshape((n, *shape))


__all__ = ["CONTENT_TYPES", "JSON_TYPE", "NPY_TYPE", "RateLimiter", "RequestError",
           "RequestLimits", "TokenBucket", "parse_inputs"]
