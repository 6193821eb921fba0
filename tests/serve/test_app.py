"""The model server's app (dlsec.serve.app) through FastAPI's TestClient: keys on every
route but /healthz and /openapi.json, rate limits, exact budgets, one log row per answer,
bad bodies never a 500, and answers equal to the model's own softmax."""

from __future__ import annotations

import hashlib
import io
import json
import re
import sqlite3

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from dlsec.output_policies import PolicyError
from dlsec.serve import store as store_module
from dlsec.serve.app import ServeError, create_app
from dlsec.serve.limits import RequestLimits
from dlsec.serve.store import KeyStore


@pytest.fixture
def served(trained_simplenet, store, clock):
    """(client, model, store, clock) for an app with the default policy 'scores'."""
    model, card, _ = trained_simplenet
    app = create_app((model, card), store=store, limits=RequestLimits(max_rows=8, max_body_bytes=20_000),
                     clock=clock)
    with TestClient(app) as client:
        yield client, model, store, clock


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _json(x: torch.Tensor) -> dict[str, list]:
    return {"inputs": x.tolist()}


def _npy(x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x.numpy().astype("<f4"), allow_pickle=False)
    return buf.getvalue()


def _softmax(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(x), 1)


# -- keys ---------------------------------------------------------------------------------
def test_every_route_but_healthz_and_the_schema_needs_a_key(served, digits) -> None:
    client, _, store, _ = served
    _, token = store.create("alice")
    x = digits.x_test[:2]
    calls = [("GET", "/v1/model", {}), ("GET", "/metrics", {}),
             ("POST", "/v1/predict", {"json": _json(x)})]
    for method, path, kw in calls:
        for headers in ({}, _bearer("dlsec_not-a-key"), {"X-API-Key": "nope"},
                        {"Authorization": "Basic dXNlcjpwdw=="}):
            r = client.request(method, path, headers=headers, **kw)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert isinstance(r.json()["detail"], str)
        assert client.request(method, path, headers=_bearer(token), **kw).status_code == 200
        assert client.request(method, path, headers={"X-API-Key": token}, **kw).status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}
    assert store.log_rows() and len(store.log_rows()) == 2  # the two answered predictions
    # the schema is public (routes and the security scheme only); the docs UIs are off
    schema = client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer" and schemes["APIKeyHeader"]["name"] == "X-API-Key"
    for path, method in (("/v1/predict", "post"), ("/v1/model", "get"), ("/metrics", "get")):
        assert {"HTTPBearer": []} in schema["paths"][path][method]["security"]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert set(schema["paths"]) == {"/v1/predict", "/v1/model", "/metrics", "/healthz"}
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    # no route takes a model
    assert client.put("/v1/model", headers=_bearer(token)).status_code == 405
    assert client.delete("/v1/model", headers=_bearer(token)).status_code == 405


def test_a_revoked_key_is_refused_at_once_and_logs_nothing(served, digits) -> None:
    client, _, store, _ = served
    key, token = store.create("bob")
    body = _json(digits.x_test[:3])
    assert client.post("/v1/predict", json=body, headers=_bearer(token)).status_code == 200
    store.revoke(key.id)
    r = client.post("/v1/predict", json=body, headers=_bearer(token))
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert len(store.log_rows(key.id)) == 1 and store.get(key.id).used == 3


def test_model_info_shows_public_facts_and_the_callers_policy(served, trained_simplenet) -> None:
    client, _, store, _ = served
    _, card, _ = trained_simplenet
    _, plain = store.create("plain")
    _, labels = store.create("labels", policy="label")
    info = client.get("/v1/model", headers=_bearer(plain)).json()
    assert info == {"input_shape": [1, 8, 8], "classes": list(card.classes), "bounds": [0.0, 1.0],
                    "policy": "scores", "max_rows": 8, "max_body_bytes": 20_000}
    assert client.get("/v1/model", headers=_bearer(labels)).json()["policy"] == "label"


