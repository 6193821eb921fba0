"""``dlsec serve`` for real: a uvicorn server in a subprocess on a free loopback port (the
``dlsec_server`` fixture of conftest.py), a model trained and saved there, a key made by
``dlsec keys create``; plus the command's one-line errors."""

from __future__ import annotations

import io
import re
import signal
import socket
import subprocess

import httpx
import numpy as np
import pytest
import torch

from dlsec.cli import main
from dlsec.commands.serve import is_loopback
from dlsec.serve.http_oracle import HttpOracle


def _npy(x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x.numpy().astype("<f4"), allow_pickle=False)
    return buf.getvalue()


@pytest.mark.slow
def test_dlsec_serve_answers_over_http_like_the_local_model(
    served_model_dir, digits, tmp_path, keys, dlsec_server
) -> None:
    from dlsec.models import load

    model_dir = served_model_dir
    db = tmp_path / "keys.db"
    _, token = keys(db)
    _, labels_token = keys(db, "--policy", "label")
    server = dlsec_server(model_dir, db)
    proc, url = server.proc, server.url
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
    served_model_dir, tmp_path, capsys, one_line_error
) -> None:
    model_dir = served_model_dir
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


def test_serve_refuses_a_card_naming_code_without_trust_code(served_model_dir, tmp_path, capsys,
                                                             one_line_error) -> None:
    import json
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(served_model_dir, copy)
    card = json.loads((copy / "card.json").read_text())
    card["architecture"] = "os:system"
    (copy / "card.json").write_text(json.dumps(card))
    db = tmp_path / "keys.db"
    assert main(["keys", "create", "--db", str(db), "--name", "x"]) == 0
    capsys.readouterr()
    assert main(["serve", str(copy), "--db", str(db)]) == 2
    one_line_error(capsys.readouterr().err, "would import and run module 'os'", "--trust-code")
