"""Membership inference against a DP-SGD model: its shadow models are DP-trained too."""

from __future__ import annotations

import pytest
import torch

from dlsec.attacks.privacy.membership import train_shadow_models
from dlsec.data import load_dataset
from dlsec.errors import DlsecError
from dlsec.scenarios.context import ScenarioContext
from dlsec.scenarios.dp import dp_training
from dlsec.scenarios.membership import DPShadowTrainer, MembershipOptions, run_membership
from dlsec.training import TrainConfig


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def dp_target(digits):
    res = dp_training(digits, "simplenet", TrainConfig(epochs=2, lr=0.05, batch_size=64, seed=0),
                      noise_multiplier=1.5, max_grad_norm=0.7, progress=False)
    return res


def test_shadows_of_a_dp_target_are_dp_trained_with_its_noise_clipping_and_rate(digits, dp_target):
    card = dp_target.card
    target = card.training["dp"]
    ctx = ScenarioContext(model=dp_target.model, card=card, dataset=digits, seed=0)
    res = run_membership(ctx, MembershipOptions(attacks=("loss", "lira-offline"), members=100,
                                                shadows=2))
    shadows = res.details["shadow_dp"]
    assert len(shadows) == 2
    for rec in shadows:
        assert rec["noise_multiplier"] == target["noise_multiplier"] == 1.5
        assert rec["max_grad_norm"] == target["max_grad_norm"] == 0.7
        # the target: 1295 records, batch 64, rate 1/21; a shadow keeps about 100 of the 200
        # pool records, and an integer batch gets its rate within 15 % of the target's
        assert target["sample_rate"] == pytest.approx(1 / 21)
        assert abs(rec["sample_rate"] - 1 / 21) < 0.15 / 21
        assert 80 <= rec["training_records"] <= 120
        assert rec["steps"] == round(2 / rec["sample_rate"])
    assert {"loss_auc", "lira_offline_auc"} <= set(res.metrics)


def test_plain_target_keeps_plain_stacked_shadows(digits):
    from dlsec.training import train_model

    model, card, _ = train_model(digits, "simplenet", TrainConfig(epochs=2, seed=0), progress=False)
    assert DPShadowTrainer.from_card(card) is None
    res = run_membership(ScenarioContext(model=model, card=card, dataset=digits),
                         MembershipOptions(attacks=("lira-offline",), members=30, shadows=2))
    assert "shadow_dp" not in res.details


def test_shadow_trainer_seam_trains_each_model_on_its_half(digits):
    x, y = digits.x_train[:60], digits.y_train[:60]
    seen: list[tuple[int, int]] = []

    def train_one(model, xs, ys, config):
        seen.append((int(ys.numel()), config.seed))
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        return model

    from dlsec.models import ModelCard

    card = ModelCard(architecture="simplenet", input_shape=list(digits.input_shape),
                     classes=list(digits.classes))
    sh = train_shadow_models(x, y, card=card, n_models=4, config=TrainConfig(epochs=1, seed=5),
                             generator=torch.Generator().manual_seed(0), train_one=train_one)
    # every record is in exactly half (2) of the shadows; seeds 5..8, one after another
    assert [s for _, s in seen] == [5, 6, 7, 8]
    assert sum(n for n, _ in seen) == 2 * 60
    assert [n for n, _ in seen] == sh.keep.sum(1).tolist()
    assert all(float(p.abs().sum()) == 0.0 for m in sh.models for p in m.parameters())
    with pytest.raises(DlsecError, match="one after another"):
        train_shadow_models(x, y, card=card, n_models=2, config=TrainConfig(epochs=1),
                            generator=torch.Generator().manual_seed(0), stacked=True,
                            train_one=train_one)
