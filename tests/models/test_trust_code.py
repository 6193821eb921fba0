"""A model directory never runs code named in its card without the caller's consent."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from dlsec.models import (
    ModelCard,
    ModelError,
    build_model,
    check_code_allowed,
    load,
    read_card,
    save,
)

CLASSES = [str(i) for i in range(10)]


def _net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def _hostile_model(tmp_path: Path) -> tuple[Path, Path, str, str]:
    """A saved model whose card names ``<module>:build``; importing the module leaves a file.

    Returns (model dir, marker file, module name, the directory to put on sys.path).
    """
    module = f"dlsec_test_hostile_{uuid.uuid4().hex[:12]}"
    lib, marker = tmp_path / "lib", tmp_path / "imported"
    lib.mkdir()
    (lib / f"{module}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).touch()\n"
        "import torch.nn as nn\n"
        "def build(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n"
    )
    torch.manual_seed(0)
    card = ModelCard(f"{module}:build", input_shape=[1, 8, 8], classes=CLASSES)
    save(_net(), card, tmp_path / "model")  # saving never imports the architecture
    assert not marker.exists()
    return tmp_path / "model", marker, module, str(lib)


def test_load_refuses_a_card_naming_a_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, marker, module, lib = _hostile_model(tmp_path)
    monkeypatch.syspath_prepend(lib)

    card = read_card(model_dir)  # reading a card never imports
    assert card.architecture == f"{module}:build"
    with pytest.raises(ModelError) as err:
        load(model_dir)
    msg = str(err.value)
    assert "\n" not in msg and str(model_dir / "card.json") in msg
    assert repr(module) in msg and "--trust-code" in msg and f"--model {module}:build" in msg
    assert "trust_code=True" in msg
    with pytest.raises(ModelError, match="refused"):
        build_model(card)
    with pytest.raises(ModelError, match="refused"):
        load(model_dir, factory="simplenet")  # another factory is no consent
    assert not marker.exists() and module not in sys.modules

    # with consent it loads, and the import really would have left the file
    model, card = load(model_dir, trust_code=True)
    assert marker.exists()
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    # consent stays with the loaded card object (fresh copies, e.g. shadow models) ...
    assert isinstance(build_model(card), nn.Module)
    # ... but not with a copy of it, nor with the file
    with pytest.raises(ModelError, match="refused"):
        build_model(dataclasses.replace(card, dataset="x"))
    with pytest.raises(ModelError, match="refused"):
        load(model_dir)


def test_naming_the_same_factory_is_consent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, marker, module, lib = _hostile_model(tmp_path)
    monkeypatch.syspath_prepend(lib)
    model, card = load(model_dir, factory=f"{module}:build")
    assert marker.exists() and card.architecture == f"{module}:build"
    x = torch.rand(3, 1, 8, 8)
    torch.manual_seed(0)
    reference = _net()
    assert torch.equal(model(x), reference(x))  # the saved weights, loaded


def test_builtin_architectures_need_no_consent(tmp_path: Path) -> None:
    card = ModelCard("simplenet", input_shape=[1, 8, 8], classes=CLASSES)
    save(build_model(card), card, tmp_path)
    load(tmp_path)
    check_code_allowed("smallcnn")
    with pytest.raises(ModelError, match="refused"):
        check_code_allowed("os:getcwd")  # a module already imported is no exception
    check_code_allowed("os:getcwd", trust_code=True)


def test_consent_is_checked_before_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, marker, _, lib = _hostile_model(tmp_path)
    monkeypatch.syspath_prepend(lib)
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="refused"):
        load(model_dir)
    assert not marker.exists()


def test_audit_of_a_hostile_model_dir_is_one_line_and_imports_nothing(tmp_path: Path) -> None:
    model_dir, marker, module, lib = _hostile_model(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([lib, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "dlsec.cli", "audit", "--model-dir", str(model_dir), "-q",
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert module in lines[0] and "--trust-code" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "run" / "report.json").exists()


def test_an_architecture_the_caller_names_is_consent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A surrogate of the attacker's own choosing (``with_architecture``) may be built."""
    model_dir, marker, module, lib = _hostile_model(tmp_path)
    monkeypatch.syspath_prepend(lib)
    card = read_card(model_dir)
    builtin = ModelCard("simplenet", input_shape=[1, 8, 8], classes=CLASSES)
    named = builtin.with_architecture(f"{module}:build")
    assert named.architecture == f"{module}:build" and builtin.architecture == "simplenet"
    assert not marker.exists()
    assert build_model(named)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    assert marker.exists()
    with pytest.raises(ModelError, match="refused"):  # the file's card still needs consent
        build_model(card)
