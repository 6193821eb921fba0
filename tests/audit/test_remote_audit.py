"""``dlsec audit --url``: a served model audited black-box against a real uvicorn server on
127.0.0.1 (``create_app`` on a free port, stopped by the test): the query-only sections
run and agree with the same audit of the saved model; every other section is listed as
skipped with its reason."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlsec.cli import main
from dlsec.models import save
from dlsec.serve.store import KeyStore

TOML = """
[blackbox]
samples = 5
max-queries = [20, 50]
attacks = ["square", "hsja"]
transfer = []
"""


@pytest.fixture(scope="module")
def served(trained_simplenet, tmp_path_factory) -> Iterator[tuple[str, KeyStore, Path]]:
    """(url, key store, saved model dir): the digits SimpleNet saved and served by
    ``create_app`` (policy scores) under uvicorn on a free loopback port."""
    from dlsec.serve.app import create_app
    from dlsec.serve.background import serving

    model, card, _ = trained_simplenet
    root = tmp_path_factory.mktemp("remote-audit")
    save(model, card, root / "model")
    store = KeyStore(root / "keys.db")
    try:
        with serving(create_app(root / "model", store=store, policy="scores")) as url:
            yield url, store, root / "model"
    finally:
        store.close()


@pytest.mark.slow
def test_remote_audit_runs_the_query_sections_and_lists_the_skipped(served, tmp_path,
                                                                     capsys) -> None:
    url, store, model_dir = served
    record, token = store.create("auditor")
    (tmp_path / "audit.toml").write_text(TOML)
    code = main(["audit", "--url", url, "--api-key", token, "--dataset", "digits",
                 "--config", str(tmp_path / "audit.toml"), "--out", str(tmp_path / "remote")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert token not in out + err
    report = json.loads((tmp_path / "remote" / "report.json").read_text())
    assert report["model"]["url"] == url and report["model"]["input_shape"] == [1, 8, 8]
    skipped = {s["section"]: s["reason"] for s in report["skipped"]}
    assert "white-box evasion" in skipped["evasion"] and "weights" in skipped["evasion"]
    assert {"model", "training", "accuracy", "evasion", "poisoning", "privacy"} <= set(skipped)
    assert not {"dataset", "blackbox"} & set(skipped)
    by_name = {s["name"]: s for s in report["sections"]}
    assert by_name["evasion"]["summary"] == f"skipped: {skipped['evasion']}"
    assert out.count("skipped:") == len(skipped)  # one row per skipped section in the summary
    assert "skipped" in (tmp_path / "remote" / "report.html").read_text()
    bb = by_name["blackbox"]["metrics"]
    assert "whitebox_robust_accuracy" not in bb  # no weights: no white-box comparison
    # every query the audit made was charged to the key and logged
    used = store.get(record.id).used
    assert used == sum(r["rows"] for r in store.log_rows(record.id))
    assert used >= bb["square_queries"] + bb["hsja_queries"] > 0

    # the same section on the saved model: the same attacks, the same numbers
    code = main(["audit", "--model-dir", str(model_dir), "--dataset", "digits",
                 "--sections", "blackbox", "--quiet", "--config", str(tmp_path / "audit.toml"),
                 "--out", str(tmp_path / "local")])
    capsys.readouterr()
    assert code == 0
    local = json.loads((tmp_path / "local" / "report.json").read_text())["metrics"]
    for name in ("clean_accuracy", "square_robust_accuracy", "square_queries",
                 "hsja_robust_accuracy", "hsja_queries", "blackbox_robust_accuracy"):
        assert local[f"blackbox.{name}"] == report["metrics"][f"blackbox.{name}"], name


def test_remote_audit_flag_errors_are_one_line(served, tmp_path, capsys, one_line_error) -> None:
    url, store, model_dir = served
    _, token = store.create("auditor")
    for argv, words in (
        (["--url", url, "--api-key", token], ("--dataset", "required")),
        (["--url", url, "--api-key", token, "--dataset", "digits", "--model-dir",
          str(model_dir)], ("--url", "--model-dir")),
        (["--url", url, "--api-key", "sk-nope", "--dataset", "digits"], ("refused",)),
    ):
        code = main(["audit", *argv, "--out", str(tmp_path / "r"), "--quiet"])
        assert code == 2
        assert "sk-nope" not in one_line_error(capsys.readouterr().err, *words)
    assert not (tmp_path / "r" / "report.json").exists()
