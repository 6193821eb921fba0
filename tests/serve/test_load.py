"""``dlsec serve`` under load: 8 concurrent clients, 400 requests against a real uvicorn
subprocess; no 5xx, and the query log has exactly one row per answered request, charged
for its rows, with the sha256 of the inputs the client sent."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dlsec.serve.loadgen import LoadError, make_inputs, model_facts, run_load
from dlsec.serve.store import KeyStore

SHAPE, BOUNDS = (1, 8, 8), (0.0, 1.0)  # the digits card's
PROTECTED = ("--detect", "prada,ood", "--on-flag", "log", "--watermark", "0.05")


def _log_by_hash(db, key_id) -> tuple[Counter[str], int, list[dict]]:
    with KeyStore(db, create=False) as store:
        rows = store.log_rows(key_id)
    return Counter(r["input_sha256"] for r in rows), sum(r["rows"] for r in rows), rows


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_load_no_5xx_and_one_log_row_per_answer(served_model_dir, tmp_path,
                                                dlsec_server) -> None:
    db = tmp_path / "keys.db"
    # budget 700 rows: 400 requests of 1 row, then 200 of 2 rows run it out mid-load
    with KeyStore(db) as store:  # in-process: `dlsec keys create` is tested elsewhere
        key, token = store.create("load", budget=700)
        other, _ = store.create("idle")
    key_id, other_id = key.id, other.id
    # every protection on; a flag is only logged (uniform noise looks like extraction to
    # the OOD detector, and this test is about the log, not about refusals)
    server = dlsec_server(served_model_dir, db, *PROTECTED)
    assert model_facts(server.url, token) == (SHAPE, BOUNDS)
    first = run_load(server.url, token, input_shape=SHAPE, bounds=BOUNDS, clients=8,
                     requests=400, batch=1, seed=1, duration_s=60)
    second = run_load(server.url, token, input_shape=SHAPE, bounds=BOUNDS, clients=8,
                      requests=200, batch=2, seed=2, encoding="json", duration_s=60)
    assert first.counts() == {200: 400}, first.errors
    # 300 rows left, 2 rows a request: exactly 150 answered, the rest refused with 403
    assert second.counts() == {200: 150, 403: 50}, second.errors
    answered = first.answered() + second.answered()
    logged, charged, rows = _log_by_hash(db, key_id)
    assert len(rows) == len(answered) == 550
    assert logged == Counter(r.input_sha256 for r in answered)  # every answer, each once
    assert charged == 700
    assert all(r["status"] == 200 for r in rows)
    with KeyStore(db, create=False) as store:
        assert store.remaining(key_id) == 0
        assert store.log_rows(other_id) == []
        # detection ran under load: the OOD detector flagged the noise, once, logged only
        events = store.detections(key_id)
        detectors = [e["detector"] for e in events]
        assert "ood" in detectors and len(set(detectors)) == len(detectors)  # once each
        assert {e["action"] for e in events} == {"log"}
    # the seeded inputs: a distinct input per request, the same for a seed
    assert len(logged) == 550
    assert (make_inputs(3, seed=1, batch=1, input_shape=SHAPE, bounds=BOUNDS).tobytes()
            == make_inputs(3, seed=1, batch=1, input_shape=SHAPE, bounds=BOUNDS).tobytes())
    # a positive latency and throughput were measured
    assert 0 < first.percentile(50) <= first.percentile(99) < 10
    assert first.requests_per_second() > 0


def test_loadgen_refuses_a_non_loopback_url_and_bad_counts() -> None:
    for url in ("http://192.168.1.4:8000", "http://example.org", "http://0.0.0.0:80",
                "ftp://127.0.0.1/"):
        with pytest.raises(LoadError):
            run_load(url, "k", input_shape=SHAPE, bounds=BOUNDS, requests=1)
    with pytest.raises(LoadError, match="must be >= 1"):
        run_load("http://127.0.0.1:9", "k", input_shape=SHAPE, bounds=BOUNDS, clients=0)


class _Slow(BaseHTTPRequestHandler):
    """Answers every POST with 200 after DELAY_S, reading the body first."""

    DELAY_S = 0.05
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.DELAY_S)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:  # quiet
        pass


def test_loadgen_stops_at_its_duration_and_sends_seeded_inputs() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        rep = run_load(url, None, input_shape=SHAPE, bounds=BOUNDS, clients=2, requests=1000,
                       duration_s=0.5, seed=3)
        again = run_load(url, None, input_shape=SHAPE, bounds=BOUNDS, clients=3, requests=6,
                         seed=3, encoding="json")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    # 2 clients x 0.5 s / 0.05 s a request: about 20 requests, far from the 1000 asked
    assert rep.stopped_by_duration and 4 <= len(rep.results) <= 40, len(rep.results)
    assert rep.counts() == {200: len(rep.results)}
    assert rep.wall_seconds < 0.5 + 5 * _Slow.DELAY_S + 1.0
    assert _Slow.DELAY_S <= rep.percentile(50) < _Slow.DELAY_S + 0.5
    # the same seed sends the same inputs whatever the client count and encoding
    assert not again.stopped_by_duration and again.counts() == {200: 6}
    assert [r.input_sha256 for r in again.results] == [r.input_sha256 for r in rep.results[:6]]
    other = make_inputs(0, seed=4, batch=1, input_shape=SHAPE, bounds=BOUNDS)
    assert hashlib.sha256(other.tobytes()).hexdigest() != rep.results[0].input_sha256
