"""The gradient-masking checks fire on masked models and stay silent on a plain one."""

from __future__ import annotations

import torch
from torch import nn

from dlsec.scenarios.whitebox import checks as sanity
from dlsec.scenarios.whitebox import ensemble as ens
from dlsec.scenarios.whitebox import evaluate_robustness


class _Softmax(nn.Module):
    """Returns probabilities instead of logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).softmax(1)


class _Quantized(nn.Module):
    """Rounds the input to 5 grey levels first: the input gradient is zero everywhere."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 4) / 4)


class _Noisy(nn.Module):
    """Adds fresh noise to the input on every call (a randomized defense)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x + 0.05 * torch.randn_like(x))


def _codes(warnings: list[str]) -> set[str]:
    return {w.split("]")[0] + "]" for w in warnings}


def _evaluate(model, digits, card, **kw):
    x, y = digits.x_test[:100], digits.y_test[:100]
    kw.setdefault("eps", [0.05, 0.2])
    return evaluate_robustness(model, x, y, card=card, generator=torch.Generator().manual_seed(0),
                               progress=False, **kw)


def test_silent_on_a_plain_model(digits, digits_net) -> None:
    model, card = digits_net
    rep = _evaluate(model, digits, card)
    assert rep.warnings == []
    assert rep.robust_accuracy[-1] < 0.05  # and the evaluation itself works


def test_fires_on_a_model_that_returns_probabilities(digits, digits_net) -> None:
    model, card = digits_net
    rep = _evaluate(_Softmax(model), digits, card, eps=[0.1], attacks=("apgd-ce",))
    assert "[probabilities]" in _codes(rep.warnings)


def test_fires_on_non_differentiable_input_quantization(digits, digits_net) -> None:
    model, card = digits_net
    rep = _evaluate(_Quantized(model), digits, card, eps=[0.1], attacks=("apgd-ce",))
    codes = _codes(rep.warnings)
    assert {"[gradients]", "[large-eps]"} <= codes, rep.warnings
    assert "[probabilities]" not in codes


def test_fires_on_a_randomized_model(digits, digits_net) -> None:
    model, _ = digits_net
    x, y = digits.x_test[:100], digits.y_test[:100]
    torch.manual_seed(0)
    assert _codes(sanity.model_checks(_Noisy(model), x, y)) == {"[random]"}
    assert sanity.model_checks(model, x, y) == []


def test_fires_when_a_weaker_attack_beats_the_stronger_ones(
    digits, digits_net, monkeypatch
) -> None:
    model, card = digits_net

    def blind(model, x, y, *, norm, eps, bounds, generator):  # a "strong" attack that fails
        return x

    monkeypatch.setitem(ens._STAGES, "t-blind", ens.Stage("t-blind", blind))
    rep = _evaluate(model, digits, card, eps=[0.1], attacks=("t-blind",))
    assert "[weaker-attack]" in _codes(rep.warnings)
    assert rep.robust_accuracy[0] == rep.clean_accuracy


def test_curve_check() -> None:
    assert sanity.check_curve([0.1, 0.2, 0.3], [0.6, 0.3, 0.0]) == []
    rising = sanity.check_curve([0.1, 0.2], [0.3, 0.5])
    assert len(rising) == 1 and "rises" in rising[0]
    flat = sanity.check_curve([0.3, 0.1, 0.2], [0.7, 0.7, 0.7])
    assert len(flat) == 1 and "does not fall" in flat[0]
    assert sanity.check_curve([0.1, 0.15], [0.7, 0.7]) == []  # too narrow a sweep to judge
    assert sanity.check_curve([0.1], [0.7]) == []


def test_probability_check_is_exact() -> None:
    p = torch.tensor([[0.2, 0.8], [1.0, 0.0]])
    assert len(sanity.check_probabilities(p)) == 1
    assert sanity.check_probabilities(torch.tensor([[0.2, 0.7], [1.0, 0.0]])) == []
    assert sanity.check_probabilities(torch.tensor([[2.0, -1.0], [0.5, 0.5]])) == []


class _Refuses(nn.Module):
    """A model that must not be called."""

    def forward(self, x):
        raise AssertionError("called")


def test_checks_reuse_what_the_evaluation_computed(digits, digits_net) -> None:
    model, _ = digits_net
    x, y = digits.x_test[:20], digits.y_test[:20]
    # the large-eps attack skips points already fooled inside a smaller ball
    known = torch.ones(20, dtype=torch.bool)
    assert sanity.large_eps_check(_Refuses(), x, y, norm="linf", bounds=(0.0, 1.0),
                                  known_fooled=known) == []
    # all but two known: those two are attacked (and fooled at half the input range)
    known[:2] = False
    assert sanity.large_eps_check(model, x, y, norm="linf", bounds=(0.0, 1.0),
                                  known_fooled=known) == []
    # model_checks take the evaluation's clean logits: probabilities there are flagged,
    # and logits that another pass does not reproduce are a randomized model
    with torch.no_grad():
        logits = model(x)
    assert sanity.model_checks(model, x, y, logits=logits) == []
    codes = _codes(sanity.model_checks(model, x, y, logits=logits.softmax(1)))
    assert codes == {"[probabilities]", "[random]"}
    assert _codes(sanity.check_deterministic(model, x, reference=logits + 1.0)) == {"[random]"}


def test_the_evaluation_reports_the_time_its_checks_took(digits, digits_net) -> None:
    model, card = digits_net
    rep = _evaluate(model, digits, card, eps=[0.1], attacks=("apgd-ce",))
    assert 0 < rep.check_seconds < rep.seconds
    off = _evaluate(model, digits, card, eps=[0.1], attacks=("apgd-ce",), checks=False)
    assert off.check_seconds == 0 and off.warnings == []
