"""Boundary restarts: the per-point bookkeeping of copies, the restarts themselves, and the
ensemble stage that runs them only on the survivors nearest the decision boundary."""

from __future__ import annotations

import math

import torch
from torch import nn

from dlsec.attacks.evasion import lp_norms
from dlsec.attacks.evasion.apgd import RunRecord, first_row_per_value, nearness
from dlsec.scenarios.whitebox import ensemble as ens
from dlsec.scenarios.whitebox import evaluate_robustness
from dlsec.scenarios.whitebox.restarts import boundary_restarts


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_first_row_per_value() -> None:
    rows = first_row_per_value(torch.tensor([4, 2, 4, 7, 2, 2]))
    assert rows.tolist() == [1, 0, 3]  # for the sorted values 2, 4, 7


class _Fixed(nn.Module):
    """Logits that are the input's first three values (so nearness is hand-computable)."""

    def forward(self, x):
        return x.flatten(1)[:, :3]


def test_run_record_keeps_the_first_fooling_copy_else_the_nearest() -> None:
    model = _Fixed()
    x = torch.zeros(3, 3)
    y = torch.tensor([0, 0, 0])
    rec = RunRecord(x)
    # point 0: copies a (not fooled) and b (fooled); point 1: two copies, neither fooled;
    # point 2: not in this batch
    pt = torch.tensor([0, 0, 1, 1])
    adv = torch.tensor([[0.0, 0, 0], [1, 5, 0], [0, 0, 0], [0, 0, 0]])
    best = torch.tensor([[3.0, 1, 0], [2, 1, 0], [3, 2, 0], [3, 1, 0]])
    fooled = torch.tensor([False, True, False, False])
    rec.add(model, y, pt, adv, fooled, best, torch.tensor([10, 4, 10, 10]))
    assert rec.done.tolist() == [True, False, False]
    assert rec.out[0].tolist() == [1.0, 5.0, 0.0]
    # DLR of [3, 2, 0] is -(3 - 2) / (3 - 0) = -1/3; of [3, 1, 0] it is -2/3
    assert rec.out[1].tolist() == [3.0, 2.0, 0.0]
    assert math.isclose(float(rec.score[1]), -1 / 3, rel_tol=1e-6)
    assert rec.out[2].tolist() == [0.0, 0.0, 0.0] and rec.score[2] == -math.inf
    assert rec.gradients.tolist() == [14, 20, 0]
    # a later, farther copy of point 1 does not replace the nearer one
    rec.add(model, y, torch.tensor([1]), adv[:1], torch.tensor([False]),
            torch.tensor([[5.0, 1, 0]]), torch.tensor([3]))
    assert rec.out[1].tolist() == [3.0, 2.0, 0.0] and rec.gradients.tolist() == [14, 23, 0]


def test_nearness_is_dlr_and_margin_below_three_classes() -> None:
    y = torch.tensor([0])
    assert math.isclose(float(nearness(torch.tensor([[3.0, 2, 0, -1]]), y)), -1 / 3, rel_tol=1e-6)
    assert float(nearness(torch.tensor([[3.0, 1.5]]), y)) == -1.5
    assert float(nearness(torch.tensor([[float("nan"), 1, 0]]), y)) == -math.inf


def test_boundary_restarts_fool_points_within_the_ball(digits, digits_net) -> None:
    model, card = digits_net
    x, y = digits.x_test[:40], digits.y_test[:40]
    cand = boundary_restarts(model, x, y, norm="linf", eps=0.1, bounds=(0.0, 1.0),
                             generator=_gen())
    assert float(lp_norms(cand - x, "linf").max()) <= 0.1 + 1e-6
    assert float(cand.min()) >= 0 and float(cand.max()) <= 1
    with torch.no_grad():
        fooled = model(cand).argmax(1) != y
    # two runs of APGD-CE and of APGD-T on 9 targets reach what one of each reaches
    # (42.5% robust here), within one point
    rep = evaluate_robustness(model, x, y, eps=0.1, card=card, attacks=("apgd-ce", "apgd-t"),
                              generator=_gen(), progress=False, checks=False)
    assert 0.2 < rep.robust_accuracy[0] < 0.6
    assert 1 - float(fooled.double().mean()) <= rep.robust_accuracy[0] + 1 / 40
    same = boundary_restarts(model, x, y, norm="linf", eps=0.1, bounds=(0.0, 1.0),
                             generator=_gen())
    assert torch.equal(same, cand)  # seeded


def test_boundary_restarts_with_two_classes_run_apgd_ce_only(digits, digits_net) -> None:
    model, _ = digits_net
    two = nn.Sequential(model, nn.Linear(10, 2))  # DLR needs 3 classes, targeted DLR 4
    x = digits.x_test[:20]
    with torch.no_grad():
        y = two(x).argmax(1)
    cand = boundary_restarts(two, x, y, norm="l2", eps=1.0, bounds=(0.0, 1.0), generator=_gen())
    assert cand.shape == x.shape
    assert float(lp_norms(cand - x, "l2").max()) <= 1.0 + 1e-5


def test_a_nearest_stage_gets_only_the_share_of_survivors_nearest_the_boundary(
    digits, digits_net, monkeypatch
) -> None:
    model, card = digits_net
    x, y = digits.x_test[:100], digits.y_test[:100]
    seen: dict[str, torch.Tensor] = {}

    def first(model, x, y, *, norm, eps, bounds, generator):  # fools nothing
        return x

    def near(model, x, y, *, norm, eps, bounds, generator):
        seen["near"] = x
        return x

    monkeypatch.setitem(ens._STAGES, "t-first", ens.Stage("t-first", first))
    monkeypatch.setitem(ens._STAGES, "t-near", ens.Stage("t-near", near, nearest=0.1))
    rep = evaluate_robustness(model, x, y, eps=0.1, card=card, attacks=("t-first", "t-near"),
                              generator=_gen(), progress=False, checks=False)
    survivors = int(rep.clean_correct.sum())
    assert seen["near"].shape[0] == math.ceil(0.1 * survivors)
    # the nearest ones: the correctly classified points with the highest untargeted DLR
    # loss (compared with a margin: the ensemble's forward pass had another batch shape)
    given = torch.tensor([next(i for i in range(len(x)) if torch.equal(x[i], row))
                          for row in seen["near"]])
    with torch.no_grad():
        score = nearness(model(x), y)
    others = rep.clean_correct.clone()
    others[given] = False
    assert bool(rep.clean_correct[given].all())
    assert float(score[given].min()) >= float(score[others].max()) - 1e-4
