"""The audit end to end on 3 x 32 x 32 inputs: a narrow ResNet-18 (BatchNorm) on the
generated ``cifar-synthetic`` textures, every default section, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlsec.audit.sections import selected
from dlsec.cli import main
from dlsec.data.synthetic import write_synthetic

CONFIG = """
dataset = "npz:{data}"
model = "resnet18-narrow"
epochs = 4
batch-size = 16
lr = 0.003
threads = 0

[evasion]
eps = [0.03]
samples = 16
steps = 5

[blackbox]
samples = 8
max-queries = [10, 40]
transfer = ["jacobian"]
transfer-budget = 64
surrogate-epochs = 1

[poisoning]
rates = [0.2]
flip-attacks = ["random-flip"]
max-train = 160
max-test = 40
collision-targets = 1
epochs = 3
batch-size = 16

[privacy]
members = 40
shadows = 2
label-only-noise = 2
extraction-budget = 64
extraction-strategies = ["random"]
extraction-epochs = 1
inversion-black-box-iters = 2
evaluator-epochs = 1
"""


@pytest.mark.slow
def test_every_default_section_runs_on_cifar_size_inputs(tmp_path: Path) -> None:
    data = tmp_path / "s.npz"
    write_synthetic(data, n=300, seed=0, channels_last=True)
    config = tmp_path / "audit.toml"
    config.write_text(CONFIG.format(data=data))
    code = main(["audit", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    assert code in (0, 1)  # 1: a default gate failed, the report is complete
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    names = [s["name"] for s in report["sections"]]
    assert {s.name for s in selected(None)} <= set(names)
    by_name = {s["name"]: s for s in report["sections"]}
    assert by_name["dataset"]["summary"].endswith("input 3x32x32")
    # the BatchNorm network learned the textures (chance is 10%)
    assert by_name["accuracy"]["metrics"]["clean_accuracy"] > 0.6
    # the retrained victims learned too (batch 16: enough BatchNorm steps), so the
    # poisoning numbers measure something; every attack ran on the colour images
    poisoning = by_name["poisoning"]["metrics"]
    assert poisoning["random_flip_20_accuracy"] > 0.4
    assert {"backdoor_asr", "collision_success_rate"} <= set(poisoning)
    privacy = by_name["privacy"]["metrics"]
    assert {"lira_online_auc", "inversion_eval_accuracy", "extraction_fidelity"} <= set(privacy)
    figures = [f["title"] for s in report["sections"] for f in s["figures"]]
    assert "Model inversion (MI-Face)" in figures
    assert "Feature collision: targets, bases, poisons" in figures


def test_cifar_size_inputs_get_the_large_input_defaults() -> None:
    from dlsec.audit.sections._scale import input_values, is_large
    from dlsec.models import ModelCard

    card = ModelCard("resnet18", input_shape=[3, 32, 32], classes=[str(i) for i in range(10)])
    assert input_values(card) == 3072 and is_large(card)
