"""The privacy commands end to end on a tiny saved model."""

from __future__ import annotations

import json

import pytest

from dlsec.cli import main
from dlsec.models import save


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, trained_simplenet):
    model, card, _ = trained_simplenet
    path = tmp_path_factory.mktemp("m")
    save(model, card, path)
    return path


def test_membership_and_extract(model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "mem.json"
    rc = main(["privacy", "membership", "--model-dir", str(model_dir), "--attack", "loss",
               "--members", "50", "--out", str(out)])
    assert rc == 0
    summary = json.loads(out.read_text())
    assert summary["queries"] == 100 and 0.0 <= summary["auc"] <= 1.0
    rc = main(["extract", "--model-dir", str(model_dir), "--budget", "100", "--strategy",
               "natural", "--quiet", "--out", str(tmp_path / "ext.json")])
    assert rc == 0
    assert json.loads((tmp_path / "ext.json").read_text())["queries"] == 100


def test_invert_and_bad_attack(model_dir, tmp_path, capsys) -> None:
    rc = main(["privacy", "invert", "--model-dir", str(model_dir), "--out", str(tmp_path)])
    assert rc == 0
    assert (tmp_path / "inversion.png").stat().st_size > 0
    assert main(["privacy", "membership", "--model-dir", str(model_dir), "--attack", "nope"]) == 2


def test_extract_output_policy(model_dir, tmp_path, capsys, one_line_error) -> None:
    """``--output`` takes any output policy: top-1 scores carry exactly what labels carry
    (the attacker renormalises them to one-hot), so the same seed steals the same copy;
    a bad spec or a contradiction with ``--labels-only`` is one line, exit 2."""
    fid = {}
    for name, flags in {"topk1": ["--output", "topk:1"], "label": ["--labels-only"],
                        "scores": []}.items():
        out = tmp_path / f"{name}.json"
        assert main(["extract", "--model-dir", str(model_dir), "--budget", "100", "--strategy",
                     "natural", "--quiet", "--out", str(out), *flags]) == 0
        summary = json.loads(out.read_text())
        assert summary["output"] == {"topk1": "topk:1", "label": "label"}.get(name, "scores")
        fid[name] = summary["fidelity"]
    assert fid["topk1"] == pytest.approx(fid["label"], abs=1e-9)
    capsys.readouterr()
    assert main(["extract", "--model-dir", str(model_dir), "--output", "topk:0"]) == 2
    one_line_error(capsys.readouterr().err, "--output")
    assert main(["extract", "--model-dir", str(model_dir), "--labels-only", "--output",
                 "scores"]) == 2
    one_line_error(capsys.readouterr().err, "--labels-only")