# -- answers ------------------------------------------------------------------------------
def test_answers_are_the_models_softmax_and_each_has_one_log_row(served, digits) -> None:
    client, model, store, _ = served
    key, token = store.create("carol")
    x = digits.x_test[:8]
    by_json = client.post("/v1/predict", json=_json(x), headers=_bearer(token))
    by_npy = client.post("/v1/predict", content=_npy(x),
                         headers={**_bearer(token), "Content-Type": "application/x-npy"})
    assert by_json.status_code == by_npy.status_code == 200
    assert by_json.json() == by_npy.json()
    body = by_json.json()
    assert body["policy"] == "scores" and body["remaining"] == -1
    out = torch.tensor(body["outputs"])
    assert out.shape == (8, 10)
    assert (out - _softmax(model, x)).abs().max() < 1e-6
    rows = store.log_rows(key.id)
    assert len(rows) == 2
    digest = hashlib.sha256(x.numpy().astype(np.float32).tobytes()).hexdigest()
    for row in rows:
        assert row["rows"] == 8 and row["status"] == 200 and row["policy"] == "scores"
        assert row["input_sha256"] == digest
        assert json.loads(row["outputs"]) == body["outputs"]


def test_each_keys_policy_overrides_the_servers(trained_simplenet, store, digits) -> None:
    model, card, _ = trained_simplenet
    app = create_app((model, card), store=store, policy="rounded:1")
    _, plain = store.create("plain")
    _, labels = store.create("labels", policy="label")
    _, top = store.create("top", policy="topk:2")
    x = digits.x_test[:20]
    probs = _softmax(model, x)
    with TestClient(app) as client:
        def ask(token: str) -> dict:
            r = client.post("/v1/predict", json=_json(x), headers=_bearer(token))
            assert r.status_code == 200, r.text
            return r.json()

        rounded = ask(plain)
        assert rounded["policy"] == "rounded:1"
        assert (torch.tensor(rounded["outputs"]) - probs).abs().max() <= 0.05 + 1e-6
        assert all(abs(v * 10 - round(v * 10)) < 1e-4 for row in rounded["outputs"] for v in row)
        lab = ask(labels)
        assert lab["policy"] == "label"
        assert all(type(v) is int for v in lab["outputs"])
        assert lab["outputs"] == probs.argmax(1).tolist()
        kept = torch.tensor(ask(top)["outputs"])
        assert ((kept > 0).sum(1) == 2).all()
        assert (kept.amax(1) - probs.amax(1)).abs().max() < 1e-6
    assert {r["policy"] for r in store.log_rows()} == {"rounded:1", "label", "topk:2"}


# -- limits -------------------------------------------------------------------------------
def test_a_burst_past_the_rate_limit_is_429_with_retry_after(served, digits) -> None:
    client, _, store, clock = served
    key, token = store.create("fast", rate=0.25, burst=2)
    body = _json(digits.x_test[:1])
    ok = [client.post("/v1/predict", json=body, headers=_bearer(token)).status_code for _ in range(2)]
    assert ok == [200, 200]
    r = client.post("/v1/predict", json=body, headers=_bearer(token))
    assert r.status_code == 429 and r.headers["Retry-After"] == "4"  # 1 token at 0.25/s
    clock.now += 1.5
    r = client.post("/v1/predict", json=body, headers=_bearer(token))
    assert r.status_code == 429 and r.headers["Retry-After"] == "3"  # ceil(2.5)
    clock.now += 2.5
    assert client.post("/v1/predict", json=body, headers=_bearer(token)).status_code == 200
    assert len(store.log_rows(key.id)) == 3  # refused requests are not logged


def test_the_servers_default_rate_applies_to_keys_without_one(trained_simplenet, store, digits,
                                                             clock) -> None:
    model, card, _ = trained_simplenet
    app = create_app((model, card), store=store, rate=0.5, clock=clock)  # burst ceil(0.5) = 1
    _, token = store.create("default")
    _, own = store.create("own", rate=100.0, burst=10)
    with TestClient(app) as client:
        r = [client.get("/v1/model", headers=_bearer(token)).status_code for _ in range(3)]
        assert r == [200, 200, 200]  # only predictions are rate limited
        body = _json(digits.x_test[:1])
        codes = [client.post("/v1/predict", json=body, headers=_bearer(token)) for _ in range(2)]
        assert [c.status_code for c in codes] == [200, 429]
        assert codes[1].headers["Retry-After"] == "2"
        codes = [client.post("/v1/predict", json=body, headers=_bearer(own)).status_code
                 for _ in range(5)]
        assert codes == [200] * 5


