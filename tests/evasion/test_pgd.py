"""FGSM, BIM, PGD, MI-FGSM: closed forms, peer agreement, measured effects."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from hand_models import Linear

from dlsec.attacks.evasion import BIM, FGSM, MIFGSM, PGD, AttackError
from dlsec.models import ModelCard


def test_fgsm_equals_closed_form_on_a_linear_model() -> None:
    torch.manual_seed(0)
    w, b = torch.randn(3, 5), torch.randn(3)
    model = Linear(w, b)
    x = torch.rand(8, 5) * 0.6 + 0.2
    y = torch.randint(0, 3, (8,))
    eps = 0.1
    # d CE / d x = W^T (softmax(Wx + b) - onehot(y))
    grad = (torch.softmax(x @ w.T + b, 1) - F.one_hot(y, 3).float()) @ w
    expected = (x + eps * grad.sign()).clamp(0, 1)
    res = FGSM()(model, x, y, eps=eps, bounds=(0.0, 1.0))
    clean_wrong = (x @ w.T + b).argmax(1) != y
    assert torch.allclose(res.x_adv[0][~clean_wrong], expected[~clean_wrong], atol=1e-6)
    assert torch.equal(res.x_adv[0][clean_wrong], x[clean_wrong])  # already fooled: untouched
    # L2 fast gradient method: a step of length eps along the normalized gradient
    res2 = FGSM(norm="l2")(model, x, y, eps=eps, bounds=(-10.0, 10.0))
    exp2 = x + eps * grad / grad.norm(dim=1, keepdim=True)
    assert torch.allclose(res2.x_adv[0][~clean_wrong], exp2[~clean_wrong], atol=1e-6)


def test_bounds_come_from_the_card_not_zero_one() -> None:
    torch.manual_seed(0)
    model = Linear(torch.randn(3, 4), torch.zeros(3))
    x = torch.rand(16, 4) * 2 - 1
    y = torch.randint(0, 3, (16,))
    card = ModelCard("x", input_shape=[4], classes=["a", "b", "c"], bounds=(-1.0, 1.0))
    res = PGD(steps=5)(model, x, y, eps=0.5, card=card, generator=torch.Generator().manual_seed(0))
    assert float(res.x_adv.min()) < 0.0  # negative inputs survive: no [0, 1] clipping
    assert float(res.x_adv.min()) >= -1.0 and float(res.x_adv.max()) <= 1.0
    with pytest.raises(AttackError, match="bounds"):
        PGD()(model, x, y, eps=0.1)


def test_pgd_drives_undefended_digits_below_5_percent(digits, digits_net) -> None:
    model, card = digits_net
    x, y = digits.x_test, digits.y_test
    res = PGD(steps=40)(model, x, y, eps=[0.05, 0.1, 0.2], card=card,
                        generator=torch.Generator().manual_seed(0))
    clean = float(res.clean_correct.double().mean())
    assert clean > 0.95
    ra = res.robust_accuracy
    assert ra[0] >= ra[1] >= ra[2]  # monotone in eps
    assert ra[2] < 0.05  # the measured effect: below 5% at eps 0.2
    assert ra[0] < clean - 0.05
    # every adversarial is inside its ball and the bounds; successes really fool the model
    for k, e in enumerate(res.eps):
        assert float(res.norms[k].max()) <= e + 1e-6
        assert float(res.x_adv[k].min()) >= 0 and float(res.x_adv[k].max()) <= 1
        with torch.no_grad():
            pred = model(res.x_adv[k]).argmax(1)
        assert torch.equal(pred != y, res.success[k])


def test_pgd_agrees_with_torchattacks(digits, digits_net) -> None:
    torchattacks = importlib.import_module("torchattacks")
    model, card = digits_net
    x, y = digits.x_test, digits.y_test
    for eps in (0.05, 0.1):
        ours = PGD(steps=40)(model, x, y, eps=eps, card=card,
                             generator=torch.Generator().manual_seed(0)).robust_accuracy[0]
        torch.manual_seed(0)
        atk = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / 40, steps=40, random_start=True)
        x_adv = atk(x, y)
        with torch.no_grad():
            theirs = float((model(x_adv).argmax(1) == y).double().mean())
        assert abs(ours - theirs) <= 0.01, (eps, ours, theirs)


def test_fixed_step_pgd_without_random_start_matches_torchattacks_bim(digits, digits_net) -> None:
    torchattacks = importlib.import_module("torchattacks")
    model, card = digits_net
    x, y = digits.x_test, digits.y_test
    eps, steps = 0.1, 10
    alpha = 1.25 * eps / steps
    ours = BIM(steps=steps, early_stop=False)(model, x, y, eps=eps, card=card).robust_accuracy[0]
    x_adv = torchattacks.BIM(model, eps=eps, alpha=alpha, steps=steps)(x, y)
    with torch.no_grad():
        theirs = float((model(x_adv).argmax(1) == y).double().mean())
    # same deterministic iterates; ours keeps the best iterate, theirs the last
    assert theirs - 0.01 <= ours <= theirs


def test_last_iterate_is_torchattacks_bim_exactly(digits, digits_net) -> None:
    # every point, misclassified ones included, takes every step; the last iterate is kept
    torchattacks = importlib.import_module("torchattacks")
    model, card = digits_net
    x, y = digits.x_test[:200], digits.y_test[:200]
    eps, steps = 0.1, 10
    res = BIM(steps=steps, last_iterate=True)(model, x, y, eps=eps, card=card)
    theirs = torchattacks.BIM(model, eps=eps, alpha=1.25 * eps / steps, steps=steps)(x, y)
    assert torch.allclose(res.x_adv[0], theirs, atol=1e-6)
    assert bool((res.gradients[0] == steps).all())
    with torch.no_grad():
        assert torch.equal(res.success[0], model(theirs).argmax(1) != y)
    first = BIM(steps=steps)(model, x, y, eps=eps, card=card)  # first fooling iterate
    assert int(first.gradients[0].sum()) < int(res.gradients[0].sum())


def test_epsilon_sweep_reuses_and_saves_work(digits, digits_net) -> None:
    model, card = digits_net
    x, y = digits.x_test[:200], digits.y_test[:200]
    eps = [0.05, 0.1, 0.15, 0.2, 0.3]
    swept = PGD()(model, x, y, eps=eps, card=card, generator=torch.Generator().manual_seed(0))
    separate = PGD()(model, x, y, eps=eps, card=card, reuse=False,
                     generator=torch.Generator().manual_seed(0))
    # a point fooled at a smaller eps stays fooled at every larger one
    assert bool((swept.success[:-1] <= swept.success[1:]).all())
    for a, b in zip(swept.robust_accuracy, separate.robust_accuracy, strict=True):
        assert a <= b + 0.02
    assert int(swept.gradients.sum()) < int(separate.gradients.sum())


def test_early_stop_spends_fewer_gradients_same_strength(digits, digits_net) -> None:
    model, card = digits_net
    x, y = digits.x_test[:200], digits.y_test[:200]
    def g() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    fast = PGD(steps=40)(model, x, y, eps=0.1, card=card, generator=g())
    full = PGD(steps=40, early_stop=False)(model, x, y, eps=0.1, card=card, generator=g())
    assert abs(fast.robust_accuracy[0] - full.robust_accuracy[0]) <= 0.02
    assert int(fast.gradients.sum()) < 0.8 * int(full.gradients.sum())
    assert int(full.gradients.max()) == 40


def test_targeted_modes(digits, digits_net) -> None:
    model, card = digits_net
    x, y = digits.x_test[:100], digits.y_test[:100]
    for spec in ("random", "least-likely", 3):
        res = PGD(steps=40)(model, x, y, eps=0.3, targeted=True, target=spec, card=card,
                            generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            pred = model(res.x_adv[0]).argmax(1)
        assert torch.equal(res.success[0], pred == res.targets)
        assert res.success_rate[0] > 0.8, (spec, res.success_rate)
    res = PGD()(model, x, y, eps=0.3, targeted=True, target=3, card=card)
    assert bool((res.targets == 3).all())


def test_same_seed_same_result(digits, digits_net) -> None:
    model, card = digits_net
    x, y = digits.x_test[:64], digits.y_test[:64]
    runs = [
        PGD(steps=10, restarts=2)(model, x, y, eps=0.1, card=card,
                                  generator=torch.Generator().manual_seed(5))
        for _ in range(2)
    ]
    assert torch.equal(runs[0].x_adv, runs[1].x_adv)


def test_l2_pgd_and_mifgsm(digits, digits_net) -> None:
    model, card = digits_net
    x, y = digits.x_test[:200], digits.y_test[:200]
    l2 = PGD(norm="l2")(model, x, y, eps=[0.5, 2.0], card=card, generator=torch.Generator().manual_seed(0))
    assert float(l2.norms[0].max()) <= 0.5 + 1e-5 and l2.robust_accuracy[1] < 0.05
    mi = MIFGSM(steps=10)(model, x, y, eps=0.2, card=card)
    fgsm = FGSM()(model, x, y, eps=0.2, card=card)
    assert mi.robust_accuracy[0] < fgsm.robust_accuracy[0]
    assert mi.robust_accuracy[0] < 0.1
