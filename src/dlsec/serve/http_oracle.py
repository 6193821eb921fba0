"""``HttpOracle``: the :class:`dlsec.threat.Oracle` of a model served by ``dlsec serve``.

Every black-box, extraction, membership and inversion attack talks to an Oracle only, so
the same attack runs unchanged against a local model (:class:`dlsec.threat.LocalOracle`)
or a served one (this class). It speaks the server's HTTP contract:

* ``GET {url}/v1/model`` (once, at construction): ``input_shape``, ``classes``,
  ``bounds``, ``policy`` (the key's output policy spec) and ``max_rows`` (rows per
  request);
* ``POST {url}/v1/predict`` with ``Authorization: Bearer KEY`` and an
  ``application/x-npy`` body (float32 ``(n, *input_shape)``): ``{"outputs": [...],
  "policy": spec, "remaining": int}`` (``-1``: no budget).

Errors become the Oracle's: the server's 403 ``budget_exhausted`` is
:class:`dlsec.threat.BudgetExhausted`; 401 is the one-line :class:`dlsec.threat.OracleError`
"the server refused the API key"; 429 (rate limited) and 503 (busy) are retried at most
``retries`` times, waiting the server's ``Retry-After`` (capped at ``max_wait``) or an
exponential backoff, whichever is longer, plus a jitter drawn from a generator seeded by
``seed``; connection failures and timeouts are one-line errors naming the URL. The API key
is sent only in the ``Authorization`` header: it is never in an error message, a ``repr``
or the URL.

Example:
    >>> with HttpOracle("http://127.0.0.1:8000", api_key=os.environ["DLSEC_API_KEY"]) as oracle:  # doctest: +SKIP
    ...     res = make_attack("square", max_queries=500)(oracle, x, y, eps=0.1)
    ...     oracle.queries_total, oracle.remaining

Notes:
    The server applies the key's output policy; the oracle's ``output`` is that policy's
    kind (``label``: the answers are int64 labels) and the answers are returned as sent,
    never degraded a second time: ``noise`` and ``reverse-sigmoid`` are not idempotent
    (degrading twice would add noise twice, or perturb an already perturbed row), while
    ``scores``, ``topk``, ``rounded`` and ``label`` are, so passing the answers through
    is right for every kind. ``tests/serve/test_http_oracle.py`` checks both facts.

    Counting: ``queries_total`` counts the rows the server answered for this oracle. A
    batch larger than the server's ``max_rows`` goes in several requests; if one fails
    (budget spent, rate limit retries spent, a timeout), the rows of the earlier requests,
    which the server charged, stay counted and the rest are not. A timed-out request may
    still have been charged by the server; it is never resent (a resend would pay twice).
    ``remaining`` is the smaller of the client-side ``budget`` left and the server's
    ``remaining`` in its latest answer (the server's budget is per key, shared with any
    other client of the same key, so it is a snapshot).
"""

from __future__ import annotations

import io
import math
import os
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
import torch
from torch import Tensor

from dlsec.output_policies import OutputPolicy, PolicyError
from dlsec.threat import BaseOracle, BudgetExhausted, OracleError

NPY_TYPE = "application/x-npy"
# the environment variable a key is read from when none is passed (keeps it out of argv)
API_KEY_ENV = "DLSEC_API_KEY"
RETRY_STATUSES = (429, 503)


