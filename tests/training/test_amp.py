"""Mixed precision (``TrainConfig.amp``): bfloat16 autocast on the CPU, refusals in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlsec.data import load_dataset
from dlsec.training import TrainConfig, TrainingError, autocast, evaluate, fit


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


@pytest.mark.parametrize(("amp", "dtype"), [("off", torch.float32), ("bf16", torch.bfloat16)])
def test_bf16_autocast_runs_the_forward_in_bf16_and_learns(amp: Any, dtype: torch.dtype) -> None:
    ds = load_dataset("digits", seed=0)
    seen: set[torch.dtype] = set()

    def loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        logits = model(x)
        seen.add(logits.dtype)
        return F.cross_entropy(logits, y)

    model = _net()
    cfg = TrainConfig(epochs=8, batch_size=64, lr=3e-3, seed=0, device="cpu", amp=amp,
                      val_fraction=0.0, measure_train_accuracy=False)
    fit(model, ds.x_train, ds.y_train, config=cfg, batch_loss=loss, progress=False)
    assert seen == {dtype}
    # weights stay float32 (autocast casts copies), and the model learned the digits
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert evaluate(model, ds.x_test, ds.y_test)["accuracy"] > 0.9


def test_fp16_off_cuda_and_unknown_modes_are_refused() -> None:
    with pytest.raises(TrainingError, match="fp16 needs a CUDA device"):
        autocast("fp16", torch.device("cpu"))
    with pytest.raises(TrainingError, match="amp="):
        TrainConfig(amp="fp8")  # type: ignore[arg-type]
    ds = load_dataset("digits", seed=0)
    model = _net()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TrainingError, match="CUDA"):
        fit(model, ds.x_train, ds.y_train, progress=False,
            config=TrainConfig(epochs=1, device="cpu", amp="fp16"))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_dp_training_refuses_amp() -> None:
    pytest.importorskip("opacus")
    from dlsec.defenses.dp.training import DPError, dp_train

    ds = load_dataset("digits", seed=0)
    with pytest.raises(DPError, match="float32 only"):
        dp_train(ds, "simplenet", TrainConfig(epochs=1, device="cpu", amp="bf16"), epsilon=3.0,
                 progress=False)


def test_train_command_amp_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from dlsec.cli import main

    out = tmp_path / "m"
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--device", "cpu",
                 "--amp", "fp16", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: amp=fp16 needs a CUDA device"), err
    assert not out.exists()
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--device", "cpu",
                 "--amp", "bf16", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "card.json").read_text())["training"]["amp"] == "bf16"
