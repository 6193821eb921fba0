"""Mixed precision in the white-box evaluation: bf16 for the search, float32 for every verdict.

bfloat16 autocast runs on a CPU, so these tests use it; fp16 needs CUDA and is refused here.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import Tensor, nn

from dlsec.attacks.evasion import PGD
from dlsec.audit.config import ConfigError, load_config
from dlsec.scenarios.context import ScenarioContext
from dlsec.scenarios.whitebox import (
    WhiteBoxOptions,
    evaluate_robustness,
    robustness,
    single_attack,
    verify_float32,
)
from dlsec.scenarios.whitebox import ensemble as ens
from dlsec.threat import ThreatModel
from dlsec.training import AutocastModel, TrainingError

# Robust accuracy of the digits SimpleNet on its first 100 test points at eps 0.1, measured
# here: float32 0.45, bf16 0.45 (at eps 0.05: 0.86 both). bf16 rounds the search's logits
# and gradients, so the runs may part by a point or two on another CPU; five is the margin.
MARGIN = 0.05
EPS = 0.1
POINTS = 100


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sha(t: Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class TwoFaced(nn.Module):
    """Honest in float32; under autocast (its output in bfloat16) it claims every point is
    class ``(y + 1) % 10`` of ``labels``: a search run through it "finds" false breaks."""

    def __init__(self, net: nn.Module, labels: Tensor, x: Tensor) -> None:
        super().__init__()
        self.net, self.labels, self.x = net, labels, x

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        if out.dtype != torch.bfloat16:
            return out
        # each input's nearest clean point gives its label; boost the next class far ahead
        near = torch.cdist(x.flatten(1).float(), self.x.flatten(1)).argmin(1)
        wrong = (self.labels[near] + 1) % out.shape[1]
        return out + 100.0 * nn.functional.one_hot(wrong, out.shape[1]).to(out.dtype)


def _fp32_fooled(model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
    with torch.inference_mode():
        return model(x_adv).argmax(1) != y


def test_autocast_model_runs_in_bf16_and_returns_float32(digits_net) -> None:
    model, _ = digits_net
    seen: list[torch.dtype] = []
    layer = next(m for m in model.modules() if isinstance(m, nn.Linear))
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        x = torch.rand(4, 1, 8, 8)
        with torch.no_grad():
            out = AutocastModel(model, "bf16")(x)
            assert out.dtype == torch.float32 and seen == [torch.bfloat16]
            plain = model(x)
        assert seen[-1] == torch.float32
        # the same logits up to bf16 rounding: not some other function
        assert float((out - plain).abs().max()) < 0.05 * float(plain.abs().max()) + 0.1
        # gradients reach the input, in float32
        xg = x.clone().requires_grad_(True)
        AutocastModel(model, "bf16")(xg).sum().backward()
        assert xg.grad is not None and xg.grad.dtype == torch.float32
        assert float(xg.grad.abs().sum()) > 0
    finally:
        handle.remove()


def test_ensemble_bf16_search_float32_verdict(digits, digits_net) -> None:
    model, card = digits_net
    x, y = digits.x_test[:POINTS], digits.y_test[:POINTS]
    seen: set[torch.dtype] = set()
    layer = next(m for m in model.modules() if isinstance(m, nn.Linear))
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    try:
        half = evaluate_robustness(model, x, y, eps=EPS, card=card, generator=_gen(),
                                   progress=False, checks=False, amp="bf16")
    finally:
        handle.remove()
    assert seen == {torch.bfloat16, torch.float32}  # the search in bf16, the verdicts not
    full = evaluate_robustness(model, x, y, eps=EPS, card=card, generator=_gen(),
                               progress=False, checks=False)
    assert half.amp == "bf16" and half.summary()["amp"] == "bf16" and full.amp == "off"
    # clean accuracy is measured in float32 either way: the same points, bit for bit
    assert _sha(half.clean_correct) == _sha(full.clean_correct)
    assert half.clean_accuracy == full.clean_accuracy
    # a real evaluation, as strong as float32's within the margin
    assert half.robust_accuracy[0] < half.clean_accuracy - 0.3
    assert abs(half.robust_accuracy[0] - full.robust_accuracy[0]) <= MARGIN, (
        half.robust_accuracy, full.robust_accuracy)
    # every point counted as broken fools the float32 model (checked here, directly)
    broken = half.fooled_by[0] >= 0
    assert int(broken.sum()) > 20
    assert bool(_fp32_fooled(model, half.x_adv[0][broken], y[broken]).all())
    assert bool(((x - half.x_adv[0]).flatten(1).abs().amax(1) <= EPS + 1e-6).all())


def test_ensemble_counts_no_break_only_half_precision_sees(digits, digits_net) -> None:
    # the search model lies under autocast (every point "misclassified"); a verdict taken
    # through it would count every point broken. The float32 verdict counts only real ones.
    model, card = digits_net
    x, y = digits.x_test[:40], digits.y_test[:40]
    liar = TwoFaced(model, y, x)
    rep = evaluate_robustness(liar, x, y, eps=0.05, card=card, generator=_gen(),
                              attacks=["apgd-ce"], progress=False, checks=False, amp="bf16")
    with torch.inference_mode():
        clean = model(x).argmax(1) == y
    assert _sha(rep.clean_correct) == _sha(clean)
    assert rep.robust_accuracy[0] >= 0.5  # float32 run at 0.05: 0.86 on 100 points
    broken = rep.fooled_by[0] >= 0
    assert bool(_fp32_fooled(model, rep.x_adv[0][broken], y[broken]).all())


def test_single_attack_verdicts_are_taken_again_in_float32(digits, digits_net) -> None:
    model, card = digits_net
    x, y = digits.x_test[:40], digits.y_test[:40]
    liar = TwoFaced(model, y, x)
    res = PGD(steps=5)(AutocastModel(liar, "bf16"), x, y, eps=[0.02, 0.05], card=card,
                       generator=_gen())
    assert bool(res.success.all()) and not bool(res.clean_correct.any())  # the lie, believed
    checked = verify_float32(liar, res, x, y)
    with torch.inference_mode():
        clean = model(x).argmax(1) == y
    assert _sha(checked.clean_correct) == _sha(clean)
    for k in range(2):
        assert _sha(checked.success[k]) == _sha(_fp32_fooled(model, checked.x_adv[k], y))
        assert bool(checked.success[k][~clean].all())  # misclassified unperturbed: fooled
        assert 0.5 <= checked.robust_accuracy[k] <= float(clean.double().mean())


def test_scenario_passes_amp_and_says_so(digits, digits_net) -> None:
    model, card = digits_net
    ctx = ScenarioContext(model=model, card=card, dataset=digits, seed=0,
                          threat=ThreatModel.from_card(card, eps=(0.05, 0.1)))
    opts = dict(attacks=["fgsm"], samples=60)
    seen: list[torch.dtype] = []
    layer = next(m for m in model.modules() if isinstance(m, nn.Linear))
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        half = robustness(ctx, WhiteBoxOptions(**opts, amp="bf16"))
        half_passes = seen.count(torch.bfloat16)
        full = robustness(ctx, WhiteBoxOptions(**opts))
        full_passes = seen.count(torch.bfloat16) - half_passes
        one = single_attack(ctx, "fgsm", samples=60, amp="bf16")
    finally:
        handle.remove()
    # the attacks searched in bf16 (the ensemble: many passes); with amp off, none did
    assert half_passes > 100 and full_passes == 0
    assert seen.count(torch.bfloat16) > half_passes
    assert half.details["amp"] == "bf16" and half.details["ensemble"]["amp"] == "bf16"
    assert "searched in bf16" in half.summary and "bf16" not in full.summary
    assert half.metrics["clean_accuracy"] == full.metrics["clean_accuracy"]
    for e in ("0.05", "0.1"):
        key = f"robust_accuracy@{e}"
        assert abs(half.metrics[key] - full.metrics[key]) <= MARGIN + 0.05, (e, half.metrics)
    assert one.details["amp"] == "bf16" and "verdicts in float32" in one.summary
    res = one.artifacts["result"]
    for k in range(2):
        assert _sha(res.success[k]) == _sha(_fp32_fooled(model, res.x_adv[k], one.artifacts["y"]))


def test_fp16_on_cpu_and_bad_values_are_refused_in_one_line(digits, digits_net, tmp_path) -> None:
    model, card = digits_net
    x, y = digits.x_test[:8], digits.y_test[:8]
    for amp, words in (("fp16", ("fp16", "CUDA", "bf16")), ("fp8", ("fp8", "bf16"))):
        with pytest.raises(TrainingError) as info:
            evaluate_robustness(model, x, y, eps=0.1, card=card, progress=False, amp=amp)
        msg = str(info.value)
        assert "\n" not in msg and all(w in msg for w in words), msg
    ctx = ScenarioContext(model=model, card=card, dataset=digits)
    with pytest.raises(TrainingError, match="fp16"):
        single_attack(ctx, "fgsm", samples=8, amp="fp16")
    with pytest.raises(TrainingError, match="fp16"):
        robustness(ctx, WhiteBoxOptions(attacks=["fgsm"], samples=8, amp="fp16"))
    with pytest.raises(ValueError, match="amp"):
        WhiteBoxOptions(amp="half")
    p = tmp_path / "a.toml"
    p.write_text('[evasion]\namp = "half"\n')
    with pytest.raises(ConfigError, match="amp") as err:
        load_config(p, {"out": str(tmp_path / "o"), "sections": ["evasion"]})
    assert "\n" not in str(err.value)


def test_state_is_not_resumed_across_precisions(digits, digits_net, tmp_path) -> None:
    model, card = digits_net
    x, y = digits.x_test[:30], digits.y_test[:30]
    seeds = ens._stage_seeds(_gen(), 1, 1)
    args = (model, x, y, "linf", [0.1], ["apgd-ce"], (0.0, 1.0), seeds)
    prints = {amp: ens._fingerprint(*args, amp=amp) for amp in ("off", "bf16")}
    assert prints["off"] != prints["bf16"]
    state = tmp_path / "state.safetensors"
    kw = dict(eps=0.1, card=card, attacks=["apgd-ce"], progress=False, checks=False,
              state_path=state)
    first = evaluate_robustness(model, x, y, generator=_gen(), amp="bf16", **kw)
    again = evaluate_robustness(model, x, y, generator=_gen(), amp="bf16", **kw)
    other = evaluate_robustness(model, x, y, generator=_gen(), amp="off", **kw)
    assert not first.resumed and again.resumed and not other.resumed
    assert _sha(again.fooled_by) == _sha(first.fooled_by)


def test_search_leaves_a_batchnorm_model_in_eval_mode_and_untouched(digits) -> None:
    # the attacks save and restore their model's mode: through the wrapper, they must
    # restore the wrapped model's (a BatchNorm put back in training mode would judge the
    # candidates on batch statistics and overwrite its running ones)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 10))
    bn = net[1]
    assert isinstance(bn, nn.BatchNorm2d)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    net.eval()
    stats = _sha(torch.cat([bn.running_mean, bn.running_var, bn.num_batches_tracked.float().view(1)]))
    x, y = digits.x_test[:16], digits.y_test[:16]
    wrapper = AutocastModel(net, "bf16")
    assert not wrapper.training
    rep = evaluate_robustness(net, x, y, eps=0.1, bounds=(0.0, 1.0), generator=_gen(),
                              attacks=["apgd-ce"], progress=False, checks=False, amp="bf16")
    assert not any(m.training for m in net.modules())
    after = _sha(torch.cat([bn.running_mean, bn.running_var, bn.num_batches_tracked.float().view(1)]))
    assert after == stats
    broken = rep.fooled_by[0] >= 0
    assert bool(_fp32_fooled(net, rep.x_adv[0][broken], y[broken]).all())
    net.train()
    assert wrapper.training  # the wrapper has no mode of its own
