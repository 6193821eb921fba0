"""Helpers for the CLI tests: a saved model directory and the one-line error check."""

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
