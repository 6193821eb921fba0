"""Request limits: token buckets on a fake clock, and every way a request body is refused."""

from __future__ import annotations

import io
import json
import math
import threading

import numpy as np
import pytest
import torch

from dlsec.errors import DlsecError
from dlsec.serve.limits import (
    RateLimiter,
    RequestError,
    RequestLimits,
    TokenBucket,
    parse_inputs,
)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# -- token bucket ----------------------------------------------------------------------------
def test_token_bucket_exact() -> None:
    clock = _Clock()
    b = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [b.take(), b.take(), b.take()] == [0.0, 0.0, 0.0]
    assert b.take() == 0.5  # one token short at 2 tokens/s
    assert b.take() == 0.5  # a refused take takes nothing
    clock.t = 0.5
    assert b.take() == 0.0
    assert b.take() == 0.5
    clock.t = 100.0  # refills to the burst, not beyond
    assert b.take(3) == 0.0 and b.take() == 0.5
    clock.t = 101.0
    assert b.take(3) == 0.5  # 2 tokens there, 1 short
    assert b.take(4) == math.inf  # more than the burst: never
    clock.t = 99.0  # a clock going back refills nothing
    assert b.take(3) == 0.5
    with pytest.raises(DlsecError):
        b.take(0)
    for rate, burst in ((0.0, 1), (-1.0, 1), (float("nan"), 1), (1.0, 0), (1.0, 1.5)):
        with pytest.raises(DlsecError):
            TokenBucket(rate=rate, burst=burst)  # type: ignore[arg-type]


def test_token_bucket_threads_frozen_clock() -> None:
    clock = _Clock()
    b = TokenBucket(rate=1.0, burst=5, clock=clock)
    results: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        for _ in range(10):
            r = b.take()
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 80
    assert results.count(0.0) == 5
    assert all(r == 1.0 for r in results if r != 0.0)


def test_rate_limiter_per_key() -> None:
    clock = _Clock()
    lim = RateLimiter(clock=clock)
    for _ in range(2):
        lim.enforce("a", rate=1.0, burst=2)
    with pytest.raises(RequestError) as e:
        lim.enforce("a", rate=1.0, burst=2)
    assert e.value.status == 429 and e.value.retry_after == 1.0
    assert "rate limit" in e.value.message
    lim.enforce("b", rate=1.0, burst=2)  # another key has its own bucket
    assert lim.take("a", rate=1.0, burst=4) == 0.0  # new limits: a fresh, full bucket
    clock.t = 1.0
    assert lim.take("a", rate=1.0, burst=4) == 0.0
    with pytest.raises(RequestError) as e:
        lim.enforce("b", rate=1.0, burst=2, n=3)
    assert e.value.status == 429 and e.value.retry_after is None
    lim.forget("b")
    assert lim.take("b", rate=1.0, burst=2, n=2) == 0.0


# -- request bodies ------------------------------------------------------------------------------
SHAPE = (2, 3)
LIMITS = RequestLimits(max_body_bytes=4096, max_rows=4)


def _parse(body: bytes, ctype: str = "application/json", **kw) -> torch.Tensor:
    kw.setdefault("input_shape", SHAPE)
    kw.setdefault("bounds", (0.0, 1.0))
    kw.setdefault("limits", LIMITS)
    return parse_inputs(body, ctype, **kw)


