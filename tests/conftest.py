"""Shared fixtures: the digits dataset, the trained SimpleNets (each trained once per
session, whichever folder asks first) and the one-line error check.

Hand-checkable models (a linear layer with given weights) are in :mod:`hand_models`
beside this file: ``from hand_models import Linear``.
"""

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


@pytest.fixture(scope="session")
def digits_net(digits: Dataset):
    """(model, card): SimpleNet on digits trained like the default audit's: 30 epochs of
    Adam, lr 3e-3, seed 0 (about 97% clean accuracy). The evasion and black-box tests
    attack this one model; tests must not change it."""
    model, card, _ = train_model(digits, "simplenet", TrainConfig(epochs=30, lr=3e-3), progress=False)
    return model, card


def _one_line_error(err: str, *words: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture
def one_line_error():
    """``one_line_error(err, *words)``: ``err`` is exactly one line ``error: ...`` holding
    every word (and no traceback); returns that line."""
    return _one_line_error


@pytest.fixture(scope="module")
def ray_cluster():
    """A 2-worker local Ray cluster (loopback, no dashboard) for one test module, shut down
    when the module ends; the module's tests are skipped where Ray is not installed."""
    pytest.importorskip("ray")
    from dlsec.executor import RayExecutor

    with RayExecutor(2) as ex:
        ex.start()
        yield ex
