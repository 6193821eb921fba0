"""``dlsec serve`` for real: a uvicorn server in a subprocess on a free loopback port, a
model trained and saved here, a key made by ``dlsec keys create``; plus the command's
one-line errors."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from dlsec.cli import main
from dlsec.commands.serve import is_loopback
from dlsec.models import save
from dlsec.serve.http_oracle import HttpOracle
from dlsec.training import TrainConfig, train_model

CLI = [sys.executable, "-m", "dlsec.cli"]
START_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def model_dir(digits, tmp_path_factory) -> Path:
    """A digits SimpleNet (3 epochs, seed 0) saved with dlsec's save."""
    model, card, _ = train_model(digits, "simplenet", TrainConfig(epochs=3, lr=3e-3, seed=0),
                                 progress=False)
    out = tmp_path_factory.mktemp("served") / "model"
    save(model, card, out)
    return out


def _create_key(db: Path, *extra: str) -> tuple[str, str]:
    done = subprocess.run([*CLI, "keys", "create", "--db", str(db), "--name", "test", *extra],
                          capture_output=True, text=True, timeout=60, check=True)
    key_id, token = done.stdout.split()
    return key_id, token


def _start(model_dir: Path, db: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """``dlsec serve`` on a port the OS picks (--port 0); returns the process and its URL,
    read from the one line it prints on stderr."""
    proc = subprocess.Popen([*CLI, "serve", str(model_dir), "--db", str(db), "--port", "0", *extra],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    line = proc.stderr.readline()  # blocks until the line, or EOF if it died
    m = re.search(r"on (http://127\.0\.0\.1:\d+) \(Ctrl-C stops\)", line)
    if m is None:
        proc.kill()
        raise AssertionError(f"dlsec serve did not start: {line}{proc.stderr.read()}")
    url = m.group(1)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:  # the line is printed just before uvicorn serves the bound socket
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError("dlsec serve bound its port but never answered /healthz")
        time.sleep(0.05)


def _npy(x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x.numpy().astype("<f4"), allow_pickle=False)
    return buf.getvalue()


def test_dlsec_serve_answers_over_http_like_the_local_model(model_dir, digits, tmp_path) -> None:
    from dlsec.models import load

    db = tmp_path / "keys.db"
    _, token = _create_key(db)
    _, labels_token = _create_key(db, "--policy", "label")
    proc, url = _start(model_dir, db)
    try:
        model, _ = load(model_dir)
        x = digits.x_test[:50]
        with torch.no_grad():
            local = torch.softmax(model(x), 1)
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, timeout=10) as client:
            r = client.post("/v1/predict", content=_npy(x),
                            headers={**auth, "Content-Type": "application/x-npy"})
            assert r.status_code == 200, r.text
            remote = torch.tensor(r.json()["outputs"])
            assert (remote - local).abs().max() < 1e-6
            r = client.post("/v1/predict", json={"inputs": x[:5].tolist()},
                            headers={"X-API-Key": labels_token})
            assert r.json()["outputs"] == local[:5].argmax(1).tolist()
            refused = client.post("/v1/predict", json={"inputs": x[:5].tolist()})
            assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
            assert client.get("/metrics").status_code == 401
            metrics = client.get("/metrics", headers=auth).text
            assert re.search(r'^dlsec_requests_total\{route="/v1/predict",status="200"\} 2\.0$',
                             metrics, re.M)
            assert re.search(r'^dlsec_requests_total\{route="/v1/predict",status="401"\} 1\.0$',
                             metrics, re.M)
            assert re.search(r"^dlsec_rows_answered_total 55\.0$", metrics, re.M)
        # HttpOracle, the client every black-box attack uses, against the real server
        with HttpOracle(url, token) as oracle:
            assert (oracle.query(x[:7]) - local[:7]).abs().max() < 1e-6
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert rc == 0
    assert proc.stderr is not None and "dlsec serve: stopped" in proc.stderr.read()


def test_serve_refuses_a_missing_db_bad_flags_and_a_port_in_use(
    model_dir, tmp_path, capsys, one_line_error
) -> None:
    db = tmp_path / "keys.db"
    assert main(["serve", str(model_dir), "--db", str(db)]) == 2
    one_line_error(capsys.readouterr().err, "no key database", "dlsec keys create")
    assert not db.exists()
    assert main(["keys", "create", "--db", str(db), "--name", "x"]) == 0
    capsys.readouterr()
    assert main(["serve", str(model_dir), "--db", str(db), "--policy", "topk:0"]) == 2
    one_line_error(capsys.readouterr().err, "topk")
    assert main(["serve", str(model_dir), "--db", str(db), "--burst", "3"]) == 2
    one_line_error(capsys.readouterr().err, "burst needs a rate")
    assert main(["serve", str(tmp_path / "nowhere"), "--db", str(db)]) == 2
    one_line_error(capsys.readouterr().err, "model directory not found")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", str(model_dir), "--db", str(db), "--port", str(port)]) == 2
    one_line_error(capsys.readouterr().err, "cannot listen on 127.0.0.1:")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True), ("127.8.9.1", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.4", False), ("example.org", False)],
)
def test_which_hosts_are_loopback(host, loopback) -> None:
    assert is_loopback(host) is loopback


def test_serve_refuses_a_card_naming_code_without_trust_code(model_dir, tmp_path, capsys,
                                                             one_line_error) -> None:
    import json
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    card = json.loads((copy / "card.json").read_text())
    card["architecture"] = "os:system"
    (copy / "card.json").write_text(json.dumps(card))
    db = tmp_path / "keys.db"
    assert main(["keys", "create", "--db", str(db), "--name", "x"]) == 0
    capsys.readouterr()
    assert main(["serve", str(copy), "--db", str(db)]) == 2
    one_line_error(capsys.readouterr().err, "would import and run module 'os'", "--trust-code")
