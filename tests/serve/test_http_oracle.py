"""HttpOracle: the request/response/error code (a mock transport only where it simulates what
a real server cannot be made to do on demand: 503, a timeout), and the real app."""

from __future__ import annotations

import io
import json
import socket

import httpx
import numpy as np
import pytest
import torch

from dlsec.output_policies import OutputPolicy
from dlsec.serve.http_oracle import HttpOracle
from dlsec.threat import BudgetExhausted, OracleError

KEY = "sk-test-secret-0123456789"
MODEL = {"input_shape": [4], "classes": ["a", "b", "c"], "bounds": [0.0, 1.0],
         "policy": "scores", "max_rows": 8}


def _transport(predict_status: list[int], *, seen: list[httpx.Request] | None = None,
               retry_after: str = "0") -> httpx.MockTransport:
    """A /v1/model that answers MODEL, and a /v1/predict that answers the statuses in
    ``predict_status`` in turn (200: uniform scores; -1: a timeout), then 200s."""

    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if request.url.path.endswith("/v1/model"):
            return httpx.Response(200, json=MODEL)
        status = predict_status.pop(0) if predict_status else 200
        if status != 200:
            if status == -1:
                raise httpx.ReadTimeout("timed out", request=request)
            return httpx.Response(status, headers={"Retry-After": retry_after},
                                  json={"detail": "busy"})
        n = np.load(io.BytesIO(request.content)).shape[0]
        return httpx.Response(200, json={"outputs": [[1 / 3] * 3] * n, "policy": "scores",
                                         "remaining": -1})

    return httpx.MockTransport(handler)


def test_503_is_retried_with_exponential_backoff_then_gives_up() -> None:
    waits: list[float] = []
    seen: list[httpx.Request] = []
    oracle = HttpOracle("http://srv:1/", KEY, transport=_transport([503, 503], seen=seen),
                        retries=3, backoff=0.05, jitter=0.0, sleep=waits.append)
    out = oracle.query(torch.full((2, 4), 0.5))
    assert out.shape == (2, 3) and oracle.queries_total == 2
    assert waits == pytest.approx([0.05, 0.1], abs=1e-12)
    assert oracle.retries_done == 2
    assert seen[-1].headers["authorization"] == f"Bearer {KEY}"
    assert seen[-1].headers["content-type"] == "application/x-npy"
    # four 503s with 3 retries: refused, nothing counted, the key in no message
    oracle = HttpOracle("http://srv:1", KEY, transport=_transport([503] * 4), retries=3,
                        sleep=waits.append)
    with pytest.raises(OracleError, match=r"busy \(503\); gave up after 3 retries") as err:
        oracle.query(torch.full((2, 4), 0.5))
    assert oracle.queries_total == 0 and KEY not in str(err.value) and "\n" not in str(err.value)


def test_retry_after_is_honoured_capped_and_jittered_from_the_seed() -> None:
    def waits_for(seed: int) -> list[float]:
        waits: list[float] = []
        oracle = HttpOracle("http://srv", KEY, transport=_transport([429] * 3, retry_after="7"),
                            max_wait=2.0, jitter=0.5, seed=seed, sleep=waits.append)
        oracle.query(torch.zeros(1, 4))
        return waits

    a, b, c = waits_for(0), waits_for(0), waits_for(1)
    assert a == b and a != c
    assert all(2.0 <= w <= 3.0 for w in a + c)  # Retry-After 7 capped at 2, jitter <= 50 %


def test_timeout_and_refused_connection_are_one_line_errors_naming_the_url() -> None:
    oracle = HttpOracle("http://srv:9", KEY, transport=_transport([-1]))
    with pytest.raises(OracleError, match=r"no answer from http://srv:9/v1/predict in time"):
        oracle.query(torch.zeros(3, 4))
    assert oracle.queries_total == 0  # not resent, not counted
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OracleError, match=rf"cannot reach http://127.0.0.1:{port}/v1/model") as err:
        HttpOracle(f"http://user:pw@127.0.0.1:{port}", KEY, timeout=5)
    assert "pw" not in str(err.value) and KEY not in str(err.value)


@pytest.mark.parametrize("url", ["ftp://srv/x", "srv:8000", "file:///etc/passwd", "http://"])
def test_only_http_urls(url: str) -> None:
    with pytest.raises(OracleError, match="http"):
        HttpOracle(url, KEY, transport=_transport([]))


def test_key_never_in_repr_and_batches_split_to_max_rows() -> None:
    seen: list[httpx.Request] = []
    oracle = HttpOracle("https://srv/api", KEY, transport=_transport([], seen=seen))
    assert KEY not in repr(oracle) and "https://srv/api" in repr(oracle)
    oracle.query(torch.rand(20, 4), ids=torch.arange(20) % 5)
    sizes = [int(r.headers["content-length"]) for r in seen if r.url.path == "/api/v1/predict"]
    assert len(sizes) == 3  # 8 + 8 + 4 rows
    assert oracle.queries_total == 20 and oracle.queries_for(torch.arange(5)).tolist() == [4] * 5


def test_failed_chunk_keeps_only_the_answered_rows_counted() -> None:
    # 12 rows in chunks of 8 + 4: the first answered, the second refused (422)
    oracle = HttpOracle("http://srv", KEY, transport=_transport([200, 422]), retries=0)
    with pytest.raises(OracleError, match=r"^the server at http://srv answered 422: busy$"):
        oracle.query(torch.zeros(12, 4), ids=torch.arange(12))
    assert oracle.queries_total == 8
    assert oracle.queries_for(torch.arange(12)).tolist() == [1] * 8 + [0] * 4


def test_client_budget_counts_like_local_oracle() -> None:
    oracle = HttpOracle("http://srv", KEY, transport=_transport([]), budget=10)
    oracle.query(torch.zeros(6, 4))
    assert oracle.remaining == 4
    with pytest.raises(BudgetExhausted):
        oracle.query(torch.zeros(5, 4))
    assert oracle.queries_total == 6


def test_degrading_twice_is_not_idempotent_for_noise_so_the_oracle_never_does() -> None:
    probs = torch.softmax(torch.randn(50, 5, generator=torch.Generator().manual_seed(0)), 1)
    for spec in ("scores", "topk:2", "rounded:2"):
        p = OutputPolicy.parse(spec)
        once = p.apply(probs)
        assert (p.apply(once) - once).abs().max() < 1e-6, spec
    label = OutputPolicy.parse("label")
    assert torch.equal(label.apply(torch.nn.functional.one_hot(label.apply(probs), 5).float()),
                       label.apply(probs))
    for spec in ("noise:0.05", "reverse-sigmoid:0.7,0.4"):
        p = OutputPolicy.parse(spec)
        once = p.apply(probs, generator=torch.Generator().manual_seed(1))
        twice = p.apply(once, generator=torch.Generator().manual_seed(2))
        assert (twice - once).abs().max() > 1e-3, spec
    # and HttpOracle returns the server's noisy answer as sent
    seen_answer = [[0.2, 0.3, 0.5]]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return httpx.Response(200, json={**MODEL, "policy": "noise:0.05"})
        return httpx.Response(200, content=json.dumps(
            {"outputs": seen_answer, "policy": "noise:0.05", "remaining": 5}))

    oracle = HttpOracle("http://srv", KEY, transport=httpx.MockTransport(handler))
    assert oracle.output == "noise"
    assert oracle.query(torch.zeros(1, 4))[0].tolist() == pytest.approx(seen_answer[0], abs=1e-7)
    assert oracle.remaining == 5
