"""The shared geometry and losses, on hand-checkable values."""

from __future__ import annotations

import math

import pytest
import torch

from dlsec.attacks.core import (
    AttackError,
    choose_targets,
    dlr_loss,
    dlr_targeted_loss,
    lp_norms,
    margin_loss,
    project,
    random_start,
    step_direction,
)


def test_norms_exact() -> None:
    d = torch.tensor([[3.0, -4.0], [0.0, 0.5]])
    assert lp_norms(d, "linf").tolist() == [4.0, 0.5]
    assert lp_norms(d, "l2").tolist() == [5.0, 0.5]
    assert lp_norms(d, "l1").tolist() == [7.0, 0.5]
    assert lp_norms(d, "l0").tolist() == [2.0, 1.0]


def test_projection_exact() -> None:
    d = torch.tensor([[3.0, -4.0], [0.1, 0.2]])
    assert torch.allclose(project(d, "linf", 1.0), torch.tensor([[1.0, -1.0], [0.1, 0.2]]))
    p = project(d, "l2", 1.0)
    assert torch.allclose(p[0], torch.tensor([0.6, -0.8]))
    assert torch.equal(p[1], d[1])  # already inside: unchanged
    per_sample = project(d, "linf", torch.tensor([2.0, 0.1]))
    assert torch.allclose(per_sample, torch.tensor([[2.0, -2.0], [0.1, 0.1]]))


def test_step_direction() -> None:
    g = torch.tensor([[3.0, -4.0], [0.0, 0.0]])
    assert step_direction(g, "linf").tolist() == [[1.0, -1.0], [0.0, 0.0]]
    assert torch.allclose(step_direction(g, "l2"), torch.tensor([[0.6, -0.8], [0.0, 0.0]]))


def test_random_start_inside_ball_and_bounds() -> None:
    x = torch.rand(64, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    for norm, eps in (("linf", 0.3), ("l2", 1.0)):
        z = random_start(x, norm, eps, (0.0, 1.0), g)
        assert float(lp_norms(z - x, norm).max()) <= eps + 1e-6
        assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0
    a = random_start(x, "linf", 0.3, (0.0, 1.0), torch.Generator().manual_seed(1))
    b = random_start(x, "linf", 0.3, (0.0, 1.0), torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_losses_by_hand() -> None:
    z = torch.tensor([[4.0, 1.0, 2.0, 0.0]])
    y = torch.tensor([0])
    # DLR: -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3) = -(4 - 2) / (4 - 1)
    assert dlr_loss(z, y).item() == pytest.approx(-2 / 3)
    # targeted DLR with t=3: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2) = -(4 - 0) / (4 - 0.5)
    assert dlr_targeted_loss(z, y, torch.tensor([3])).item() == pytest.approx(-4 / 3.5)
    assert margin_loss(z, y).item() == -2.0
    assert margin_loss(z, y, torch.tensor([2])).item() == -2.0
    # when y is not the top class, DLR compares with the top class
    assert dlr_loss(z, torch.tensor([2])).item() == pytest.approx(-(2 - 4) / 3)


def test_choose_targets() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0], [5.0, -1.0, 0.0]])
    y = torch.tensor([2, 0])
    assert choose_targets(logits, y, "least-likely").tolist() == [0, 1]
    assert choose_targets(logits, y, 1).tolist() == [1, 1]
    assert choose_targets(logits, y, torch.tensor([0, 2])).tolist() == [0, 2]
    g = torch.Generator().manual_seed(0)
    t = choose_targets(torch.zeros(1000, 10), torch.zeros(1000, dtype=torch.int64), "random", generator=g)
    assert bool((t != 0).all()) and set(t.tolist()) == set(range(1, 10))
    with pytest.raises(AttackError):
        choose_targets(logits, y, torch.tensor([0, 7]))
    with pytest.raises(AttackError):
        choose_targets(logits, y, "most-likely")  # type: ignore[arg-type]
    assert math.isfinite(float(dlr_loss(torch.zeros(1, 4), torch.tensor([0]))))
