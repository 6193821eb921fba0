"""Shared fixtures of the privacy tests."""

from __future__ import annotations

import pytest

from dlsec.data import Dataset
from dlsec.training import TrainConfig, train_model


@pytest.fixture(scope="session")
def evaluator(digits: Dataset):
    """A digits SimpleNet trained apart from any attacked model (its own seed): it judges
    whether a reconstruction looks like its class (model inversion, gradient leakage)."""
    model, _, _ = train_model(digits, "simplenet", TrainConfig(epochs=10, lr=3e-3, seed=11),
                              progress=False)
    return model
