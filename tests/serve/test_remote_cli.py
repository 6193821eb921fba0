"""``dlsec attack|extract --url``: the black-box commands against a real uvicorn server on
127.0.0.1 (``create_app`` on a free port, stopped by the fixture), run in-process through
``dlsec.cli.main`` and compared with the same command on the saved model directory."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import numpy as np
import pytest

from dlsec.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _key(server, **limits) -> str:
    _, token = server.store.create("test", **limits)
    return token


SQUARE = ("attack", "square", "--eps", "0.1", "--samples", "6", "--max-queries", "60",
          "--dataset", "digits", "--seed", "0", "--quiet")


def test_square_through_the_url_equals_the_local_run(server, served_model_dir, tmp_path,
                                                     capsys) -> None:
    token = _key(server)
    code, out_local, err = _run(capsys, *SQUARE, "--model-dir", str(served_model_dir),
                                "--out", str(tmp_path / "local.npz"))
    assert code == 0, err
    before = sum(r["rows"] for r in server.store.log_rows())
    code, out_remote, err = _run(capsys, *SQUARE, "--url", server.url, "--api-key", token,
                                 "--out", str(tmp_path / "remote.npz"))
    assert code == 0, err
    assert token not in out_remote + err
    # the printed lines (robust accuracy, success curve, queries spent) are the same
    assert out_remote.replace("remote.npz", "x") == out_local.replace("local.npz", "x")
    local, remote = np.load(tmp_path / "local.npz"), np.load(tmp_path / "remote.npz")
    assert (local["success"] == remote["success"]).all()
    assert (local["queries"] == remote["queries"]).all()
    assert np.abs(local["x_adv"] - remote["x_adv"]).max() < 1e-5
    spent = int(local["queries"].sum())
    assert spent > 6 and "queries spent" in out_remote
    # the server charged the attack's queries plus the 6 clean-label rows
    rows = sum(r["rows"] for r in server.store.log_rows()) - before
    assert rows == spent + 6


def test_the_keys_budget_ends_the_attack_with_a_partial_result(server, capsys,
                                                                one_line_error) -> None:
    # 6 clean labels, then 14 rows for the attack: it stops when the key's budget is spent
    record, token = server.store.create("poor", budget=20)
    code, out, err = _run(capsys, *SQUARE, "--url", server.url, "--api-key", token)
    assert code == 0, err
    assert "queries spent 14" in out
    assert server.store.get(record.id).used == 20
    assert err.strip() == ("warning: the server's query budget for this key ran out: the "
                           "results above are partial")
    # a key with nothing left: one line, exit 2
    code, _, err = _run(capsys, *SQUARE, "--url", server.url, "--api-key", token)
    assert code == 2
    one_line_error(err, "budget", "exhausted")


def test_extract_through_the_url_charges_the_key(server, tmp_path, capsys) -> None:
    import json

    from dlsec.data import load_dataset

    record, token = server.store.create("thief", budget=100_000)
    code, _, err = _run(capsys, "extract", "--url", server.url, "--api-key", token,
                        "--dataset", "digits", "--budget", "200", "--strategy", "natural",
                        "--quiet", "--out", str(tmp_path / "x.json"))
    assert code == 0, err
    summary = json.loads((tmp_path / "x.json").read_text())
    assert summary["queries"] == 200
    assert summary["fidelity"] > 0.5  # 10 classes: chance is about 0.1
    # the server charged the attack's 200 rows and the labels of the held-out half of the
    # test split that fidelity is measured on
    n_test = len(load_dataset("digits", seed=0).y_test)
    assert server.store.get(record.id).used == 200 + (n_test - n_test // 2)


def test_white_box_and_bad_targets_are_one_line(server, capsys, one_line_error) -> None:
    token = _key(server)
    code, _, err = _run(capsys, "attack", "pgd", "--eps", "0.1", "--url", server.url,
                        "--api-key", token, "--dataset", "digits")
    assert code == 2
    one_line_error(err, "pgd", "weights")
    code, _, err = _run(capsys, "attack", "square", "--eps", "0.1", "--target", server.url,
                        "--dataset", "digits")
    assert code == 2
    one_line_error(err, "--url")
    code, _, err = _run(capsys, *SQUARE, "--url", server.url, "--api-key", "sk-wrong")
    assert code == 2
    assert "sk-wrong" not in one_line_error(err, "refused the API key")
    code, _, err = _run(capsys, "attack", "square", "--eps", "0.1", "--url", server.url,
                        "--api-key", token)
    assert code == 2
    one_line_error(err, "--dataset", "required")


def test_unreachable_and_foreign_servers_are_one_line_and_fast(capsys, one_line_error) -> None:
    from http.server import BaseHTTPRequestHandler, HTTPServer

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    code, _, err = _run(capsys, *SQUARE, "--url", f"http://127.0.0.1:{port}", "--api-key", "k")
    assert code == 2 and time.monotonic() - t0 < 10
    one_line_error(err, "cannot reach")

    class Plain(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>hello</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Plain)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        t0 = time.monotonic()
        code, _, err = _run(capsys, *SQUARE, "--url", f"http://127.0.0.1:{httpd.server_port}",
                            "--api-key", "k")
        assert code == 2 and time.monotonic() - t0 < 10
        one_line_error(err, "dlsec server")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_key_from_the_environment(server, capsys, monkeypatch) -> None:
    token = _key(server)
    monkeypatch.setenv("DLSEC_API_KEY", token)
    code, out, err = _run(capsys, "attack", "hsja", "--samples", "2", "--max-queries", "40",
                          "--norm", "l2", "--url", server.url, "--dataset", "digits", "--quiet")
    assert code == 0, err
    assert "through a labels oracle on 2 points" in out and token not in out + err
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_transfer_through_the_url_equals_the_local_run(server, served_model_dir, capsys) -> None:
    token = _key(server)
    argv = ("attack", "transfer", "--eps", "0.2", "--samples", "10", "--budget", "150",
            "--surrogate", "knockoff", "--craft", "pgd", "--dataset", "digits", "--quiet")
    code, local, err = _run(capsys, *argv, "--model-dir", str(served_model_dir))
    assert code == 0, err
    code, remote, err = _run(capsys, *argv, "--url", server.url, "--api-key", token)
    assert code == 0, err
    # the surrogate bought 150 answers and each of the 10 adversarials was sent once
    assert remote == local and "queries spent 160 (150 training, 10 sending)" in remote


def test_a_label_only_key_refuses_score_attacks_and_gradients(server, capsys,
                                                              one_line_error) -> None:

    from dlsec.commands._target import remote_context, remote_oracles
    from dlsec.scenarios.context import RemoteTargetError

    _, token = server.store.create("labels", policy="label")
    code, _, err = _run(capsys, *SQUARE, "--url", server.url, "--api-key", token)
    assert code == 2
    one_line_error(err, "'label'", "'scores'")
    with remote_oracles(server.url, token) as factory:
        ctx = remote_context(factory, "digits", seed=0, progress=False)
        x = ctx.dataset.x_test[:4]
        labels = ctx.model(x).argmax(1)  # one-hot rows of the served labels
        assert ctx.oracle(output="label").query(x).tolist() == labels.tolist()
        with pytest.raises(RemoteTargetError, match="weights"):
            ctx.model(x.clone().requires_grad_())
        with pytest.raises(RemoteTargetError, match="'label'"):
            ctx.oracle(output="scores")
