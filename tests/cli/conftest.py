"""Helpers for the CLI tests: a saved model directory; torch's thread count restored."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dlsec.models import save


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, trained_simplenet) -> Path:
    """The session's trained SimpleNet on digits, saved as a model directory."""
    model, card, _ = trained_simplenet
    d = tmp_path_factory.mktemp("model")
    save(model, card, d)
    return d


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Commands set torch's thread count; give the next test the count it had."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
