"""Hostile or mistaken audit inputs: models whose outputs are NaN, model directories that
do not fit the data or name code, class names matplotlib would parse, bad configs.
Each ends in a correct report or one line on stderr with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dlsec.audit.config import AuditConfig
from dlsec.audit.runner import run_audit
from dlsec.cli import main
from dlsec.models import ModelCard, build_network, save

DIGITS_CLASSES = [str(i) for i in range(10)]


def _one_line_error(capsys, code: int, *words: str) -> str:
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def _save_model(directory: Path, *, fill: float | None = None, dataset: str = "digits",
                classes: list[str] | None = None, seed: int = 0) -> Path:
    classes = classes or DIGITS_CLASSES
    torch.manual_seed(seed)
    net = build_network("simplenet", input_shape=[1, 8, 8], num_classes=len(classes))
    if fill is not None:
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(fill)
    card = ModelCard("simplenet", input_shape=[1, 8, 8], classes=classes, dataset=dataset)
    save(net, card, directory)
    return directory


def _strict_json(path: Path):
    def refuse(token: str):
        raise AssertionError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


# -- NaN outputs ---------------------------------------------------------------------------


def test_a_model_with_nan_outputs_is_reported_as_null_with_warnings(tmp_path: Path, capsys) -> None:
    model_dir = _save_model(tmp_path / "nan-model", fill=float("nan"))
    out = tmp_path / "run"
    code = main(["audit", "--model-dir", str(model_dir), "--out", str(out), "--quiet",
                 "--sections", "accuracy", "--fail-under", "accuracy.test_loss=0"])
    err = capsys.readouterr().err
    assert code == 1  # the gate on the null metric fails
    assert "warning: 1 metric(s) are not finite numbers" in err and "accuracy.test_loss (NaN)" in err
    assert "FAIL: accuracy.test_loss is null (accuracy.test_loss is NaN, not a number)" in err
    assert "Traceback" not in err
    report = _strict_json(out / "report.json")  # valid JSON: no NaN, no Infinity
    assert report["metrics"]["accuracy.test_loss"] is None
    assert report["non_finite"] == {"accuracy.test_loss": "NaN"}
    assert report["metrics"]["accuracy.clean_accuracy"] == 0.0  # NaN outputs classify nothing
    assert report["gates"] == [{
        "key": "accuracy.test_loss", "threshold": 0.0, "value": None, "passed": False,
        "reason": "accuracy.test_loss is NaN, not a number",
    }]
    assert report["passed"] is False and any("accuracy.test_loss" in w for w in report["warnings"])
    section = report["sections"][0]
    assert section["non_finite"] == {"metrics.test_loss": "NaN"}
    assert any("not finite (NaN or infinite) for 359 of 359" in w for w in section["warnings"])
    assert any("metric test_loss is NaN" in w for w in section["warnings"])
    _strict_json(out / "sections" / "accuracy.json")
    html = (out / "report.html").read_text()
    assert "NaN (null)" in html and "not finite numbers" in html


# -- the model directory and the dataset ---------------------------------------------------


def _classes_npz(path: Path, classes: list[str], *, n_per_class: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(classes)), n_per_class)
    x = rng.random((len(y), 1, 8, 8)).astype(np.float32) * 0.2 + (y / len(classes))[:, None, None, None]
    np.savez(path, x=np.clip(x, 0, 1).astype(np.float32), y=y, classes=np.array(classes))
    return path


def test_a_20_class_dataset_for_a_10_class_model_is_one_line_naming_both(
    tmp_path: Path, capsys
) -> None:
    model_dir = _save_model(tmp_path / "m")
    data = _classes_npz(tmp_path / "twenty.npz", [f"c{i}" for i in range(20)])
    out = tmp_path / "run"
    code = main(["audit", "--model-dir", str(model_dir), "--dataset", f"npz:{data}",
                 "--out", str(out), "--quiet"])
    line = _one_line_error(capsys, code, f"model dir {model_dir} has 10 classes from 'digits'",
                           f"dataset npz:{data} has 20")
    assert "input" not in line
    assert not (out / "report.json").exists()


def test_a_model_trained_on_other_data_needs_the_dataset_named(tmp_path: Path, capsys) -> None:
    data = _classes_npz(tmp_path / "ten.npz", DIGITS_CLASSES)
    model_dir = _save_model(tmp_path / "m", dataset=f"npz:{data}")
    out = tmp_path / "run"
    code = main(["audit", "--model-dir", str(model_dir), "--out", str(out), "--quiet",
                 "--sections", "accuracy"])
    _one_line_error(capsys, code, f"model dir {model_dir} was trained on 'npz:{data}'",
                    "default is 'digits'", f"--dataset npz:{data}")
    assert not (out / "report.json").exists()
    # named explicitly, it is audited, with a warning that the two differ
    outcome = run_audit(
        AuditConfig(model_dir=str(model_dir), dataset="digits", out=str(out), sections=["accuracy"]),
        progress=False,
    )
    assert outcome.report["warnings"] == [
        f"the model was trained on 'npz:{data}' and is audited on 'digits'"
    ]
    # and on its own data (named), no warning
    own = run_audit(
        AuditConfig(model_dir=str(model_dir), dataset=f"npz:{data}", out=str(tmp_path / "own"),
                    sections=["accuracy"]),
        progress=False,
    )
    assert own.report["warnings"] == []


# -- a model directory never runs code without consent -------------------------------------

_FACTORY_MODULE = '''
from pathlib import Path
Path({marker!r}).write_text("imported")

from dlsec.models import build_network


def build(input_shape, num_classes):
    return build_network("simplenet", input_shape=input_shape, num_classes=num_classes)
'''


@pytest.fixture
def code_model_dir(tmp_path: Path, monkeypatch):
    """A model directory whose card names ``<module>:build``; importing the module leaves a
    marker file. Returns (model dir, module name, marker path)."""
    name = f"dlsec_test_factory_{tmp_path.name.replace('-', '_')}"
    marker = tmp_path / "imported.txt"
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / f"{name}.py").write_text(_FACTORY_MODULE.format(marker=str(marker)))
    net = build_network("simplenet", input_shape=[1, 8, 8], num_classes=10)
    card = ModelCard(f"{name}:build", input_shape=[1, 8, 8], classes=DIGITS_CLASSES, dataset="digits")
    save(net, card, tmp_path / "m")
    monkeypatch.syspath_prepend(str(pkg))
    yield tmp_path / "m", name, marker
    sys.modules.pop(name, None)


def test_audit_refuses_a_cards_module_without_consent(code_model_dir, tmp_path: Path, capsys) -> None:
    model_dir, name, marker = code_model_dir
    out = tmp_path / "run"
    code = main(["audit", "--model-dir", str(model_dir), "--out", str(out), "--quiet",
                 "--sections", "model"])
    _one_line_error(capsys, code, name, "--trust-code")
    assert not marker.exists() and name not in sys.modules
    assert not (out / "report.json").exists()


@pytest.mark.parametrize("consent", ["--trust-code", "--model"])
def test_audit_builds_a_cards_module_with_consent(
    code_model_dir, tmp_path: Path, capsys, consent: str
) -> None:
    model_dir, name, marker = code_model_dir
    out = tmp_path / "run"
    args = ["--trust-code"] if consent == "--trust-code" else ["--model", f"{name}:build"]
    code = main(["audit", "--model-dir", str(model_dir), "--out", str(out), "--quiet",
                 "--sections", "model", *args])
    assert code == 0, capsys.readouterr().err
    assert marker.read_text() == "imported"
    assert json.loads((out / "report.json").read_text())["model"]["architecture"] == f"{name}:build"


def test_trust_code_is_a_toml_key(tmp_path: Path) -> None:
    from dlsec.audit.config import load_config

    p = tmp_path / "a.toml"
    p.write_text("trust-code = true\n")
    assert load_config(p).trust_code is True
    assert load_config(None, {"trust-code": True}).trust_code is True
    assert load_config().trust_code is False


# -- class names are text ------------------------------------------------------------------

ODD_NAMES = ["$\\foo$", "a_b", "x^2", "50%", "{}", "$x", "$$", "\\", "_{y}", "~#&"]


def test_class_names_with_math_characters_render_as_text(tmp_path: Path) -> None:
    data = _classes_npz(tmp_path / "odd.npz", ODD_NAMES)
    out = tmp_path / "run"
    outcome = run_audit(
        AuditConfig(dataset=f"npz:{data}", out=str(out), epochs=2, sections=["dataset", "accuracy"]),
        progress=False,
    )
    names = [row[0] for row in outcome.report["sections"][0]["tables"][0]["rows"]]
    assert names == ODD_NAMES
    html = (out / "report.html").read_text()
    assert "$\\foo$" in html and "_{y}" in html
    assert sum(len(s["figures"]) for s in outcome.report["sections"]) == 4


# -- a real process --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_bad_evasion_config_is_one_line_in_a_real_process(tmp_path: Path) -> None:
    p = tmp_path / "a.toml"
    p.write_text('[evasion]\nattacks = ["cw"]\n')
    proc = subprocess.run(
        [sys.executable, "-m", "dlsec.cli", "audit", "--config", str(p), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ['error: [evasion] attacks: cw is an L2 attack; set norm = "l2" to use it']
    assert not (tmp_path / "o").exists()

