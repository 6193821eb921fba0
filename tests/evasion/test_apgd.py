"""APGD-CE/DLR and APGD-T: the published schedule, hand-checkable step sizes, peer agreement."""

from __future__ import annotations

import importlib

import pytest
import torch
from hand_models import Linear
from torch import nn

from dlsec.attacks.evasion import APGD, APGDT, PGD, AttackError
from dlsec.attacks.evasion.apgd import checkpoints, halving_rule


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def test_checkpoints_are_the_published_ones() -> None:
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); w_j = ceil(p_j N)
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1000) == [0, 220, 410, 570, 700, 800, 870, 930, 990]
    assert checkpoints(50) == [0, 11, 21, 29, 35, 40, 44, 47, 50]


def _stalled_problem():
    # two classes, the true one ahead by a margin of 3.5 that eps = 0.05 can cut by 0.35
    # only: the loss is maximal at the ball's corner, reached in the first step (2 eps
    # long); every later step stays there and the loss never rises again
    w = torch.tensor([[1.0, -2.0, 0.5, 1.5], [-1.0, 1.0, -0.5, 0.5]])
    model = Linear(w, torch.tensor([3.0, 0.0]))
    x = torch.full((3, 4), 0.5)
    y = torch.zeros(3, dtype=torch.int64)
    return model, x, y


def test_step_size_halves_at_each_checkpoint_when_the_loss_stalls() -> None:
    model, x, y = _stalled_problem()
    eps = 0.05
    trace: list[torch.Tensor] = []
    _, fooled, best, grads = APGD(loss="ce").run(
        model, x, y, eps=eps, bounds=(0.0, 1.0), generator=torch.Generator().manual_seed(0),
        trace=trace,
    )
    assert not bool(fooled.any())
    assert len(trace) == 101 and int(grads.max()) == 100  # 100 gradients, one final forward
    ckpts = checkpoints(100)[1:]
    for k, eta in enumerate(trace):
        halvings = sum(1 for c in ckpts if c <= k)
        assert torch.allclose(eta, torch.full_like(eta, 2 * eps / 2**halvings)), k
    # the best iterate is the corner x + eps * sign(w_0 - w_1) (the CE ascent direction)
    corner = (x + eps * (model.lin.weight[1] - model.lin.weight[0]).sign()).clamp(0, 1)
    assert torch.allclose(best, corner, atol=1e-7)


def test_halving_rule_truth_table() -> None:
    # window 22, rho 0.75: halve when fewer than 16.5 of the 22 steps raised the loss ...
    ups = torch.tensor([16, 17, 22, 22, 22])
    halved_last = torch.tensor([True, True, True, False, False])
    best = torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0])
    best_last = torch.tensor([0.5, 0.5, 1.0, 1.0, 1.0])
    got = halving_rule(ups, 22, 0.75, halved_last, best, best_last)
    # ... or when the step was kept last time and the best loss has not grown since
    assert got.tolist() == [True, False, False, True, False]


def _check_result(res, model, x, y, eps) -> None:
    # every success really fools the model, inside the ball and the bounds
    assert float(res.norms[0].max()) <= eps + 1e-6
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    with torch.no_grad():
        assert torch.equal(model(res.x_adv[0]).argmax(1) != y, res.success[0])


def test_apgd_matches_or_beats_torchattacks_and_pgd(digits, digits_net) -> None:
    torchattacks = importlib.import_module("torchattacks")
    model, card = digits_net
    x, y = digits.x_test[:100], digits.y_test[:100]
    eps = 0.1
    ce = APGD(loss="ce")(
        model, x, y, eps=eps, card=card, generator=torch.Generator().manual_seed(0)
    )
    torch.manual_seed(0)
    theirs_ce = _acc(model, torchattacks.APGD(model, eps=eps, steps=100, loss="ce")(x, y), y)
    assert ce.robust_accuracy[0] <= theirs_ce + 0.01, (ce.robust_accuracy, theirs_ce)
    pgd = PGD(steps=40)(model, x, y, eps=eps, card=card, generator=torch.Generator().manual_seed(0))
    assert ce.robust_accuracy[0] <= pgd.robust_accuracy[0] + 0.01
    clean = float(ce.clean_correct.double().mean())
    assert ce.robust_accuracy[0] < clean - 0.3  # a real drop: about 97% -> under 60%
    assert int(ce.gradients.max()) <= 100  # AutoAttack's budget: 100 iterations, 1 restart
    _check_result(ce, model, x, y, eps)

    t = APGDT()(model, x, y, eps=eps, card=card, generator=torch.Generator().manual_seed(0))
    assert t.robust_accuracy[0] <= ce.robust_accuracy[0]  # the targeted DLR finds more here
    assert int(t.gradients.max()) <= 9 * 100  # 9 targets x 100 iterations at most
    _check_result(t, model, x, y, eps)


