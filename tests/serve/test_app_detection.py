"""Extraction detection wired into the server (create_app(detect=..., on_flag=...)): a
Jacobian-augmentation stream is flagged by PRADA and then blocked (403, nothing charged)
or throttled (429); the event is in the store and counted in /metrics; the flag survives a
new app on the same database; a benign client replaying held-out digits is never flagged;
the OOD detector flags uniform-random queries; bad flags of dlsec serve are one line."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from dlsec.cli import main
from dlsec.commands.serve import ServeCommandError, _reference
from dlsec.models import save
from dlsec.serve.app import ServeError, create_app
from dlsec.serve.store import KeyStore

BATCH = 8


def _jacobian_stream(model: torch.nn.Module, seeds: torch.Tensor, n: int) -> torch.Tensor:
    """Papernot et al.'s augmentation: each round adds x + 0.1 * sign(grad of the predicted
    logit) for every point so far, clipped to the bounds [0, 1]."""
    pool = seeds.clone()
    while len(pool) < n:
        x = pool.clone().requires_grad_(True)
        logits = model(x)
        (grad,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), x)
        pool = torch.cat([pool, (pool + 0.1 * grad.sign()).clamp(0, 1)])
    return pool[:n].detach()


@pytest.fixture(scope="module")
def attack_stream(trained_simplenet, digits) -> torch.Tensor:
    model, _, _ = trained_simplenet
    seeds = torch.stack([digits.x_train[(digits.y_train == c).nonzero()[0, 0]] for c in range(10)])
    return _jacobian_stream(model, seeds, 320)


def _post(client: TestClient, token: str, x: torch.Tensor):
    return client.post("/v1/predict", json={"inputs": x.tolist()},
                       headers={"Authorization": f"Bearer {token}"})


def _send_until_refused(client, token, x) -> tuple[int, object]:
    """Send ``x`` in batches of BATCH; return (rows answered, the first refusal or None)."""
    answered = 0
    for i in range(0, len(x), BATCH):
        r = _post(client, token, x[i : i + BATCH])
        if r.status_code != 200:
            return answered, r
        answered += len(x[i : i + BATCH])
    return answered, None


def _sample(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, name
    return float(m.group(1))


def test_jacobian_stream_is_flagged_then_blocked_and_the_flag_persists(
    trained_simplenet, attack_stream, store
) -> None:
    model, card, _ = trained_simplenet
    app = create_app((model, card), store=store, detect=("prada",), on_flag="block")
    key, token = store.create("thief")
    with TestClient(app) as client:
        answered, refused = _send_until_refused(client, token, attack_stream)
        # PRADA tests from 100 distances (~110 queries); measured: flagged on the batch
        # that ends at query 112, so the next batch (after 112 rows) is refused.
        assert refused is not None and 104 <= answered <= 160, answered
        assert refused.status_code == 403 and refused.json()["code"] == "extraction_suspected"
        assert store.get(key.id).used == answered  # the refused batch was not charged
        assert len(store.log_rows(key.id)) == answered // BATCH
        (event,) = store.detections(key.id)
        assert (event["detector"], event["action"]) == ("prada", "block")
        assert event["queries"] == answered and event["statistic"] < 0.9
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
        assert _sample(metrics, 'dlsec_extraction_flagged_total{detector="prada"}') == 1.0
        assert _sample(metrics, "dlsec_extraction_blocked_total") == 1.0
        assert _sample(metrics, "dlsec_budget_exhausted_total") == 0.0
        # another key of the same server is served
        _, other = store.create("other")
        assert _post(client, other, attack_stream[:BATCH]).status_code == 200
    # a new app on the same database (detector states are in memory, the flag is not)
    again = create_app((model, card), store=store, detect=("prada",), on_flag="block")
    with TestClient(again) as client:
        assert _post(client, token, attack_stream[:1]).status_code == 403
        store.unflag(key.id)
        assert _post(client, token, attack_stream[:1]).status_code == 200
    assert store.get(key.id).used == answered + 1


def test_throttle_slows_a_flagged_key_to_the_throttle_rate(
    trained_simplenet, attack_stream, store, clock
) -> None:
    model, card, _ = trained_simplenet
    app = create_app((model, card), store=store, detect=("prada",), on_flag="throttle",
                     throttle_rate=0.25, clock=clock)
    key, token = store.create("thief")
    with TestClient(app) as client:
        answered, refused = _send_until_refused(client, token, attack_stream)
        (event,) = store.detections(key.id)
        assert event["action"] == "throttle" and store.get(key.id).flagged
        # the first request after the flag takes the fresh one-token bucket; the next one
        # in the same instant is 429 with Retry-After 1/0.25 = 4 s
        assert answered == event["queries"] + BATCH
        assert refused is not None and refused.status_code == 429
        assert refused.headers["Retry-After"] == "4"
        clock.now += 4.0
        assert _post(client, token, attack_stream[:1]).status_code == 200
        assert _post(client, token, attack_stream[:1]).status_code == 429
        assert len(store.detections(key.id)) == 1


def test_benign_replay_is_never_flagged_by_either_detector(trained_simplenet, digits, store) -> None:
    model, card, _ = trained_simplenet
    app = create_app((model, card), store=store, detect=("prada", "ood"), on_flag="block",
                     reference=digits.x_train)
    key, token = store.create("benign")
    with TestClient(app) as client:
        answered, refused = _send_until_refused(client, token, digits.x_test)
        assert refused is None and answered == len(digits.x_test) == 359
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
    assert not store.get(key.id).flagged and store.detections() == []
    assert "dlsec_extraction_flagged_total{" not in metrics
    # Measured (seed 0): PRADA's W at the end 0.969 (> 0.9); OOD: 5 of 359 rows beyond the
    # reference's 0.99 radius, Wilson lower bound 0.006 (threshold 0.1).
    prada, ood = app.state.detectors.get(key.id).values()
    assert prada.state.w is not None and prada.state.w > 0.92
    assert ood.state.outliers <= 12 and ood.state.lower < 0.03


def test_ood_flags_uniform_random_queries(trained_simplenet, digits, store) -> None:
    model, card, _ = trained_simplenet
    app = create_app((model, card), store=store, detect=("ood",), on_flag="block",
                     reference=digits.x_train)
    key, token = store.create("random")
    noise = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with TestClient(app) as client:
        answered, refused = _send_until_refused(client, token, noise)
    # 20 queries (min_queries) all outliers: Wilson lower bound 20/20 = 0.84 > 0.1.
    assert answered == 24 and refused is not None and refused.status_code == 403
    (event,) = store.detections(key.id)
    assert event["detector"] == "ood" and event["queries"] == 24 and event["statistic"] > 0.8


@pytest.mark.parametrize(("kw", "words"), [
    ({"detect": ("bogus",)}, ["unknown detector", "bogus"]),
    ({"detect": ("ood",)}, ["reference"]),
    ({"detect": ("ood",), "reference": torch.zeros(4, 3)}, ["3 features", "[1, 8, 8]"]),
    ({"on_flag": "ban"}, ["on_flag", "block"]),
    ({"throttle_rate": 0.0}, ["throttle rate"]),
    ({"prada_delta": 1.5}, ["delta"]),
])
def test_bad_detection_arguments(trained_simplenet, store, kw, words) -> None:
    model, card, _ = trained_simplenet
    with pytest.raises(ServeError) as info:
        create_app((model, card), store=store, **kw)
    assert "\n" not in str(info.value)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize(("args", "words"), [
    (["--detect", "bogus"], ["--detect", "bogus"]),
    (["--detect", "prada,prada"], ["twice"]),
    (["--on-flag", "ban"], ["--on-flag"]),
    (["--throttle-rate", "0"], ["--throttle-rate"]),
    (["--prada-delta", "2"], ["--prada-delta"]),
    (["--reference", "x.npy"], ["--reference", "ood"]),
    (["--detect", "ood", "--reference", "missing.npy"], ["cannot read --reference"]),
])
def test_dlsec_serve_bad_detection_flags_are_one_line(
    trained_simplenet, tmp_path, capsys, one_line_error, args, words
) -> None:
    model, card, _ = trained_simplenet
    model_dir = tmp_path / "model"
    save(model, card, model_dir)
    KeyStore(tmp_path / "keys.db").close()
    # a port in use would also fail, later: the flags are refused before the model loads
    argv = ["serve", str(model_dir), "--db", str(tmp_path / "keys.db"), "--port", "0", *args]
    assert main([a.replace("missing.npy", str(tmp_path / "missing.npy")) for a in argv]) == 2
    one_line_error(capsys.readouterr().err, *words)


def test_keys_list_events_and_unflag_on_the_command_line(tmp_path, capsys) -> None:
    db = tmp_path / "keys.db"
    with KeyStore(db) as store:
        thief, _ = store.create("thief")
        benign, _ = store.create("benign")
        store.flag(thief.id, detector="prada", queries=112, statistic=0.591, action="block")
    assert main(["keys", "list", "--db", str(db)]) == 0
    rows = {ln.split()[0]: ln.split()[-1] for ln in capsys.readouterr().out.splitlines()[1:]}
    assert rows == {thief.id: "yes", benign.id: "no"}
    assert main(["keys", "events", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "time", "key", "detector", "queries", "statistic", "action"]
    assert len(lines) == 2 and lines[1].split()[-5:] == [thief.id, "prada", "112", "0.591", "block"]
    assert main(["keys", "events", "--db", str(db), "--key", benign.id, "--json"]) == 0
    assert capsys.readouterr().out.strip() == "[]"
    assert main(["keys", "unflag", "--db", str(db), thief.id]) == 0
    assert capsys.readouterr().out == f"unflagged {thief.id} (thief)\n"
    with KeyStore(db) as store:
        assert not store.get(thief.id).flagged and len(store.detections()) == 1


def test_ood_reference_defaults_to_the_cards_dataset(trained_simplenet, digits, tmp_path) -> None:
    model, card, _ = trained_simplenet
    model_dir = tmp_path / "model"
    save(model, card, model_dir)
    ref = _reference(None, model_dir, ("prada", "ood"))
    assert ref is not None and torch.equal(ref, digits.x_train)  # card.dataset == "digits"
    assert _reference(None, model_dir, ("prada",)) is None
    np.save(tmp_path / "ref.npy", digits.x_test.numpy())
    assert torch.equal(_reference(tmp_path / "ref.npy", model_dir, ("ood",)), digits.x_test)
    np.save(tmp_path / "bad.npy", np.array(["a", "b"]))
    with pytest.raises(ServeCommandError, match="numeric array"):
        _reference(tmp_path / "bad.npy", model_dir, ("ood",))


def test_log_only_records_the_flag_and_keeps_answering(trained_simplenet, attack_stream, store) -> None:
    model, card, _ = trained_simplenet
    app = create_app((model, card), store=store, detect=("prada",), on_flag="log")
    key, token = store.create("thief")
    with TestClient(app) as client:
        answered, refused = _send_until_refused(client, token, attack_stream)
    assert refused is None and answered == len(attack_stream) == 320
    (event,) = store.detections(key.id)  # flagged once (measured: at query 112)
    assert (event["detector"], event["action"]) == ("prada", "log")
    assert 104 <= event["queries"] <= 160
    assert store.get(key.id).flagged and store.get(key.id).used == 320


def test_background_detection_flags_after_the_worker_catches_up(
    trained_simplenet, attack_stream, store
) -> None:
    model, card, _ = trained_simplenet
    app = create_app((model, card), store=store, detect=("prada",), on_flag="block",
                     detect_background=True)
    key, token = store.create("thief")
    with TestClient(app) as client:
        for i in range(0, 160, BATCH):  # past the measured flag at 112, without waiting
            r = _post(client, token, attack_stream[i : i + BATCH])
            assert r.status_code in (200, 403)
        app.state.watcher.join()  # every answered batch observed
        (event,) = store.detections(key.id)
        assert event["detector"] == "prada" and 104 <= event["queries"] <= 160
        r = _post(client, token, attack_stream[:1])
        assert r.status_code == 403 and r.json()["code"] == "extraction_suspected"
