"""A digits SimpleNet trained like the default audit's, shared by the evasion tests."""

from __future__ import annotations

import pytest

from dlsec.training import TrainConfig, train_model


@pytest.fixture(scope="session")
def digits_net(digits):
    """(model, card): SimpleNet, 30 epochs, lr 3e-3, seed 0 (about 97% clean accuracy)."""
    model, card, _ = train_model(digits, "simplenet", TrainConfig(epochs=30, lr=3e-3), progress=False)
    return model, card