def test_a_budget_is_exact_in_rows(served, digits) -> None:
    client, _, store, _ = served
    key, token = store.create("dave", budget=5)
    x = digits.x_test

    def ask(n: int):
        return client.post("/v1/predict", json=_json(x[:n]), headers=_bearer(token))

    first = ask(3)
    assert first.status_code == 200 and first.json()["remaining"] == 2
    over = ask(3)
    assert over.status_code == 403
    assert over.json() == {"detail": "query budget exhausted: 2 rows left, the request has 3",
                           "code": "budget_exhausted", "remaining": 2}
    last = ask(2)
    assert last.status_code == 200 and last.json()["remaining"] == 0
    spent = ask(1)
    assert spent.status_code == 403 and spent.json()["remaining"] == 0
    assert [r["rows"] for r in store.log_rows(key.id)] == [3, 2]
    assert store.get(key.id).used == 5


@pytest.mark.parametrize(
    ("content", "ctype", "status", "words"),
    [
        (b"{", "application/json", 422, "not valid JSON"),
        (b'{"inputs": []}', "application/json", 422, "empty batch"),
        (b'{"inputs": [[1, 2]]}', "application/json", 422, "must be a list of 1"),
        (b'{"rows": 1}', "application/json", 422, "inputs"),
        (b'{"inputs": [' + b",".join([b"[[" + b",".join([b"[0,0,0,0,0,0,0,0]"] * 8) + b"]]"] * 9)
         + b"]}", "application/json", 413, "9 inputs exceed the limit of 8"),
        (b"x" * 20_001, "application/json", 413, "exceeds the limit of 20000 bytes"),
        (b"abc", "text/plain", 422, "unsupported content type"),
        (b"\x93NUMPY garbage", "application/x-npy", 422, ".npy"),
        (b'{"inputs": [' + b"[[" + b",".join([b"[9,0,0,0,0,0,0,0]"] * 8) + b"]]" + b"]}",
         "application/json", 422, "must lie in [0, 1]"),
        (b'{"inputs": [' + b"[[" + b",".join([b"[NaN,0,0,0,0,0,0,0]"] * 8) + b"]]" + b"]}",
         "application/json", 422, "NaN"),
    ],
)
def test_bad_bodies_are_413_or_422_never_500_and_log_nothing(served, content, ctype, status, words) -> None:
    client, _, store, _ = served
    key, token = store.create("eve")
    r = client.post("/v1/predict", content=content, headers={**_bearer(token), "Content-Type": ctype})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert store.log_rows(key.id) == [] and store.get(key.id).used == 0


def test_wrong_npy_dtype_is_422(served, digits) -> None:
    client, _, store, _ = served
    _, token = store.create("frank")
    buf = io.BytesIO()
    np.save(buf, digits.x_test[:2].numpy().astype(np.float64))
    r = client.post("/v1/predict", content=buf.getvalue(),
                    headers={**_bearer(token), "Content-Type": "application/x-npy"})
    assert r.status_code == 422 and "float32" in r.json()["detail"]


def test_a_locked_database_is_503_not_500(trained_simplenet, tmp_path, monkeypatch, digits) -> None:
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 50)
    model, card, _ = trained_simplenet
    with KeyStore(tmp_path / "keys.db") as store:
        key, token = store.create("gina")
        app = create_app((model, card), store=store)
        body = _json(digits.x_test[:2])
        other = sqlite3.connect(tmp_path / "keys.db", isolation_level=None)
        with TestClient(app) as client:
            other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
            r = client.post("/v1/predict", json=body, headers=_bearer(token))
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
            other.execute("ROLLBACK")
            assert client.post("/v1/predict", json=body, headers=_bearer(token)).status_code == 200
        other.close()
        assert len(store.log_rows(key.id)) == 1


