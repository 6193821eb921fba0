"""DP-SGD on Opacus (dlsec.defenses.dp): Poisson batches through fit's sampler seam, the
accountant fed the sample rate actually used, epsilon within the target, accuracy well
above chance on digits, seeds reproduce, BatchNorm refused or fixed, bad settings refused."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import PRVAccountant
from torch import nn

import dlsec.defenses.dp.training as dp_mod
from dlsec.data import load_dataset
from dlsec.defenses.dp import DPError, dp_train, poisson_sampler
from dlsec.models import read_card, save
from dlsec.training import TrainConfig, fit


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _config(**kw) -> TrainConfig:
    base = dict(epochs=5, lr=1e-2, schedule="none", device="cpu",
                measure_train_accuracy=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def dp_run(digits):
    """SimpleNet on digits at epsilon 3, recording the batch sizes fit trained on."""
    sizes: list[int] = []
    real_fit = dp_mod.fit

    def spying_fit(*args, sampler, **kw):
        def recorded(epoch):
            for batch in sampler(epoch):
                sizes.append(len(batch))
                yield batch
        return real_fit(*args, sampler=recorded, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(dp_mod, "fit", spying_fit)
    try:
        res = dp_train(digits, "simplenet", _config(), epsilon=3.0, progress=False)
    finally:
        mp.undo()
    return res, sizes


def test_poisson_sampler_batch_sizes_are_binomial() -> None:
    n, q = 2000, 0.05
    sampler = poisson_sampler(n, q, torch.Generator().manual_seed(0))
    sizes = torch.tensor([len(b) for _ in range(20) for b in sampler], dtype=torch.float64)
    assert len(sizes) == 20 * round(1 / q)
    mean, var = q * n, q * (1 - q) * n  # 100, 95
    assert abs(float(sizes.mean()) - mean) < 4 * math.sqrt(var / len(sizes))
    assert 0.75 * var < float(sizes.var()) < 1.3 * var
    again = poisson_sampler(n, q, torch.Generator().manual_seed(0))
    assert [list(b) for b in again][:3] == [list(b) for b in poisson_sampler(
        n, q, torch.Generator().manual_seed(0))][:3]


def test_fit_sampler_seam_trains_the_batches_it_yields() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    calls: list[int] = []
    seen: list[int] = []

    def loss(m, xb, yb):
        seen.append(len(yb))
        return nn.functional.cross_entropy(m(xb), yb)

    def sampler(epoch):
        calls.append(epoch)
        return [[0, 1, 2], [3]]

    fit(model, x, y, config=TrainConfig(epochs=2, device="cpu", val_fraction=0.0),
        batch_loss=loss, sampler=sampler, progress=False)
    assert calls == [1, 2]
    assert seen == [3, 1, 3, 1]


def test_dp_training_on_digits_meets_the_target_and_learns(dp_run) -> None:
    res, _ = dp_run
    dp = res.card.training["dp"]
    assert dp["epsilon_prv"] <= 3.0 + 0.05
    assert dp["epsilon_prv"] > 2.0  # the budget was used, not wasted on too much noise
    assert dp["epsilon_rdp"] >= 0.95 * dp["epsilon_prv"]  # RDP is the looser bound
    assert dp["noise_multiplier"] > 0.3 and dp["max_grad_norm"] == 1.0
    assert dp["grad_sample_mode"] == "ghost" and dp["accountant"] == "prv"
    assert res.mode_line.startswith("per-sample gradients: ghost")
    # measured 0.90 on digits (10 classes: chance 0.10)
    assert res.card.metrics["test_accuracy"] > 0.6


def test_the_accountant_is_fed_the_sample_rate_fit_used(dp_run) -> None:
    res, sizes = dp_run
    dp = res.card.training["dp"]
    n, q = dp["training_records"], dp["sample_rate"]
    assert abs(q - 1 / math.ceil(n / 64)) < 1e-12  # Opacus's rule for an expected batch of 64
    assert [h[1] for h in res.accountant_history] == [q]
    assert dp["steps"] == len(sizes) == sum(h[2] for h in res.accountant_history)
    mean, var = q * n, q * (1 - q) * n
    t = torch.tensor(sizes, dtype=torch.float64)
    assert abs(float(t.mean()) - mean) < 4 * math.sqrt(var / len(sizes))
    assert 0.6 * var < float(t.var()) < 1.5 * var  # Poisson, not fixed-size batches
    assert len(set(sizes)) > 5
    prv = PRVAccountant()
    prv.history = [(dp["noise_multiplier"], q, dp["steps"])]
    assert abs(prv.get_epsilon(dp["delta"]) - dp["epsilon_prv"]) < 1e-3


def test_empty_poisson_batches_are_noised_steps_and_keep_the_loss_finite(digits) -> None:
    import dataclasses

    tiny = dataclasses.replace(digits, x_train=digits.x_train[:30], y_train=digits.y_train[:30])
    for mode in ("ghost", "hooks"):
        res = dp_train(tiny, "simplenet", _config(epochs=3, batch_size=1, val_fraction=0.0),
                       noise_multiplier=1.0, grad_sample_mode=mode, progress=False)
        # q = 1/30: about 3 of the 30 batches per epoch are empty (0.967**30 = 0.36 each)
        assert res.card.training["dp"]["steps"] == 3 * 30
        assert all(math.isfinite(r["train_loss"]) for r in res.result.history)
        assert all(torch.isfinite(p).all() for p in res.model.parameters())


def test_the_dp_record_survives_save_and_load(dp_run, tmp_path) -> None:
    res, _ = dp_run
    save(res.model, res.card, tmp_path / "m")
    loaded = read_card(tmp_path / "m").training["dp"]
    assert loaded.keys() == res.card.training["dp"].keys()
    assert loaded["steps"] == res.card.training["dp"]["steps"]
    assert abs(loaded["epsilon_prv"] - res.card.training["dp"]["epsilon_prv"]) < 1e-9


def test_seeds_reproduce_and_differ(digits) -> None:
    import hashlib

    def weights(seed: int) -> tuple[str, torch.Tensor]:
        res = dp_train(digits, "simplenet", _config(epochs=1, seed=seed), noise_multiplier=1.0,
                       progress=False)
        flat = torch.cat([p.detach().flatten() for p in res.model.parameters()])
        return hashlib.sha256(flat.numpy().tobytes()).hexdigest(), flat

    (ha, a), (hb, _), (hc, c) = weights(1), weights(1), weights(2)
    assert ha == hb  # bit for bit: the Poisson batches and the noise are seeded
    assert ha != hc and (a - c).abs().max() > 1e-2


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Linear(16, 10))


def test_batchnorm_is_refused_naming_the_layer(digits) -> None:
    with pytest.raises(DPError, match=r"2 \(BatchNorm1d\)"):
        dp_train(digits, "simplenet", _config(epochs=1), noise_multiplier=1.0, model=_bn_net(),
                 progress=False)


def test_batchnorm_is_fixed_on_request_and_recorded(digits) -> None:
    res = dp_train(digits, "simplenet", _config(epochs=1), noise_multiplier=1.0,
                   model=_bn_net(), fix=True, progress=False)
    assert res.card.training["dp"]["fixed_layers"] == ["2: BatchNorm1d -> GroupNorm"]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in res.model.modules())


def test_a_fixed_model_under_another_architecture_name_is_refused_on_load(digits,
                                                                          tmp_path) -> None:
    from dlsec.models import ModelError, load

    res = dp_train(digits, "simplenet", _config(epochs=1), noise_multiplier=1.0,
                   model=_bn_net(), fix=True, progress=False)
    save(res.model, res.card, tmp_path / "m")  # the card says simplenet: no layer 2 there
    with pytest.raises(ModelError, match=r"'2: BatchNorm1d -> GroupNorm' is not what "
                       r"Opacus's ModuleValidator.fix does to 'simplenet' \(it replaces nothing\)"):
        load(tmp_path / "m")


def test_auto_mode_says_which_and_why() -> None:
    assert dp_mod._choose_mode(nn.Linear(3, 2), None) == (
        "ghost", "per-sample gradients: ghost clipping (every trainable layer is ghost-clippable)")
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 10))
    mode, line = dp_mod._choose_mode(conv, None)
    assert mode == "ghost" and "per-sample gradients for 0 (Conv2d)" in line

    class Scale(nn.Module):  # a layer no Opacus sampler knows
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.w

    mode, line = dp_mod._choose_mode(nn.Sequential(Scale(), nn.Linear(3, 2)), None)
    assert mode == "hooks" and "0 (Scale)" in line
    assert dp_mod._choose_mode(nn.Linear(3, 2), "hooks")[0] == "hooks"


@pytest.mark.parametrize(("kw", "words"), [
    ({"epsilon": 0.0}, "epsilon must be > 0, got 0"),
    ({"epsilon": -1.0}, "epsilon must be > 0, got -1"),
    ({"epsilon": 3.0, "delta": 1.0}, "delta must be in (0, 1), got 1"),
    ({"epsilon": 3.0, "delta": 0.0}, "delta must be in (0, 1), got 0"),
    ({"epsilon": 3.0, "max_grad_norm": 0.0}, "max-grad-norm must be > 0, got 0"),
    ({"epsilon": 3.0, "noise_multiplier": 1.0}, "not both"),
    ({}, "a target epsilon or a noise multiplier"),
    ({"epsilon": 1e-4}, "target epsilon 0.0001 (delta 1e-05) is unreachable"),
])
def test_bad_settings_are_one_line_errors(digits, kw, words) -> None:
    with pytest.raises(DPError) as info:
        dp_train(digits, "simplenet", _config(epochs=1), progress=False, **kw)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_layer_without_any_opacus_sampler_trains_through_hooks(digits) -> None:
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(64))

        def forward(self, x):
            return x.flatten(1) * self.w

    torch.manual_seed(0)
    net = nn.Sequential(Scale(), nn.Linear(64, 10))
    res = dp_train(digits, "simplenet", _config(epochs=2), noise_multiplier=1.0, model=net,
                   progress=False)
    assert res.card.training["dp"]["grad_sample_mode"] == "hooks"
    assert res.card.metrics["test_accuracy"] > 0.4  # measured 0.77 (chance 0.10)


def test_delta_at_least_one_over_n_is_a_warning(digits) -> None:
    res = dp_train(digits, "simplenet", _config(epochs=1), epsilon=3.0, delta=0.01,
                   progress=False)
    assert len(res.warnings) == 1 and "delta 0.01 >= 1/n" in res.warnings[0]


def test_dp_under_torchrun_is_refused(digits, monkeypatch) -> None:
    monkeypatch.setattr(dp_mod, "distributed_context", lambda device: object())
    with pytest.raises(DPError, match="torchrun"):
        dp_train(digits, "simplenet", _config(epochs=1), epsilon=3.0, progress=False)


def test_an_rdp_target_is_met_under_rdp_with_prv_beside(digits) -> None:
    res = dp_train(digits, "simplenet", _config(epochs=2), epsilon=3.0, accountant="rdp",
                   progress=False)
    dp = res.card.training["dp"]
    assert dp["accountant"] == "rdp" and dp["epsilon_rdp"] <= 3.0 + 0.05
    assert dp["epsilon_prv"] <= dp["epsilon_rdp"] + 0.05  # PRV is the tighter estimate
