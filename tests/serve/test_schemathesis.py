"""Schemathesis over the server's own OpenAPI schema (``/openapi.json``, loaded from the
ASGI app): no generated request, valid or not, gets a 5xx; without a key, with a wrong one
or a revoked one, every operation in the schema is 401, and only ``/healthz`` and
``/openapi.json`` answer without one. Plus bodies generated close to valid (the right
shape, extreme values) so that predictions are answered, not only refused."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from starlette.testclient import TestClient

from dlsec.serve.app import create_app
from dlsec.serve.ledger import ServedWatermark, WatermarkLedger
from dlsec.serve.store import KeyStore

PUBLIC = {"/healthz", "/openapi.json"}
TOL = 1e-5  # parse_inputs' bounds tolerance for the card's [0, 1]


def _examples(n: int) -> settings:
    """Hypothesis settings for ``n`` examples: derandomized (the same cases every run),
    no deadline (a loaded 2-core machine), no example database."""
    return settings(max_examples=n, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def served(served_model_dir, digits, tmp_path_factory):
    """(app, schema, token, revoked token): the app of ``dlsec serve`` with every
    protection on (rate limit, PRADA and OOD detection with flags logged, DAWN watermark)
    on a fresh key database, its schema as Schemathesis reads it over ASGI."""
    db = tmp_path_factory.mktemp("schemathesis") / "keys.db"
    store = KeyStore(db)
    _, token = store.create("fuzzer", budget=10**9)
    revoked, revoked_token = store.create("gone")
    store.revoke(revoked.id)
    marks = ServedWatermark(WatermarkLedger(db), fraction=0.05, secret=b"s" * 32)
    app = create_app(served_model_dir, store=store, seed=0, rate=1e6, detect=("prada", "ood"),
                     on_flag="log", reference=digits.x_train, watermark=marks)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    yield app, schema, token, revoked_token
    store.close()


def _operations(schema):
    return [result.ok() for result in schema.get_all_operations()]


def test_the_schema_names_every_route_and_no_model_management(served) -> None:
    _, schema, _, _ = served
    ops = sorted((op.method.upper(), op.path) for op in _operations(schema))
    assert ops == [("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/v1/model"),
                   ("POST", "/v1/predict")]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["positive", "negative"])
def test_no_generated_request_gets_a_5xx(served, mode) -> None:
    _, schema, token, _ = served
    seen: Counter[tuple[str, int]] = Counter()

    @_examples(100)
    @given(case=schema.as_strategy(generation_mode=mode))
    def check(case) -> None:
        r = case.call(headers={"Authorization": f"Bearer {token}"})
        seen[(f"{case.method} {case.path}", r.status_code)] += 1
        assert r.status_code < 500, (case.as_curl_command(), r.status_code, r.text[:300])

    check()
    # the requests reached the routes with the key: the GET routes answered, and
    # predictions were checked (the schema's "inputs: array" is rarely the model's shape)
    routes = {route for route, _ in seen}
    assert {"GET /v1/model", "GET /metrics", "POST /v1/predict"} <= routes, seen
    assert not any(status == 401 for _, status in seen), seen


@pytest.mark.timeout(120)
def test_every_operation_but_healthz_needs_a_live_key(served) -> None:
    app, schema, token, revoked_token = served
    bad = {"no key": {}, "wrong bearer": {"Authorization": "Bearer dlsec_" + "x" * 43},
           "wrong x-api-key": {"X-API-Key": "not-a-key"},
           "revoked": {"Authorization": f"Bearer {revoked_token}"},
           "empty bearer": {"Authorization": "Bearer "}}
    statuses: dict[tuple[str, str], set[int]] = {}
    for op in _operations(schema):

        @_examples(10)
        @given(case=op.as_strategy())
        def check(case) -> None:
            for what, headers in bad.items():
                # the generated case carries no key of its own: the schema's security
                # schemes are not parameters, so these headers are the only credentials
                r = case.call(headers=headers)
                statuses.setdefault((case.path, what), set()).add(r.status_code)

        check()
    for (path, what), codes in statuses.items():
        if path in PUBLIC:
            assert codes == {200}, (path, what, codes)
        else:
            assert codes == {401}, (path, what, codes)
    assert {path for path, _ in statuses} == {"/healthz", "/metrics", "/v1/model", "/v1/predict"}
    with TestClient(app) as client:
        assert client.get("/openapi.json").status_code == 200
        r = client.get("/v1/model", headers={"X-API-Key": token})
        assert r.status_code == 200 and r.json()["input_shape"] == [1, 8, 8]
        r = client.post("/v1/predict", json={"inputs": []})
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"


_VALUES = st.one_of(
    st.floats(0.0, 1.0, width=32),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([-0.0, 1.0000001, 1.000005, 1.00002, -1e-9, -2e-5, 3.4e38, 3.5e38, 1e300]),
    st.integers(-(2**70), 2**70), st.booleans(), st.none(), st.text(max_size=3),
)


@st.composite
def _near_valid(draw):
    """A JSON body of 0-4 rows shaped (1, 8, 8), nearly all in bounds, a few cells drawn
    from anything JSON holds (NaN, infinities, huge integers, strings, null...)."""
    rows = draw(st.integers(0, 4))
    x = draw(st.lists(st.floats(0.0, 1.0, width=32), min_size=rows * 64, max_size=rows * 64))
    cells: list[object] = list(x)
    for i in draw(st.lists(st.integers(0, max(0, rows * 64 - 1)), max_size=3)) if rows else []:
        cells[i] = draw(_VALUES)
    shaped = [[[cells[r * 64 + i * 8:r * 64 + i * 8 + 8] for i in range(8)]] for r in range(rows)]
    return shaped


def _valid(inputs: list) -> bool:
    """What the server must answer: at least one row, every cell a number (not a bool)
    whose float32 value is finite and within the card's bounds [0, 1] widened by the
    Oracle's tolerance, 1e-5 of the range (parse_inputs)."""
    cells = np.asarray(inputs, dtype=object).ravel()
    if len(inputs) == 0:
        return False
    for v in cells:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        with np.errstate(over="ignore"):
            f = float(np.float32(float(v))) if abs(v) < 1e308 else math.inf
        if not (math.isfinite(f) and -TOL <= f <= 1.0 + TOL):
            return False
    return True


@pytest.mark.timeout(120)
def test_bodies_close_to_valid_are_answered_or_refused_never_a_5xx(served) -> None:
    app, _, token, _ = served
    seen: Counter[int] = Counter()
    with TestClient(app) as client:

        @_examples(100)
        @given(inputs=_near_valid())
        def check(inputs) -> None:
            body = json.dumps({"inputs": inputs}, allow_nan=True)  # NaN and Infinity as such
            r = client.post("/v1/predict", content=body,
                            headers={"X-API-Key": token, "Content-Type": "application/json"})
            seen[r.status_code] += 1
            assert r.status_code in (200, 422), (r.status_code, r.text[:300])
            assert (r.status_code == 200) == _valid(inputs), (r.status_code, r.text[:300])
            if r.status_code == 200:
                outputs = np.asarray(r.json()["outputs"])
                assert outputs.shape == (len(inputs), 10)
                assert np.all(np.abs(outputs.sum(1) - 1.0) < 1e-4)

        check()
    assert seen[200] > 0 and seen[422] > 0, seen
