from __future__ import annotations

import pytest
import torch

from dlsec.training import TrainConfig, TrainingError, evaluate, fit, resolve_device, train_model


def test_same_seed_bit_identical_weights(digits) -> None:
    cfg = TrainConfig(epochs=3, seed=7, device="cpu")
    m1, _c1, _ = train_model(digits, "simplenet", cfg, progress=False)
    m2, _c2, _ = train_model(digits, "simplenet", cfg, progress=False)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    m3, _, _ = train_model(digits, "simplenet", TrainConfig(epochs=3, seed=8), progress=False)
    assert not torch.equal(m1.fc1.weight, m3.fc1.weight)


def test_training_learns_digits(trained_simplenet) -> None:
    _model, card, result = trained_simplenet
    assert card.metrics["test_accuracy"] > 0.9
    assert len(result.history) == 10
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"} <= set(result.history[0])


def test_untrained_is_near_chance(digits) -> None:
    _model, card, _ = train_model(digits, "simplenet", TrainConfig(epochs=1, lr=1e-9), progress=False)
    assert card.metrics["test_accuracy"] < 0.35


def test_sgd_and_step_schedule(digits) -> None:
    cfg = TrainConfig(epochs=4, optimizer="sgd", lr=0.1, schedule="step", step_every=2, step_gamma=0.5)
    _, card, result = train_model(digits, "simplenet", cfg, progress=False)
    assert [h["lr"] for h in result.history] == pytest.approx([0.1, 0.1, 0.05, 0.05])
    assert card.metrics["test_accuracy"] > 0.85


def test_early_stopping_restores_best(digits) -> None:
    # a huge learning rate makes validation loss bounce: patience stops the run early
    cfg = TrainConfig(epochs=40, lr=0.5, optimizer="sgd", schedule="none", patience=2)
    _model, _card, result = train_model(digits, "simplenet", cfg, progress=False)
    assert result.stopped_early and len(result.history) < 40
    best = result.history[result.best_epoch - 1]
    assert best["val_loss"] == min(h["val_loss"] for h in result.history)


def test_custom_batch_loss_and_epoch_hook(digits) -> None:
    from dlsec.models import ModelCard, build_model

    card = ModelCard("simplenet", input_shape=[1, 8, 8], classes=list(digits.classes))
    model = build_model(card)
    calls: list[int] = []

    def loss_fn(m, x, y):
        calls.append(x.shape[0])
        return torch.nn.functional.cross_entropy(m(x), y)

    def hook(epoch, m, record):
        record["extra"] = 1.0
        return epoch == 2  # stop after epoch 2

    res = fit(
        model, digits.x_train, digits.y_train, config=TrainConfig(epochs=5, batch_size=500),
        batch_loss=loss_fn, on_epoch_end=hook, progress=False,
    )
    assert len(res.history) == 2 and res.history[0]["extra"] == 1.0
    assert calls[:3] == [500, 500, len(digits.y_train) - 1000]


def test_evaluate_exact() -> None:
    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    y = torch.tensor([0, 1, 1])
    res = evaluate(model, x, y)
    assert res["accuracy"] == pytest.approx(2 / 3)


def test_bad_settings() -> None:
    with pytest.raises(TrainingError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(TrainingError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(TrainingError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA"):
            resolve_device("cuda")