@pytest.mark.slow
def test_apgd_t_matches_or_beats_torchattacks(digits, digits_net) -> None:
    torchattacks = importlib.import_module("torchattacks")
    model, card = digits_net
    x, y = digits.x_test[:200], digits.y_test[:200]
    for eps in (0.08, 0.1):
        ours = APGDT()(model, x, y, eps=eps, card=card, generator=torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        theirs = _acc(model, torchattacks.APGDT(model, eps=eps, steps=100, n_classes=10)(x, y), y)
        assert ours.robust_accuracy[0] <= theirs + 0.01, (eps, ours.robust_accuracy, theirs)
        l2 = APGD(norm="l2")(model, x, y, eps=eps * 8, card=card,
                             generator=torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        atk = torchattacks.APGD(model, norm="L2", eps=eps * 8, steps=100, loss="ce")
        theirs_l2 = _acc(model, atk(x, y), y)
        assert l2.robust_accuracy[0] <= theirs_l2 + 0.01, (eps, l2.robust_accuracy, theirs_l2)


def test_l2_dlr_and_targeted_apgd(digits, digits_net) -> None:
    model, card = digits_net
    x, y = digits.x_test[:100], digits.y_test[:100]
    g = torch.Generator().manual_seed(0)
    l2 = APGD(norm="l2", loss="dlr")(model, x, y, eps=[0.5, 1.0], card=card, generator=g)
    assert float(l2.norms[0].max()) <= 0.5 + 1e-5 and float(l2.norms[1].max()) <= 1.0 + 1e-5
    pgd = PGD(norm="l2")(model, x, y, eps=[0.5, 1.0], card=card, generator=g)
    assert l2.robust_accuracy[1] <= pgd.robust_accuracy[1] + 0.01
    assert l2.robust_accuracy[1] < 0.5

    tgt = APGD(loss="ce")(model, x, y, eps=0.3, targeted=True, target="random", card=card,
                          generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred = model(tgt.x_adv[0]).argmax(1)
    assert torch.equal(tgt.success[0], pred == tgt.targets)
    assert tgt.success_rate[0] > 0.9
    one = APGDT()(model, x, y, eps=0.3, targeted=True, target=3, card=card)
    assert bool((one.targets == 3).all()) and one.success_rate[0] > 0.9


def test_same_seed_same_result(digits, digits_net) -> None:
    model, card = digits_net
    x, y = digits.x_test[:40], digits.y_test[:40]
    for attack in (APGD(loss="dlr", steps=30), APGDT(steps=20, n_targets=3)):
        a, b = (
            attack(model, x, y, eps=0.08, card=card, generator=torch.Generator().manual_seed(7))
            for _ in range(2)
        )
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.gradients, b.gradients)


def test_dlr_needs_enough_classes() -> None:
    model = Linear(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), torch.zeros(2))
    x, y = torch.full((4, 3), 0.5), torch.zeros(4, dtype=torch.int64)  # class 0, correct
    with pytest.raises(AttackError, match="at least 3 classes"):
        APGD(loss="dlr")(model, x, y, eps=0.1, bounds=(0.0, 1.0))
    with pytest.raises(AttackError, match="at least 4 classes"):
        APGDT()(model, x, y, eps=0.1, bounds=(0.0, 1.0))
    with pytest.raises(AttackError, match="loss"):
        APGD(loss="hinge")
