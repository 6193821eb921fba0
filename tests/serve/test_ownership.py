"""DAWN in the server (dlsec.serve.ledger through create_app's ``watermark=``) and
``dlsec ownership``: a thief fitted closely to the answers it bought through the API is
identified, models trained independently on the same data are not, a marked input gets
the same wrong label every time and is recorded once, and the CLI's errors are one line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fastapi.testclient import TestClient

from dlsec.cli import main
from dlsec.models import save
from dlsec.serve.app import create_app
from dlsec.serve.ledger import ServedWatermark, WatermarkLedger
from dlsec.serve.store import KeyStore
from dlsec.serve.watermark import WatermarkError
from dlsec.training import TrainConfig, predict_logits, train_model

FRACTION = 0.05
SECRET = b"a test secret of 16+ bytes"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _ask(client: TestClient, token: str, x: torch.Tensor, batch: int = 250) -> list:
    outputs: list = []
    for i in range(0, len(x), batch):
        r = client.post("/v1/predict", json={"inputs": x[i:i + batch].tolist()},
                        headers=_bearer(token))
        assert r.status_code == 200, r.text
        outputs += r.json()["outputs"]
    return outputs


def _thief_queries(digits) -> torch.Tensor:
    lo, hi = (float(b) for b in digits.bounds)
    gen = torch.Generator().manual_seed(5)
    jitter = digits.x_train + 0.1 * (hi - lo) * torch.randn(digits.x_train.shape, generator=gen)
    return torch.cat([digits.x_train, jitter.clamp(lo, hi)])


@pytest.fixture(scope="module")
def served(tmp_path_factory, trained_simplenet, digits):
    """A watermarked server (fraction 0.05) that a label-only thief queried with 2876
    digits-like inputs (the 1438 training digits and a copy jittered by N(0, 0.1^2),
    clipped to the bounds); yields (db, client, tokens, ids, store, answers, x)."""
    db = tmp_path_factory.mktemp("own") / "keys.db"
    model, card, _ = trained_simplenet
    with KeyStore(db) as store:
        ids, tokens = {}, {}
        for name, policy in (("thief", "label"), ("scorer", "scores"), ("noisy", "noise:0.05"),
                             ("top", "topk:2")):
            key, tokens[name] = store.create(name, policy=policy)
            ids[name] = key.id
        with WatermarkLedger(db) as ledger:
            wm = ServedWatermark(ledger, fraction=FRACTION, secret=SECRET)
            app = create_app((model, card), store=store, watermark=wm, seed=0)
            with TestClient(app) as client:
                x = _thief_queries(digits)
                answers = torch.tensor(_ask(client, tokens["thief"], x, batch=1000))
                yield db, client, tokens, ids, store, answers, x


def test_the_thiefs_marked_share_is_near_the_fraction_and_each_is_recorded(
    served, digits, trained_simplenet
) -> None:
    db, _, _, ids, store, answers, x = served
    with WatermarkLedger(db, create=False) as ledger:
        rec = ledger.records(ids["thief"])
    n = len(rec.labels)
    # 2876 distinct inputs at 0.05: 144 expected, sd 11.7 (key ids are random, so is n);
    # at least 60 (P(fewer) < 1e-12) gives the ownership test its power
    assert 60 <= n <= 250, n
    # each record is a row the thief sent, answered with the recorded wrong label
    index = {row.numpy().tobytes(): i for i, row in enumerate(x)}
    rows = [index[r.numpy().tobytes()] for r in rec.inputs]
    assert torch.equal(answers[rows], rec.labels)
    assert bool((rec.labels != rec.served).all())
    # exactly the recorded rows were answered with another label than the model's
    clean = predict_logits(trained_simplenet[0], x).argmax(1)
    assert sorted(rows) == (answers != clean).nonzero().flatten().tolist()
    log = store.log_rows(ids["thief"])
    assert sum(r["rows"] for r in log) == len(x) == 2876
    # the log holds what the client got (marked labels included)
    logged = [v for r in log for v in json.loads(r["outputs"])]
    assert logged == answers.tolist()


def test_a_keys_marked_fraction_is_within_4_5_sd_of_the_fraction(served, digits) -> None:
    """4000 distinct digits-like inputs (test digits plus uniform noise in the bounds) of a
    new key: the marked share is FRACTION within 4.5 sd (0.05 +- 0.0155)."""
    db, client, _, _, store, _, _ = served
    key, token = store.create("counted", policy="label")
    gen = torch.Generator().manual_seed(3)
    lo, hi = (float(b) for b in digits.bounds)
    x = digits.x_test.repeat(12, 1, 1, 1)
    x = (x + 0.25 * (hi - lo) * torch.rand(x.shape, generator=gen)).clamp(lo, hi)
    _ask(client, token, x, batch=1000)
    with WatermarkLedger(db, create=False) as ledger:
        n = ledger.counts()[key.id]
    distinct = len({r.numpy().tobytes() for r in x})
    sd = math.sqrt(FRACTION * (1 - FRACTION) / distinct)
    assert distinct > 3900
    assert abs(n / distinct - FRACTION) < 4.5 * sd, (n, distinct)


def test_the_same_input_gets_the_same_wrong_label_in_every_policy_and_one_record(
    served, digits, trained_simplenet
) -> None:
    db, client, tokens, ids, _, _, _ = served
    model = trained_simplenet[0]
    x = torch.cat([digits.x_test, digits.x_test.flip(-1)])  # not the thief's
    clean = predict_logits(model, x).argmax(1)
    for name in ("scorer", "noisy", "top"):
        first = torch.tensor(_ask(client, tokens[name], x))
        second = torch.tensor(_ask(client, tokens[name], x))
        with WatermarkLedger(db, create=False) as ledger:
            rec = ledger.records(ids[name])
        # 718 inputs at 0.05: 36 expected, sd 5.8; P(fewer than 10) < 1e-6
        assert 10 <= len(rec.labels) <= 80, (name, len(rec.labels))
        hashes = {r.numpy().tobytes() for r in rec.inputs}
        assert len(hashes) == len(rec.labels)  # sent twice, recorded once
        index = {row.numpy().tobytes(): i for i, row in enumerate(x)}
        rows = torch.tensor([index[r.numpy().tobytes()] for r in rec.inputs])
        marked = torch.zeros(len(x), dtype=torch.bool)
        marked[rows] = True
        for out in (first, second):
            assert torch.equal(out.argmax(1)[rows], rec.labels), name
            assert bool((out.argmax(1)[rows] != clean[rows]).all())
        if name != "noisy":
            assert torch.equal(first, second)
            # unmarked rows keep the model's label
            assert torch.equal(first.argmax(1)[~marked], clean[~marked])


def _save(tmp_path, name, model, card):
    out = tmp_path / name
    save(model, card, out)
    return out


@pytest.mark.slow
def test_a_thief_is_identified_and_independent_models_are_not(
    served, digits, trained_simplenet, tmp_path, capsys, fit_thief
) -> None:
    db, _, _, ids, _, answers, x = served
    card = trained_simplenet[1]
    thief = fit_thief(card, x, answers)
    copy_acc = float((predict_logits(thief, digits.x_test).argmax(1) == digits.y_test).float().mean())
    assert copy_acc > 0.85, copy_acc  # a useful copy
    suspect = _save(tmp_path, "thief", thief, card)
    out_json = tmp_path / "own.json"
    assert main(["ownership", "--suspect", str(suspect), "--log", str(db), "--key", ids["thief"],
                 "--json", str(out_json), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    (key,) = result["keys"]
    # measured (4 key ids): 120-146 of 141-159 reproduced, p < 1e-90
    assert key["stolen"] and key["p_value"] < 0.01 and key["agreement"] > 0.5, key
    assert "STOLEN" in printed and f"key {ids['thief']} (thief)" in printed
    # every key with records (thief + the three of the consistency test, or only the
    # thief when run alone), Bonferroni-corrected: still stolen
    assert main(["ownership", "--suspect", str(suspect), "--log", str(db), "--json",
                 str(out_json), "--device", "cpu"]) == 0
    every = json.loads(out_json.read_text())
    k = len(every["keys"])
    thief_row = next(r for r in every["keys"] if r["key"] == ids["thief"])
    assert abs(thief_row["p_value"] / key["p_value"] - k) < 1e-6 * k and every["stolen"]
    capsys.readouterr()
    for seed in (1, 2):
        model, ind_card, _ = train_model(digits, "simplenet", TrainConfig(epochs=10, lr=3e-3, seed=seed),
                                         progress=False)
        path = _save(tmp_path, f"independent{seed}", model, ind_card)
        assert main(["ownership", "--suspect", str(path), "--log", str(db), "--key", ids["thief"],
                     "--json", str(out_json), "--device", "cpu"]) == 0
        (row,) = json.loads(out_json.read_text())["keys"]
        # measured (seeds 1-5): 0 or 1 of 141 agree, p > 0.99
        assert not row["stolen"] and row["p_value"] > 0.05 and row["agreement"] < 0.1, (seed, row)
        assert "overall: not stolen" in capsys.readouterr().out


def test_ownership_errors_are_one_line(served, tmp_path, trained_simplenet, capsys, one_line_error) -> None:
    db = served[0]
    model, card, _ = trained_simplenet
    suspect = _save(tmp_path, "victim", model, card)

    def fails(*args: str, words: tuple[str, ...] = ()) -> None:
        assert main(["ownership", "--suspect", str(suspect), *args]) == 2
        one_line_error(capsys.readouterr().err, *words)

    fails("--log", str(tmp_path / "missing.db"), words=("no key database",))
    with KeyStore(tmp_path / "plain.db"):
        pass
    fails("--log", str(tmp_path / "plain.db"), words=("no watermark records",))
    fails("--log", str(db), "--key", "nokey", words=("nokey",))
    fails("--log", str(db), "--alpha", "1.5", words=("--alpha",))
    # records of a model with another input shape, or another class count
    for name, inputs, classes, word in (("shape.db", torch.rand(3, 32), 10, "shape"),
                                        ("classes.db", torch.rand(3, 1, 8, 8), 5, "classes")):
        with KeyStore(tmp_path / name) as s:
            key, _ = s.create("k")
        with WatermarkLedger(tmp_path / name) as ledger:
            ledger.record(key.id, inputs, torch.tensor([1, 2, 3]), torch.tensor([0, 0, 0]),
                          num_classes=classes)
        fails("--log", str(tmp_path / name), words=(word,))
    assert not (tmp_path / "never.json").exists()


def test_served_watermark_settings_and_secret(tmp_path) -> None:
    with KeyStore(tmp_path / "k.db"):
        pass
    with WatermarkLedger(tmp_path / "k.db") as ledger:
        first = ledger.secret()
        assert len(first) == 32 and ledger.secret() == first  # drawn once, then kept
        with pytest.raises(WatermarkError, match="fraction"):
            ServedWatermark(ledger, fraction=0.0)
        with pytest.raises(WatermarkError, match="16 bytes"):
            ServedWatermark(ledger, fraction=0.1, secret=b"short")
        assert first.hex() not in repr(ServedWatermark(ledger, fraction=0.1))
    with WatermarkLedger(tmp_path / "k.db") as again:
        assert again.secret() == first


def test_serve_refuses_bad_watermark_flags(served_model_dir, tmp_path, capsys, one_line_error) -> None:
    db = tmp_path / "keys.db"
    with KeyStore(db):
        pass
    short = tmp_path / "short.key"
    short.write_bytes(b"0123456789")
    for extra, word in ((["--watermark", "1.5"], "--watermark"),
                        (["--watermark", "0"], "--watermark"),
                        (["--watermark-secret-file", str(short)], "needs --watermark"),
                        (["--watermark", "0.1", "--watermark-secret-file", str(short)], "16 bytes"),
                        (["--watermark", "0.1", "--watermark-secret-file", str(tmp_path / "no")],
                         "cannot read")):
        assert main(["serve", str(served_model_dir), "--db", str(db), "--port", "0", *extra]) == 2
        one_line_error(capsys.readouterr().err, word)


@pytest.mark.slow
def test_dlsec_serve_watermark_is_kept_across_a_restart(
    served_model_dir, digits, tmp_path, keys, dlsec_server, capsys
) -> None:
    """A real ``dlsec serve --watermark 0.2``: the marked answers are recorded, the secret is
    drawn once into the database (never printed), and a restarted server gives the same
    inputs the same wrong labels."""
    import httpx

    from dlsec.models import load

    db = tmp_path / "keys.db"
    key_id, token = keys(db, "--policy", "label")
    model, _ = load(served_model_dir)
    x = digits.x_test[:200]
    clean = predict_logits(model, x).argmax(1)
    answers = []
    for _ in range(2):
        server = dlsec_server(served_model_dir, db, "--watermark", "0.2")
        with httpx.Client(base_url=server.url, timeout=10) as client:
            r = client.post("/v1/predict", json={"inputs": x.tolist()}, headers=_bearer(token))
            assert r.status_code == 200, r.text
            answers.append(torch.tensor(r.json()["outputs"]))
        assert server.stop() == 0
        assert server.proc.stderr is not None
        err = server.proc.stderr.read()
        with WatermarkLedger(db, create=False) as ledger:
            secret = ledger.secret()
            rec = ledger.records(key_id)
        assert secret.hex() not in err and "secret" not in err.lower()
    assert torch.equal(answers[0], answers[1])
    marked = answers[0] != clean
    # 200 inputs at 0.2: 40 expected, sd 5.7
    assert 15 <= int(marked.sum()) <= 70 and len(rec.labels) == int(marked.sum())
    assert sorted(rec.labels.tolist()) == sorted(answers[0][marked].tolist())
    # the served model itself never gives a watermark label: not stolen
    assert main(["ownership", "--suspect", str(served_model_dir), "--log", str(db)]) == 0
    out = capsys.readouterr().out
    assert f"0/{len(rec.labels)} watermark labels" in out and "overall: not stolen" in out