def _safe_url(url: str) -> str:
    """``url`` checked (http or https, a host) and returned without user info, query or
    fragment and without a trailing slash; a bad URL is a one-line :class:`OracleError`."""
    try:
        parts = urlsplit(str(url).strip())
    except ValueError:
        raise OracleError("the target must be an http(s) URL such as http://127.0.0.1:8000") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OracleError("the target must be an http(s) URL such as http://127.0.0.1:8000")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    try:
        port = parts.port
    except ValueError:
        raise OracleError("the target URL has a bad port") from None
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _detail(response: httpx.Response) -> str:
    """The server's one-line ``detail`` (or ``code``), at most 200 characters."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    text = body.get("detail") or body.get("code") or ""
    if isinstance(text, list) and text and isinstance(text[0], dict):  # FastAPI's validation
        text = str(text[0].get("msg", ""))
    if not isinstance(text, str):
        text = str(text)
    return " ".join(text.split())[:200]


class HttpOracle(BaseOracle):
    """The black-box view of a model served by ``dlsec serve`` at ``url`` (see the module
    docstring for the contract, the errors and the counting).

    ``api_key`` is the bearer token (``dlsec keys create``; ``None``: the
    ``DLSEC_API_KEY`` environment variable, so a key need not be on a command line);
    ``budget`` and
    ``per_sample_budget`` are client-side budgets exactly as for
    :class:`dlsec.threat.LocalOracle`, on top of the server's own. ``retries`` (default 5)
    bounds the retries of one request on 429/503; the wait before retry ``i`` (0-based)
    is ``max(Retry-After, backoff * 2**i)`` capped at ``max_wait`` seconds, times a
    jitter factor uniform in ``[1, 1 + jitter]`` drawn from ``random.Random(seed)``.
    ``timeout`` is the seconds one request may take (on the client made here; a client
    passed in keeps its own). ``client`` is an
    :class:`httpx.Client` to send through (tests pass FastAPI's ``TestClient``; the
    caller closes it), else one is made and closed by :meth:`close`; ``transport`` is
    handed to the client made. ``sleep`` waits (injectable for tests).

    The model's input shape, classes, bounds, output kind and ``max_rows`` are read from
    ``GET /v1/model`` at construction; ``classes`` holds the server's class names.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        budget: int | None = None,
        per_sample_budget: int | None = None,
        retries: int = 5,
        backoff: float = 0.05,
        max_wait: float = 30.0,
        jitter: float = 0.1,
        timeout: float = 30.0,
        seed: int | None = 0,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = _safe_url(url)
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV)
        if not isinstance(api_key, str) or not api_key.strip():
            raise OracleError(f"an API key is needed (--api-key or the {API_KEY_ENV} variable)")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise OracleError(f"retries must be an integer >= 0, got {retries!r}")
        for name, value in (("backoff", backoff), ("max_wait", max_wait), ("jitter", jitter),
                            ("timeout", timeout)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise OracleError(f"{name} must be a finite number >= 0, got {value!r}")
        self._headers = {"Authorization": f"Bearer {api_key.strip()}"}
        self.retries = retries
        self.backoff = float(backoff)
        self.max_wait = float(max_wait)
        self.jitter = float(jitter)
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._own_client = client is None
        self._client = client if client is not None else httpx.Client(
            timeout=timeout, transport=transport, follow_redirects=False)
        self.retries_done = 0
        self._answered_rows = 0
        self.server_remaining: int | None = None
        try:
            info = self._model_info()
        except BaseException:
            self.close()
            raise
        self.classes: tuple[str, ...] = info["classes"]
        self.max_rows: int = info["max_rows"]
        super().__init__(num_classes=len(self.classes), input_shape=info["input_shape"],
                         bounds=info["bounds"], output=info["policy"], budget=budget,
                         per_sample_budget=per_sample_budget, seed=seed)

    def __repr__(self) -> str:
        policy = getattr(self, "policy", None)  # None while __init__ runs
        return f"HttpOracle({self.url!r}, output={policy.spec() if policy else None!r})"

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the HTTP client this oracle made (a client passed in is the caller's)."""
        if self._own_client:
            self._client.close()

    def __enter__(self) -> HttpOracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- counting ---------------------------------------------------------------------------
    @property
    def remaining(self) -> int | None:
        local = super().remaining
        if self.server_remaining is None:
            return local
        return self.server_remaining if local is None else min(local, self.server_remaining)

    # -- HTTP -------------------------------------------------------------------------------
    def _send(self, method: str, path: str, *, body: bytes | None = None) -> httpx.Response:
        """One request (``body``: .npy bytes), retried on 429/503 (see the class docstring);
        any other answer is returned; transport failures are one-line
        :class:`OracleError`\\ s naming the URL."""
        target = self.url + path
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = NPY_TYPE
        for attempt in range(self.retries + 1):
            try:
                response = self._client.request(method, target, headers=headers, content=body)
            except httpx.TimeoutException:
                raise OracleError(f"no answer from {target} in time (timed out)") from None
            except httpx.HTTPError as exc:
                raise OracleError(f"cannot reach {target}: {type(exc).__name__}") from None
            if response.status_code not in RETRY_STATUSES:
                return response
            if attempt == self.retries:
                what = "rate limited (429)" if response.status_code == 429 else "busy (503)"
                raise OracleError(f"the server at {self.url} is {what}; gave up after "
                                  f"{self.retries} retries")
            self._sleep(self._wait(attempt, response.headers.get("Retry-After")))
            self.retries_done += 1
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based)."""
        try:
            asked = float(retry_after) if retry_after is not None else 0.0
        except ValueError:
            asked = 0.0
        if not math.isfinite(asked) or asked < 0:
            asked = 0.0
        base = min(self.max_wait, max(asked, self.backoff * 2.0**attempt))
        return base * (1.0 + self.jitter * self._rng.random())

    def _refusal(self, response: httpx.Response) -> OracleError:
        """The Oracle error for a non-200 answer."""
        status = response.status_code
        if status == 401:
            return OracleError(f"the server at {self.url} refused the API key")
        detail = _detail(response)
        if status == 403:
            try:
                body = response.json()
            except ValueError:
                body = {}
            if isinstance(body, dict) and body.get("code") == "budget_exhausted":
                left = body.get("remaining")
                if isinstance(left, int) and not isinstance(left, bool) and left >= 0:
                    self.server_remaining = left
                return BudgetExhausted(f"the server's query budget for this key is exhausted "
                                       f"({left} rows left)")
        suffix = f": {detail}" if detail else ""
        return OracleError(f"the server at {self.url} answered {status}{suffix}")

    def _model_info(self) -> dict[str, Any]:
        response = self._send("GET", "/v1/model")
        if response.status_code != 200:
            raise self._refusal(response)
        try:
            body = response.json()
            shape = tuple(int(s) for s in body["input_shape"])
            classes = tuple(str(c) for c in body["classes"])
            lo, hi = (float(b) for b in body["bounds"])
            policy = OutputPolicy.parse(body["policy"])
            max_rows = int(body["max_rows"])
        except (ValueError, KeyError, TypeError, PolicyError):
            raise OracleError(f"{self.url}/v1/model did not describe a model "
                              "(is this a dlsec server?)") from None
        if not shape or len(classes) < 2 or max_rows < 1 or not lo < hi:
            raise OracleError(f"{self.url}/v1/model described an unusable model")
        return {"input_shape": shape, "classes": classes, "bounds": (lo, hi),
                "policy": policy, "max_rows": max_rows}

    def _predict(self, x: Tensor) -> Tensor:
        """The server's answer for one request of at most ``max_rows`` rows."""
        buf = io.BytesIO()
        np.save(buf, x.detach().to("cpu", torch.float32).contiguous().numpy(), allow_pickle=False)
        response = self._send("POST", "/v1/predict", body=buf.getvalue())
        if response.status_code != 200:
            raise self._refusal(response)
        try:
            body = response.json()
            outputs = body["outputs"]
            remaining = int(body["remaining"])
            if self.output == "label":
                out = torch.tensor(outputs, dtype=torch.int64).reshape(-1)
                ok = out.numel() == x.shape[0]
            else:
                out = torch.tensor(outputs, dtype=torch.float32)
                ok = tuple(out.shape) == (x.shape[0], self.num_classes)
        except (ValueError, KeyError, TypeError, RuntimeError):
            raise OracleError(f"{self.url}/v1/predict sent an answer that is not a "
                              "dlsec prediction") from None
        if not ok:
            raise OracleError(f"{self.url}/v1/predict answered {len(outputs)} rows of the wrong "
                              f"shape for {x.shape[0]} inputs")
        self.server_remaining = None if remaining < 0 else remaining
        return out

    # -- answering --------------------------------------------------------------------------
    def _probabilities(self, x: Tensor) -> Tensor:
        """The server's answers (already degraded by its policy), ``max_rows`` at a time."""
        parts = []
        for chunk in torch.split(x, self.max_rows):
            parts.append(self._predict(chunk))
            self._answered_rows += chunk.shape[0]
        out = torch.cat(parts)
        if self.output == "label":
            return out.to(x.device)
        return out.to(device=x.device, dtype=x.dtype if x.dtype.is_floating_point else torch.float32)

    def _degrade(self, probs: Tensor) -> Tensor:
        """The identity: the server applied the policy already (see the module Notes)."""
        return probs

    def query(self, x: Tensor, *, ids: Tensor | None = None) -> Tensor:
        """Answer a batch through the server; each row the server answers costs one query
        (a failed request un-charges its rows and those after it, see the module Notes)."""
        before = self.state_dict()
        self._answered_rows = 0
        try:
            return super().query(x, ids=ids)
        except OracleError:
            answered = self._answered_rows
            self.load_state_dict(before)
            if answered:
                self._charge(answered, None if ids is None else
                             torch.as_tensor(ids).flatten()[:answered])
            raise
