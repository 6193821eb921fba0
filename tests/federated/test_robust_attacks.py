"""ALIE and IPM (the colluders' statistics of honest updates) and the backdoor trigger, on
hand-made updates with hand-checked values."""

from __future__ import annotations

import pytest
import torch

from dlsec.defenses.federated.clients import (
    MaliciousClientError,
    add_trigger,
    alie_update,
    alie_z_max,
    backdoor_data,
    colluding_update,
    default_scale,
    ipm_update,
    poison_update,
    trigger_size,
)


def test_alie_z_max_is_the_papers_formula() -> None:
    # n=10, f=3: s = floor(6) - 3 = 3, Phi^-1(7/10) = 0.5244
    assert alie_z_max(10, 3) == pytest.approx(0.5244005, abs=1e-6)
    # n=50, f=12 (the paper's CIFAR setting): s = 26 - 12 = 14, Phi^-1(36/50) = 0.5828
    assert alie_z_max(50, 12) == pytest.approx(0.5828415, abs=1e-6)
    # n=10, f=0: s = 6, Phi^-1(0.4) < 0
    assert alie_z_max(10, 0) == pytest.approx(-0.2533471, abs=1e-6)
    assert default_scale("alie", 10, 3) == alie_z_max(10, 3)
    with pytest.raises(MaliciousClientError):
        alie_z_max(10, 10)


def test_alie_sends_mean_minus_z_std_coordinatewise() -> None:
    ups = [{"w": torch.tensor([1.0, 0.0]), "n": torch.tensor(5)},
           {"w": torch.tensor([3.0, 0.0]), "n": torch.tensor(5)},
           {"w": torch.tensor([5.0, 6.0]), "n": torch.tensor(5)}]
    out = alie_update(ups, 1.5)
    # column 0: mean 3, sample std 2 -> 3 - 3 = 0; column 1: mean 2, std sqrt(12) -> 2 - 1.5 sqrt(12)
    assert torch.allclose(out["w"], torch.tensor([0.0, 2.0 - 1.5 * 12 ** 0.5]))
    assert out["n"].item() == 5  # integer buffers pass through
    # one colluder: std 0, ALIE sends its honest update
    assert torch.equal(alie_update(ups[:1], 1.5)["w"], ups[0]["w"])


def test_ipm_sends_minus_epsilon_mean() -> None:
    ups = [{"w": torch.tensor([1.0, -2.0])}, {"w": torch.tensor([3.0, 4.0])}]
    assert torch.allclose(ipm_update(ups, 0.5)["w"], torch.tensor([-1.0, -0.5]))


def test_colluding_update_works_on_deltas_from_the_global_weights() -> None:
    g = {"w": torch.tensor([10.0, 10.0])}
    honest = [{"w": torch.tensor([11.0, 12.0])}, {"w": torch.tensor([13.0, 14.0])}]
    # deltas (1, 2), (3, 4): mean (2, 3); IPM eps 2 -> g - (4, 6)
    assert torch.allclose(colluding_update("ipm", g, honest, scale=2.0)["w"], torch.tensor([6.0, 4.0]))
    # ALIE z 0: the mean delta
    assert torch.allclose(colluding_update("alie", g, honest, scale=0.0)["w"], torch.tensor([12.0, 13.0]))
    with pytest.raises(MaliciousClientError):
        poison_update("alie", g, honest[0], scale=1.0, generator=torch.Generator())


def test_trigger_and_backdoored_copy() -> None:
    x = torch.zeros(3, 1, 8, 8)
    y = torch.tensor([0, 1, 2])
    xt = add_trigger(x, size=2, value=16.0)
    assert xt[:, :, -2:, -2:].eq(16.0).all() and xt.sum().item() == 3 * 4 * 16.0
    assert x.sum().item() == 0  # a copy
    bx, by = backdoor_data(x, y, target=0, size=2, value=1.0)
    # the 3 clean records, then the 2 not of class 0, triggered and labelled 0
    assert by.tolist() == [0, 1, 2, 0, 0]
    assert bx[:3].sum().item() == 0 and bx[3:].sum().item() == 2 * 4
    assert trigger_size([1, 8, 8]) == 2 and trigger_size([1, 28, 28]) == 2
    assert trigger_size([3, 32, 32]) == 3
    with pytest.raises(MaliciousClientError):
        add_trigger(x, size=9, value=1.0)
