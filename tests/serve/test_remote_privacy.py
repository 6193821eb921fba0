"""``dlsec privacy membership|invert --url``: membership inference and black-box MI-Face
against a real uvicorn server on 127.0.0.1 (``create_app`` on a free port, stopped by the
fixture), run in-process through ``dlsec.cli.main`` and compared with the same command on
the saved model directory (same seed: the same numbers)."""

from __future__ import annotations

import json

from dlsec.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _summary(out: str) -> dict:
    summary = json.loads(out)
    summary.pop("seconds")
    return summary


def _charged(server, key_id: str) -> int:
    return sum(r["rows"] for r in server.store.log_rows(key_id))


LOSS = ("privacy", "membership", "--attack", "loss", "--members", "100", "--dataset", "digits",
        "--seed", "0", "--quiet")


def test_loss_attack_through_the_url_equals_the_local_run(server, served_model_dir,
                                                          capsys) -> None:
    # the served model was trained by train_model with dlsec train's defaults (validation
    # share 0.1, seed 0): --url's default members are exactly its card's
    code, out, err = _run(capsys, *LOSS, "--model-dir", str(served_model_dir))
    assert code == 0, err
    local = _summary(out)
    record, token = server.store.create("auditor")
    code, out, err = _run(capsys, *LOSS, "--url", server.url, "--api-key", token)
    assert code == 0, err
    assert token not in out + err and err == ""
    remote = _summary(out)
    assert remote == local  # AUC, TPR at 0.1% and 1% FPR, advantage, queries: all the same
    assert local["queries"] == 200 and local["n_members"] == local["n_nonmembers"] == 100
    # the server charged exactly the 200 records the attack scored, once each
    assert _charged(server, record.id) == 200 == server.store.get(record.id).used
    # another validation share is another member set: other numbers
    code, out, err = _run(capsys, *LOSS, "--url", server.url, "--api-key", token,
                          "--val-fraction", "0.5")
    assert code == 0, err
    assert _summary(out)["auc"] != local["auc"]


def test_lira_with_the_training_record_equals_the_local_run(server, served_model_dir,
                                                            capsys) -> None:
    # the shadows follow the record's recipe (3 epochs, lr 3e-3) and architecture
    argv = ("privacy", "membership", "--attack", "lira", "--shadows", "2", "--members", "60",
            "--dataset", "digits", "--quiet")
    code, out, err = _run(capsys, *argv, "--model-dir", str(served_model_dir))
    assert code == 0, err
    local = _summary(out)
    record, token = server.store.create("lira")
    code, out, err = _run(capsys, *argv, "--url", server.url, "--api-key", token,
                          "--training-record", str(served_model_dir / "card.json"))
    assert code == 0, err
    assert _summary(out) == local and local["queries"] == 120
    assert _charged(server, record.id) == 120


def test_label_only_through_a_label_key_equals_the_local_run(server, served_model_dir,
                                                            capsys) -> None:
    # label-only needs no scores: a key whose policy is label runs it (noisy views are
    # bought as asked, not replayed)
    argv = ("privacy", "membership", "--attack", "label-only", "--members", "20",
            "--dataset", "digits", "--quiet")
    code, out, err = _run(capsys, *argv, "--model-dir", str(served_model_dir))
    assert code == 0, err
    local = _summary(out)
    record, token = server.store.create("labels-auditor", policy="label")
    code, out, err = _run(capsys, *argv, "--url", server.url, "--api-key", token)
    assert code == 0, err
    assert _summary(out) == local and local["queries"] >= 40
    assert _charged(server, record.id) == local["queries"]


def test_the_keys_budget_gives_a_partial_membership_result(server, capsys,
                                                           one_line_error) -> None:
    record, token = server.store.create("poor", budget=51)
    code, out, err = _run(capsys, *LOSS, "--url", server.url, "--api-key", token)
    assert code == 0, err
    summary = json.loads(out)
    # 25 member/non-member pairs bought (an odd row would have been paid for nothing)
    assert summary["partial"] == {"records": 50, "records_planned": 200}
    assert summary["queries"] == 50 == _charged(server, record.id)
    assert err.strip() == ("warning: the server's query budget for this key ran out: the "
                           "results above are partial")
    # a budget that ends with the last record cut nothing: no warning
    exact, exact_token = server.store.create("exact", budget=200)
    code, out, err = _run(capsys, *LOSS, "--url", server.url, "--api-key", exact_token)
    assert code == 0 and err == "", err
    assert "partial" not in json.loads(out) and server.store.get(exact.id).used == 200
    # one row left: not even one pair; then none left: one line, exit 2
    code, _, err = _run(capsys, *LOSS, "--url", server.url, "--api-key", token)
    assert code == 2
    one_line_error(err, "budget")
    assert server.store.get(record.id).used == 50


def test_black_box_inversion_through_the_url_equals_the_local_run(server, served_model_dir,
                                                                 tmp_path, capsys) -> None:
    import hashlib

    argv = ("privacy", "invert", "--black-box", "--max-iter", "3", "--seed", "0")
    code, out, err = _run(capsys, *argv, "--model-dir", str(served_model_dir),
                          "--out", str(tmp_path / "local"))
    assert code == 0, err
    local = _summary(out)
    record, token = server.store.create("inverter")
    code, out, err = _run(capsys, *argv, "--url", server.url, "--api-key", token,
                          "--out", str(tmp_path / "remote"))
    assert code == 0, err
    remote = _summary(out)
    assert remote == local and local["variant"] == "black-box" and local["queries"] > 0
    assert _charged(server, record.id) == local["queries"]
    # the same scores (float32 through JSON and back) steer the same gradient estimates:
    # the reconstructions' image is the same, byte for byte
    png = [hashlib.sha256((tmp_path / d / "inversion.png").read_bytes()).hexdigest()
           for d in ("local", "remote")]
    assert png[0] == png[1]


def test_what_cannot_work_remotely_is_one_line(server, served_model_dir, tmp_path, capsys,
                                               one_line_error) -> None:
    _, token = server.store.create("any")
    code, _, err = _run(capsys, *LOSS, "--url", server.url, "--api-key", token,
                        "--training-record", str(tmp_path))
    assert code == 2
    one_line_error(err, "card")
    code, _, err = _run(capsys, "privacy", "invert", "--url", server.url, "--api-key", token)
    assert code == 2
    one_line_error(err, "--black-box", "weights")
    _, labels = server.store.create("labels", policy="label")
    code, _, err = _run(capsys, "privacy", "invert", "--black-box", "--url", server.url,
                        "--api-key", labels)
    assert code == 2
    one_line_error(err, "'label'", "'scores'")
    code, _, err = _run(capsys, *LOSS, "--url", server.url, "--api-key", labels)
    assert code == 2
    one_line_error(err, "'label'", "'scores'")
    code, _, err = _run(capsys, *LOSS, "--model-dir", str(served_model_dir),
                        "--val-fraction", "0.2")
    assert code == 2
    one_line_error(err, "--val-fraction", "--url")
    code, _, err = _run(capsys, *LOSS, "--url", server.url, "--api-key", token,
                        "--model-dir", str(served_model_dir))
    assert code == 2
    one_line_error(err, "--model-dir", "--url")
    code, _, err = _run(capsys, "privacy", "membership", "--attack", "loss", "--url",
                        server.url, "--api-key", token)
    assert code == 2
    one_line_error(err, "--dataset", "required")
