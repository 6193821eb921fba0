"""Black-box fixtures: the digits SimpleNet every black-box test attacks (the root
conftest's, trained once per session), 100 test points it classifies correctly, and an
independent counting oracle."""

from __future__ import annotations

import pytest
import torch

from dlsec.threat import BaseOracle, OracleWrapper


class CountingOracle(OracleWrapper):
    """An independent oracle wrapper: counts rows itself and remembers, per id, whether
    the last answer was already a wrong label and whether it was queried after that."""

    def __init__(self, inner: BaseOracle, y: torch.Tensor) -> None:
        super().__init__(inner)
        self.y = y
        self.rows = 0
        self.per_id = torch.zeros(len(y), dtype=torch.int64)
        self.fooled = torch.zeros(len(y), dtype=torch.bool)
        self.after_fooled = 0
        self.sent: set[tuple[int, bytes]] = set()
        self.repeats = 0  # rows whose exact input was sent before for the same id

    def query(self, x, *, ids=None):
        out = self.inner.query(x, ids=ids)
        for i, row in zip(ids.tolist(), x.detach().cpu().numpy(), strict=True):
            key = (i, row.tobytes())
            self.repeats += key in self.sent
            self.sent.add(key)
        self.rows += x.shape[0]
        self.per_id += torch.bincount(ids, minlength=len(self.y))
        self.after_fooled += int(self.fooled[ids].sum())
        labels = out if out.dim() == 1 else out.argmax(1)
        wrong = labels.cpu() != self.y[ids]
        self.fooled[ids[wrong]] = True
        return out


@pytest.fixture(scope="session")
def counting():
    """The :class:`CountingOracle` class."""
    return CountingOracle


@pytest.fixture(scope="session")
def bb_net(digits_net):
    """(model, card): the undefended digits SimpleNet, 30 epochs of Adam, seed 0 (the
    session's one ``digits_net``, tests/conftest.py)."""
    return digits_net


@pytest.fixture(scope="session")
def bb_points(digits, bb_net):
    """100 test digits ``bb_net`` classifies correctly."""
    model, _ = bb_net
    x, y = digits.x_test[:150], digits.y_test[:150]
    with torch.inference_mode():
        ok = model(x).argmax(1) == y
    return x[ok][:100], y[ok][:100]
