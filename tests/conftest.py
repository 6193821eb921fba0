"""Shared fixtures: the digits dataset and a small trained SimpleNet (trained once per session)."""

from __future__ import annotations

import os

# tiny models gain nothing from threads, and the CI machine has 2 cores: one thread per
# process (subprocesses started by tests inherit this) keeps the suite fast and steady
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from dlsec.data import Dataset, load_dataset
from dlsec.training import TrainConfig, train_model

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def trained_simplenet(digits: Dataset):
    """(model, card, result): SimpleNet on digits, 10 epochs, seed 0."""
    return train_model(digits, "simplenet", TrainConfig(epochs=10, lr=3e-3), progress=False)