# -- metrics and construction ------------------------------------------------------------
def _sample(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    assert m, (name, labels)
    return float(m.group(1))


def test_metrics_count_requests_rows_and_refusals(served, digits) -> None:
    client, _, store, clock = served
    _, token = store.create("hal", rate=1.0, burst=1, budget=4)
    client.post("/v1/predict", json=_json(digits.x_test[:3]), headers=_bearer(token))  # 200
    client.post("/v1/predict", json=_json(digits.x_test[:3]), headers=_bearer(token))  # 429
    clock.now += 5
    client.post("/v1/predict", json=_json(digits.x_test[:3]), headers=_bearer(token))  # 403
    client.get("/v1/model")  # 401
    text = client.get("/metrics", headers=_bearer(token)).text
    route = '{route="/v1/predict",status="%s"}'
    for status in ("200", "429", "403"):
        assert _sample(text, "dlsec_requests_total", route % status) == 1.0
    assert _sample(text, "dlsec_requests_total", '{route="/v1/model",status="401"}') == 1.0
    assert _sample(text, "dlsec_rows_answered_total") == 3.0
    assert _sample(text, "dlsec_unauthorized_total") == 1.0
    assert _sample(text, "dlsec_rate_limited_total") == 1.0
    assert _sample(text, "dlsec_budget_exhausted_total") == 1.0
    assert _sample(text, "dlsec_request_seconds_count", '{route="/v1/predict"}') == 3.0


def test_two_apps_do_not_share_metrics(trained_simplenet, store) -> None:
    model, card, _ = trained_simplenet
    _, token = store.create("ivy")
    a = TestClient(create_app((model, card), store=store))
    b = TestClient(create_app((model, card), store=store))
    a.get("/healthz")
    a.get("/healthz")
    text = b.get("/metrics", headers=_bearer(token)).text
    assert 'route="/healthz"' not in text
    assert _sample(a.get("/metrics", headers=_bearer(token)).text, "dlsec_requests_total",
                   '{route="/healthz",status="200"}') == 2.0


@pytest.mark.parametrize(
    ("kw", "error", "words"),
    [
        ({"rate": 0.0}, ServeError, "rate must be"),
        ({"burst": 3}, ServeError, "a burst needs a rate"),
        ({"rate": 1.0, "burst": 0}, ServeError, "burst must be"),
        ({"policy": "topk:zero"}, PolicyError, "bad output policy"),
    ],
)
def test_bad_arguments_are_one_line_errors(trained_simplenet, store, kw, error, words) -> None:
    model, card, _ = trained_simplenet
    with pytest.raises(error, match=re.escape(words)):
        create_app((model, card), store=store, **kw)


def test_checks_run_in_order_key_then_rate_then_body(served) -> None:
    client, _, store, _ = served
    key, token = store.create("jo", rate=0.1, burst=1)
    too_big = b"x" * 20_001
    # no key: 401 even for a body over the limit (the body is not read first)
    r = client.post("/v1/predict", content=too_big, headers={"Content-Type": "application/json"})
    assert r.status_code == 401
    # a key: the body is checked (413), and the request took the key's one token
    r = client.post("/v1/predict", content=too_big,
                    headers={**_bearer(token), "Content-Type": "application/json"})
    assert r.status_code == 413
    r = client.post("/v1/predict", content=b"{", headers={**_bearer(token), "Content-Type": "application/json"})
    assert r.status_code == 429 and r.headers["Retry-After"] == "10"  # rate before the body
    assert store.log_rows(key.id) == []


def test_the_noise_policy_follows_the_apps_seed(trained_simplenet, store, digits) -> None:
    model, card, _ = trained_simplenet
    _, token = store.create("noisy", policy="noise:0.05")
    body = _json(digits.x_test[:6])

    def answers(seed: int | None) -> list[torch.Tensor]:
        with TestClient(create_app((model, card), store=store, seed=seed)) as client:
            return [torch.tensor(client.post("/v1/predict", json=body, headers=_bearer(token))
                                 .json()["outputs"]) for _ in range(2)]

    a1, a2 = answers(7)
    b1, b2 = answers(7)
    c1, _ = answers(None)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)  # same seed, same noise
    assert (a1 - a2).abs().max() > 1e-3  # fresh noise per answer
    assert (a1 - c1).abs().max() > 1e-3  # no seed: a secret one
    probs = _softmax(model, digits.x_test[:6])
    assert (a1 - probs).abs().max() > 1e-3 and (a1.sum(1) - 1).abs().max() < 1e-5
