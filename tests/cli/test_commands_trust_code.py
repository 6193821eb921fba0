"""Every command that loads a model directory refuses a card naming a ``module:factory``
unless the user consents (``--trust-code``): one line, and the module is never imported."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from dlsec.cli import main
from dlsec.models import ModelCard, save


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch):
    """(model dir, marker, module): importing the module the card names touches marker."""
    module = f"dlsec_cli_hostile_{uuid.uuid4().hex[:12]}"
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
    card = ModelCard(f"{module}:build", input_shape=[1, 8, 8], classes=[str(i) for i in range(10)],
                     dataset="digits")
    save(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), card, tmp_path / "model")
    monkeypatch.syspath_prepend(str(lib))
    monkeypatch.chdir(tmp_path)
    yield tmp_path / "model", marker, module
    sys.modules.pop(module, None)


MD = ["--model-dir", "{model}"]
COMMANDS = [
    ["attack", "fgsm", *MD, "--eps", "0.1", "--samples", "5"],
    ["attack", "square", *MD, "--eps", "0.1", "--samples", "5", "--max-queries", "10", "-q"],
    ["evaluate", *MD, "--eps", "0.1", "--samples", "5", "--attacks", "apgd-ce", "-q"],
    ["privacy", "membership", *MD, "--attack", "loss", "--members", "20"],
    ["privacy", "invert", *MD, "--max-iter", "2"],
    ["extract", *MD, "--budget", "20", "--strategy", "random", "-q"],
    ["poison", "optimized-flip", *MD, "--out", "p.npz", "-q"],
    ["poison", "feature-collision", *MD, "--out", "p.npz", "--steps", "2", "--n-poisons", "2", "-q"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a[:2]) for a in COMMANDS])
def test_a_cards_module_needs_consent(args: list[str], hostile, capsys, one_line_error) -> None:
    model_dir, marker, module = hostile
    argv = [a.format(model=model_dir) for a in args]
    assert main(argv) == 2
    one_line_error(capsys.readouterr().err, module, "--trust-code")
    assert not marker.exists() and module not in sys.modules
    assert not Path("p.npz").exists()
    assert main([*argv, "--trust-code"]) == 0, capsys.readouterr().err
    assert marker.exists()


def test_naming_the_cards_factory_is_consent(hostile, capsys) -> None:
    model_dir, marker, module = hostile
    args = ["poison", "optimized-flip", "--model-dir", str(model_dir), "--out", "p.npz", "-q"]
    assert main([*args, "--model", "simplenet"]) == 2  # another architecture: no consent
    assert not marker.exists()
    assert main([*args, "--model", f"{module}:build"]) == 0, capsys.readouterr().err
    assert marker.exists() and Path("p.npz").is_file()
