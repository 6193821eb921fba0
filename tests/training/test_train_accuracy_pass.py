"""TrainConfig.measure_train_accuracy: the per-epoch accuracy pass over the training set is
optional (auxiliary models skip it) and never changes the weights."""

from __future__ import annotations

import hashlib

import torch

from dlsec.data import load_dataset
from dlsec.training import TrainConfig, fit, train_model


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for v in model.state_dict().values():
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def test_skipping_the_pass_keeps_the_weights_and_drops_the_key() -> None:
    ds = load_dataset("digits", seed=0)
    on, card_on, res_on = train_model(ds, "simplenet", TrainConfig(epochs=2), progress=False)
    off, card_off, res_off = train_model(
        ds, "simplenet", TrainConfig(epochs=2, measure_train_accuracy=False), progress=False
    )
    assert _digest(on) == _digest(off)  # same batches, same updates
    assert all("train_accuracy" in r for r in res_on.history)
    assert not any("train_accuracy" in r for r in res_off.history)
    assert [r["train_loss"] for r in res_on.history] == [r["train_loss"] for r in res_off.history]
    assert "train_accuracy" in card_on.metrics and "train_accuracy" not in card_off.metrics
    assert card_off.training["measure_train_accuracy"] is False


def test_fit_without_the_pass_counts_no_extra_forward() -> None:
    calls = []
    net = torch.nn.Linear(4, 3)
    net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x, y = torch.rand(40, 4), torch.arange(40) % 3
    cfg = TrainConfig(epochs=3, batch_size=20, val_fraction=0.0, device="cpu",
                      measure_train_accuracy=False)
    fit(net, x, y, config=cfg, progress=False)
    assert calls == [20] * 6  # 2 steps x 3 epochs, no evaluation pass
    calls.clear()
    fit(net, x, y, config=TrainConfig(epochs=3, batch_size=20, val_fraction=0.0, device="cpu"),
        progress=False)
    assert sum(calls) == 3 * 40 + 3 * 40  # the steps, then one pass over the 40 per epoch
