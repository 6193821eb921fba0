"""``kill -9`` of ``dlsec serve`` in the middle of a load, then a restart on the same
database: every request answered before the kill has its log row (by count and by the
sha256 of its inputs), the budget charged is exactly the rows logged, the server serves
again and the budget goes on from where it was (never reset)."""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter

import httpx
import pytest

from dlsec.serve.loadgen import RequestResult, make_inputs, run_load
from dlsec.serve.store import KeyStore

SHAPE, BOUNDS = (1, 8, 8), (0.0, 1.0)  # the digits card's
CLIENTS, BUDGET, KILL_AFTER = 8, 5000, 150
# every protection on (the watermark and detection write to the same database); a flag is
# only logged, so that no request is refused
PROTECTED = ("--detect", "prada,ood", "--on-flag", "log", "--watermark", "0.05")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill_9_mid_load_loses_no_logged_answer_and_keeps_the_budget(
    served_model_dir, tmp_path, dlsec_server
) -> None:
    db = tmp_path / "keys.db"
    with KeyStore(db) as store:
        key, token = store.create("crash", budget=BUDGET)
    key_id = key.id
    server = dlsec_server(served_model_dir, db, *PROTECTED)
    answered = threading.Event()
    count = [0]
    lock = threading.Lock()

    def on_result(r: RequestResult) -> None:
        if r.status == 200:
            with lock:
                count[0] += 1
                if count[0] >= KILL_AFTER:
                    answered.set()

    box: dict[str, object] = {}
    load = threading.Thread(target=lambda: box.update(report=run_load(
        server.url, token, input_shape=SHAPE, bounds=BOUNDS, clients=CLIENTS, requests=600,
        batch=1, seed=7, duration_s=60, timeout_s=5, on_result=on_result)))
    load.start()
    try:
        assert answered.wait(timeout=60), "the server answered fewer than KILL_AFTER requests"
        server.kill9()
    finally:
        load.join(timeout=90)
    assert not load.is_alive()
    report = box["report"]
    counts = report.counts()
    # killed mid-load: some requests were answered, the ones after the kill were not
    assert counts.get(200, 0) >= KILL_AFTER and counts.get(0, 0) > 0, counts
    assert set(counts) <= {0, 200}, counts  # never a 5xx or any other refusal
    ok = Counter(r.input_sha256 for r in report.answered())

    # the database after the kill: intact, every answer logged, charged = logged
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with KeyStore(db, create=False) as store:
        rows = store.log_rows(key_id)
        used = store.get(key_id).used
        remaining = store.remaining(key_id)
    logged = Counter(r["input_sha256"] for r in rows)
    assert not ok - logged, "answered requests without a log row"
    # logged but not answered: at most the requests in flight when the server died
    assert 0 <= sum((logged - ok).values()) <= CLIENTS
    assert used == sum(r["rows"] for r in rows) == len(rows)
    assert remaining == BUDGET - used

    # restart on the same database: it serves again, and the budget is not reset
    again = dlsec_server(served_model_dir, db, *PROTECTED)
    x = make_inputs(0, seed=99, batch=3, input_shape=SHAPE, bounds=BOUNDS)
    r = httpx.post(f"{again.url}/v1/predict", json={"inputs": x.tolist()},
                   headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["remaining"] == BUDGET - used - 3
    after = run_load(again.url, token, input_shape=SHAPE, bounds=BOUNDS, clients=4,
                     requests=20, batch=1, seed=8)
    assert after.counts() == {200: 20}
    with KeyStore(db, create=False) as store:
        assert store.get(key_id).used == used + 3 + 20
        assert len(store.log_rows(key_id)) == len(rows) + 1 + 20
    assert again.stop() == 0