def _npy(arr: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.save(f, arr, allow_pickle=False)
    return f.getvalue()


def _refused(status: int, body: bytes, ctype: str = "application/json", match: str = "",
             **kw) -> str:
    with pytest.raises(RequestError) as e:
        _parse(body, ctype, **kw)
    assert e.value.status == status, e.value.message
    assert "\n" not in e.value.message and match.lower() in e.value.message.lower()
    return e.value.message


ROWS = np.arange(12, dtype=np.float32).reshape(2, 2, 3) / 16


def test_happy_paths_json_and_npy_equal() -> None:
    body = json.dumps({"inputs": ROWS.tolist()}).encode()
    x = _parse(body, "application/json; charset=utf-8")
    assert x.dtype == torch.float32 and tuple(x.shape) == (2, 2, 3)
    assert torch.equal(x, torch.from_numpy(ROWS))
    y = _parse(_npy(ROWS), "application/x-npy")
    assert torch.equal(y, x)
    # integers in JSON are numbers too; bounds other than [0, 1]
    z = _parse(b'{"inputs": [[[-2, 0, 1], [2, 0.5, -1.5]]]}', bounds=(-2.0, 2.0))
    assert z.tolist() == [[[-2.0, 0.0, 1.0], [2.0, 0.5, -1.5]]]
    # the tolerance at the bounds is the Oracle's (1e-5 of the range)
    assert _parse(b'{"inputs": [[[1.000001, 0, 0], [0, 0, 0]]]}').shape[0] == 1
    # the npy result does not alias a read-only buffer
    y[0, 0, 0] = 0.5


def test_413_body_and_rows() -> None:
    _refused(413, b" " * 4097, match="4097 bytes")
    _refused(413, json.dumps({"inputs": [ROWS[0].tolist()] * 5}).encode(), match="5 inputs")
    _refused(413, _npy(np.zeros((5, 2, 3), np.float32)), "application/x-npy", match="5 inputs")


def test_422_json_cases() -> None:
    row = ROWS[0].tolist()
    cases = {
        b"{not json": "not valid JSON",
        b"\xff\xfe": "not valid JSON",
        b"[1, 2]": '{"inputs"',
        b'{"x": 1}': '{"inputs"',
        b'{"inputs": 3}': "list of rows",
        b'{"inputs": []}': "empty batch",
        json.dumps({"inputs": [row[0]]}).encode(): "inputs[0] must be a list of 2",
        json.dumps({"inputs": [row, [row[0], row[1][:2]]]}).encode(): "inputs[1][1] must be a list of 3",
        json.dumps({"inputs": [[[0, 0, 0], [0, "1", 0]]]}).encode(): "numbers only, got str",
        json.dumps({"inputs": [[[0, 0, 0], [0, True, 0]]]}).encode(): "got bool",
        json.dumps({"inputs": [[[0, 0, 0], [0, None, 0]]]}).encode(): "got NoneType",
        json.dumps({"inputs": [[[0, 0, 0], [0, [0], 0]]]}).encode(): "got list",
        b'{"inputs": [[[0, 0, 0], [0, NaN, 0]]]}': "NaN",
        b'{"inputs": [[[0, 0, 0], [0, Infinity, 0]]]}': "Infinity",
        b'{"inputs": [[[0, 0, 0], [0, 1e300, 0]]]}': "NaN or inf",  # finite, not in float32
        b'{"inputs": [[[0, 0, 0], [0, 1' + b"0" * 400 + b', 0]]]}': "too large",
        b'{"inputs": [[[0, 0, 0], [0, 1.5, 0]]]}': "must lie in [0, 1]",
        b'{"inputs": [[[0, -0.01, 0], [0, 0, 0]]]}': "[-0.01, 0]",
        b"[" * 1500 + b"]" * 1500: "",  # deeper than the recursion limit
    }
    for body, match in cases.items():
        _refused(422, body, match=match)
    _refused(422, b'{"inputs": []}', "text/plain", match="unsupported content type")
    _refused(422, b'{"inputs": []}', "", match="unsupported content type")


def test_422_npy_cases() -> None:
    npy = "application/x-npy"
    _refused(422, _npy(ROWS.astype(np.float64)), npy, match="'<f8'")
    _refused(422, _npy(ROWS.astype(">f4")), npy, match="'>f4'")
    _refused(422, _npy(np.zeros((2, 3, 2), np.float32)), npy, match="shape must be (n, 2, 3)")
    _refused(422, _npy(np.zeros((2, 6), np.float32)), npy, match="shape")
    _refused(422, _npy(np.zeros((0, 2, 3), np.float32)), npy, match="empty batch")
    _refused(422, _npy(np.asfortranarray(np.zeros((2, 2, 3), np.float32))), npy, match="C order")
    _refused(422, b"not an npy file", npy, match="not a valid .npy")
    _refused(422, _npy(ROWS)[:-4], npy, match="header promises 48")
    _refused(422, _npy(ROWS) + b"\0" * 4, npy, match="header promises 48")
    bad = ROWS.copy()
    bad[1, 1, 1] = np.nan
    _refused(422, _npy(bad), npy, match="NaN")
    bad[1, 1, 1] = 7.0
    _refused(422, _npy(bad), npy, match="must lie in")


def test_npy_object_dtype_refused_without_unpickling() -> None:
    f = io.BytesIO()
    np.save(f, np.array([[[{"a": 1}, 0, 0], [0, 0, 0]]], dtype=object), allow_pickle=True)
    _refused(422, f.getvalue(), "application/x-npy", match="'|O'")


def test_npy_huge_header_refused_before_allocation() -> None:
    """A header that claims 10^12 rows (4 TB) in a tiny body: refused from the header
    alone (413 on the row count), and with a high row limit on the byte count (422)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 2, 3)})
    body = header.getvalue() + b"\0" * 24
    _refused(413, body, "application/x-npy", match="1000000000000 inputs")
    _refused(422, body, "application/x-npy", match="header promises",
             limits=RequestLimits(max_body_bytes=4096, max_rows=10**13))


def test_request_error_and_limits_validation() -> None:
    e = RequestError(429, "slow down", retry_after=0.5)
    assert isinstance(e, DlsecError) and str(e) == "slow down"
    assert (e.status, e.message, e.retry_after) == (429, "slow down", 0.5)
    assert RequestLimits().max_body_bytes == 8 * 1024 * 1024 and RequestLimits().max_rows == 1024
    with pytest.raises(DlsecError, match="max_rows"):
        RequestLimits(max_rows=0)
