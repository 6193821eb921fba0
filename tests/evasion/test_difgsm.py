"""DI-FGSM: the transform by hand, the gradient through it, MI-FGSM at diversity 0, the
clean-verdict lift, determinism and a measured effect on digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlsec.attacks.evasion import MIFGSM, AttackError, make_attack
from dlsec.attacks.evasion.difgsm import DIFGSM, draw_diversity, lift_to_top, resize_pad


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_resize_pad_by_hand() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # nearest 4 -> 3 keeps source rows/cols floor(i * 4 / 3) = 0, 1, 2; then one zero row
    # on top and one zero column on the right
    out = resize_pad(x, size=(3, 3), top=1, left=0)
    expected = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, 0.0], [4.0, 5.0, 6.0, 0.0], [8.0, 9.0, 10.0, 0.0]]
    )
    assert out.shape == x.shape
    assert torch.equal(out[0, 0], expected)
    # 4 -> 2 keeps rows/cols 0 and 2; placed bottom-right, padded with -1
    out = resize_pad(x, size=(2, 2), top=2, left=2, pad_value=-1.0)
    assert torch.equal(out[0, 0, 2:, 2:], torch.tensor([[0.0, 2.0], [8.0, 10.0]]))
    assert bool((out[0, 0, :2] == -1).all()) and bool((out[0, 0, :, :2] == -1).all())
    # full size, no offset: the identity; several channels and images keep their shape
    x = torch.rand(3, 2, 8, 8)
    assert torch.equal(resize_pad(x, size=(8, 8), top=0, left=0), x)
    assert resize_pad(x, size=(7, 7), top=1, left=0).shape == x.shape
    with pytest.raises(AttackError):
        resize_pad(x, size=(7, 7), top=2, left=0)


def test_draws_stay_in_range_and_follow_the_probability() -> None:
    g = _gen()
    draws = [
        draw_diversity((1, 1, 8, 8), resize_rate=0.5, diversity_prob=0.5, generator=g)
        for _ in range(2000)
    ]
    used = [d for d in draws if d is not None]
    assert 0.45 < len(used) / len(draws) < 0.55
    sizes = {d[0] for d in used}
    assert sizes == {(s, s) for s in range(4, 9)}  # round(0.5 * 8) = 4 up to 8, all reached
    assert all(0 <= top <= 8 - s[0] and 0 <= left <= 8 - s[1] for s, top, left in used)
    # the paper's resize rate on 8 x 8 digits: sizes 7 and 8
    d = [
        draw_diversity((8, 8), resize_rate=0.9, diversity_prob=1.0, generator=g) for _ in range(200)
    ]
    assert {x[0] for x in d if x is not None} == {(7, 7), (8, 8)} and None not in d
    # probability 0 draws nothing
    state = g.get_state()
    assert draw_diversity((8, 8), resize_rate=0.9, diversity_prob=0.0, generator=g) is None
    assert torch.equal(g.get_state(), state)


def test_diversity_zero_is_mifgsm_exactly(digits_net, digits) -> None:
    model, card = digits_net
    x, y = digits.x_test[:120], digits.y_test[:120]
    a = MIFGSM(steps=10)(model, x, y, eps=[0.05, 0.1], card=card)
    b = DIFGSM(steps=10, diversity_prob=0.0)(
        model, x, y, eps=[0.05, 0.1], card=card, generator=_gen()
    )
    assert torch.equal(a.x_adv, b.x_adv)
    assert torch.equal(a.success, b.success)
    assert torch.equal(a.gradients, b.gradients)


def test_the_step_follows_the_gradient_through_the_drawn_transform() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(6, 1, 4, 4) * 0.6 + 0.2
    with torch.no_grad():
        y = net(x).argmax(1)  # clean points are classified "correctly"
    eps = 0.05
    res = DIFGSM(steps=1, diversity_prob=1.0, resize_rate=0.5)(
        net, x, y, eps=eps, bounds=(0.0, 1.0), generator=_gen(3)
    )
    draw = draw_diversity(x.shape, resize_rate=0.5, diversity_prob=1.0, generator=_gen(3))
    assert draw is not None and draw[0] != (4, 4)  # this seed really transforms
    size, top, left = draw
    xg = x.clone().requires_grad_(True)
    F.cross_entropy(net(resize_pad(xg, size=size, top=top, left=left)), y).backward()
    expected = (x + eps * xg.grad.sign()).clamp(0, 1)
    assert torch.allclose(res.x_adv[0], expected, atol=1e-6)
    # pixels the nearest-neighbour resize drops get no gradient, so they do not move
    dropped = xg.grad == 0
    assert bool(dropped.any()) and torch.equal(res.x_adv[0][dropped], x[dropped])


def test_lift_to_top_by_hand_and_keeps_the_ce_gradient_direction() -> None:
    z = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
    out = lift_to_top(z, torch.tensor([0, 0]))
    assert out[0, 0] > 3.0 and out[0, 0] - 3.0 < 1e-3  # lifted just above the best other
    assert torch.equal(out[0, 1:], z[0, 1:]) and torch.equal(out[1], z[1])  # row 2 unchanged
    # d CE / dx through the lifted logits is a positive multiple of the plain one
    torch.manual_seed(1)
    lin = nn.Linear(5, 4)
    x = torch.randn(7, 5)
    y = torch.randint(0, 4, (7,))
    for lifted in (False, True):
        xg = x.clone().requires_grad_(True)
        logits = lin(xg)
        if lifted:
            logits = lift_to_top(logits, y)
            assert bool((logits.argmax(1) == y).all())
        g = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xg)[0]
        if lifted:
            g_lift = g
        else:
            g_plain = g
    cos = F.cosine_similarity(g_plain, g_lift, dim=1)
    assert torch.allclose(cos, torch.ones(7), atol=1e-5)


def test_same_seed_same_result_and_the_seed_matters(digits_net, digits) -> None:
    model, card = digits_net
    x, y = digits.x_test[:80], digits.y_test[:80]
    atk = DIFGSM(diversity_prob=1.0, resize_rate=0.5)
    a = atk(model, x, y, eps=0.1, card=card, generator=_gen(0))
    b = atk(model, x, y, eps=0.1, card=card, generator=_gen(0))
    c = atk(model, x, y, eps=0.1, card=card, generator=_gen(1))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_difgsm_lowers_digits_accuracy(digits_net, digits) -> None:
    model, card = digits_net
    x, y = digits.x_test[:200], digits.y_test[:200]
    res = make_attack("difgsm")(model, x, y, eps=[0.1, 0.2], card=card, generator=_gen())
    clean = float(res.clean_correct.double().mean())
    # measured: clean 0.975 -> 0.615 at eps 0.1, 0.04 at eps 0.2 (MI-FGSM: the same)
    assert clean >= 0.95
    assert res.robust_accuracy[0] <= clean - 0.25
    assert res.robust_accuracy[1] <= 0.15
    assert float(res.norms.max()) <= 0.2 + 1e-6
    with torch.inference_mode():
        for k in range(2):
            assert torch.equal(model(res.x_adv[k]).argmax(1) != y, res.success[k])


def test_bad_settings_raise() -> None:
    with pytest.raises(AttackError):
        DIFGSM(diversity_prob=1.5)
    with pytest.raises(AttackError):
        DIFGSM(resize_rate=0.0)
    flat = nn.Linear(4, 3)
    x = torch.rand(2, 4)
    with torch.no_grad():
        y = flat(x).argmax(1)  # correctly classified, so the attack runs
    with pytest.raises(AttackError, match="images"):
        DIFGSM()(flat, x, y, eps=0.1, bounds=(0.0, 1.0))
