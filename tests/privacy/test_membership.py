"""Membership attacks: exact math on tiny cases, measured effects at reduced sizes."""

from __future__ import annotations

import math

import pytest
import torch

from dlsec.attacks.privacy import PrivacyAttackError
from dlsec.attacks.privacy._common import shift_images
from dlsec.attacks.privacy.membership import (
    balanced_membership_set,
    label_only_attack,
    lira,
    lira_scores,
    logit_confidence,
    loss_attack,
    random_halves,
    shadow_attack,
    threshold_attack,
    train_shadow_models,
)
from dlsec.attacks.surrogate import fresh_model
from dlsec.models import ModelCard
from dlsec.threat import LocalOracle
from dlsec.training import TrainConfig, fit

OVERFIT = TrainConfig(epochs=100, lr=1e-2, batch_size=32, val_fraction=0.0, schedule="none",
                      device="cpu")
REGULARIZED = TrainConfig(epochs=10, lr=3e-3, batch_size=32, val_fraction=0.0,
                          weight_decay=0.05, device="cpu")


def test_logit_confidence_by_hand() -> None:
    p = torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])
    phi = logit_confidence(p, torch.tensor([0, 1, 1]))
    assert phi[0].item() == pytest.approx(0.0)
    assert phi[1].item() == pytest.approx(-math.log(3.0))
    assert phi[2].item() < -600  # p_y = 0: finite, very negative


def test_lira_scores_by_hand() -> None:
    # one record, 4 shadows: IN phis 2 and 4 (median 3, std 1), OUT phis 0 and 2 (median 1, std 1)
    shadow = torch.tensor([[2.0], [0.0], [4.0], [2.0]])
    keep = torch.tensor([[True], [False], [True], [False]])
    target = torch.tensor([3.0])
    online = lira_scores(target, shadow, keep, online=True)
    assert online.item() == pytest.approx(2.0)  # log N(3;3,1) - log N(3;1,1) = 0 - (-2)
    offline = lira_scores(target, shadow, keep, online=False)
    assert offline.item() == pytest.approx(math.log(0.5 * (1 + math.erf(2 / math.sqrt(2)))))
    # the pooled variance averages the records' variances
    shadow2 = torch.tensor([[2.0, 0.0], [0.0, 0.0], [4.0, 0.0], [2.0, 4.0]])
    keep2 = keep.expand(4, 2)
    pooled = lira_scores(torch.tensor([3.0, 0.0]), shadow2, keep2, online=False, fix_variance=True)
    # OUT var: record 0 -> 1, record 1 -> 4; pooled 2.5; record 0 median 1
    assert pooled[0].item() == pytest.approx(
        math.log(0.5 * (1 + math.erf((2 / math.sqrt(2.5)) / math.sqrt(2)))))


def test_lira_needs_out_shadows() -> None:
    with pytest.raises(PrivacyAttackError):
        lira_scores(torch.zeros(1), torch.zeros(2, 1), torch.ones(2, 1, dtype=torch.bool))


def test_random_halves_balanced_and_seeded() -> None:
    k1 = random_halves(6, 50, generator=torch.Generator().manual_seed(1))
    k2 = random_halves(6, 50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(k1, k2)
    assert (k1.sum(0) == 3).all()


def test_balanced_membership_set() -> None:
    x, _y, m = balanced_membership_set(torch.zeros(10, 2), torch.zeros(10, dtype=torch.long),
                                      torch.ones(4, 2), torch.ones(4, dtype=torch.long))
    assert m.sum() == 4 and (~m).sum() == 4
    assert (x[m] == 0).all() and (x[~m] == 1).all()


def test_shift_images_by_hand() -> None:
    x = torch.arange(9.0).view(1, 1, 3, 3)
    out = shift_images(x, 1, 0, fill=-1.0)
    assert out[0, 0].tolist() == [[-1, 0, 1], [-1, 3, 4], [-1, 6, 7]]
    assert shift_images(x, 0, -1, fill=0.0)[0, 0].tolist() == [[3, 4, 5], [6, 7, 8], [0, 0, 0]]


@pytest.fixture(scope="module")
def setup(digits):
    x, y = digits.x_train[:400], digits.y_train[:400]
    card = ModelCard("simplenet", input_shape=[1, 8, 8], classes=list(digits.classes))
    keep = random_halves(2, 400, generator=torch.Generator().manual_seed(0))[0]
    out = {}
    for name, cfg in (("overfit", OVERFIT), ("regularized", REGULARIZED)):
        model = fresh_model(card, 0)
        fit(model, x[keep], y[keep], config=cfg, progress=False)
        shadows = train_shadow_models(x, y, card=card, n_models=8, config=cfg,
                                      generator=torch.Generator().manual_seed(1))
        out[name] = (model, shadows)
    return x, y, keep, card, out


# Measured levels and margins. Each assertion below is the level measured on this model
# (model seed 0, shadow seed 1, AVX-512 kernels; the same to 3 decimals under
# ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE) minus a margin that covers the spread
# over training seeds 0-2 (model seed s, shadow seed s + 1), so another machine's
# rounding, which changes the training trajectories, stays inside it.


def test_lira_overfit_leaks_more_than_regularized(setup) -> None:
    _x, _y, keep, card, out = setup
    auc, tpr = {}, {}
    for name, (model, shadows) in out.items():
        oracle = LocalOracle(model, card=card)
        res = lira(oracle, shadows, is_member=keep)
        assert res.queries == oracle.queries_total == 400
        auc[name], tpr[name] = res.metrics.auc, res.metrics.tpr_at_1_fpr
    # online LiRA on the overfit model: AUC 0.647 (seeds 0-2: 0.647-0.741), TPR at 1% FPR
    # 0.0995 (0.085-0.164; chance is 0.01); on the regularized model: AUC 0.527
    # (0.527-0.573), 0.12-0.17 below the overfit model's
    assert auc["overfit"] >= 0.60
    assert tpr["overfit"] >= 0.05
    assert auc["regularized"] <= auc["overfit"] - 0.05


def test_attacks_beat_chance_on_overfit_model(setup) -> None:
    x, y, keep, card, out = setup
    model, shadows = out["overfit"]
    oracle = LocalOracle(model, card=card)
    offline = lira(oracle, shadows, is_member=keep, online=False)
    shokri = shadow_attack(oracle, x, y, shadows=shadows, is_member=keep)
    loss = loss_attack(oracle, x, y, is_member=keep)
    # offline LiRA: AUC 0.668 (seeds 0-2: 0.668-0.698); Shokri's shadow attack: 0.602
    # (0.602-0.672)
    assert offline.metrics.auc >= 0.62
    assert shokri.metrics.auc >= 0.56
    # this model generalizes (train 1.0, held-out half 0.99): a global loss threshold is
    # near chance here (0.535; 0.535-0.555), 0.13-0.14 below offline LiRA's per-record
    # calibration. The loss and label-only attacks are measured on a model that memorizes
    # (test_global_threshold_attacks_find_memorized_records)
    assert loss.metrics.auc <= offline.metrics.auc - 0.08
    assert oracle.queries_total == offline.queries + shokri.queries + loss.queries == 1200
    label_oracle = LocalOracle(model, card=card, output="label")
    lab = label_only_attack(label_oracle, x, y, is_member=keep, noise_samples=5)
    assert lab.queries == label_oracle.queries_total == 400 * (5 + 5)


@pytest.fixture(scope="module")
def memorizing(digits):
    """A SimpleNet fit (100 epochs) to half of 400 digits where a random 20% of the labels
    were replaced by another class: it memorizes its members' wrong labels (train accuracy
    1.0 on them) and predicts the true class of the other half's."""
    x, y = digits.x_train[:400], digits.y_train[:400].clone()
    g = torch.Generator().manual_seed(100)
    flip = torch.rand(400, generator=g) < 0.2
    y[flip] = (y[flip] + torch.randint(1, 10, (int(flip.sum()),), generator=g)) % 10
    card = ModelCard("simplenet", input_shape=[1, 8, 8], classes=list(digits.classes))
    keep = random_halves(2, 400, generator=torch.Generator().manual_seed(0))[0]
    model = fresh_model(card, 0)
    fit(model, x[keep], y[keep], config=OVERFIT, progress=False)
    return x, y, keep, card, model


def test_global_threshold_attacks_find_memorized_records(memorizing) -> None:
    x, y, keep, card, model = memorizing
    # measured: loss AUC 0.788 (model seeds 0-2 with their own label flips: 0.73-0.79);
    # label-only AUC 0.693 (0.69-0.75)
    loss = loss_attack(LocalOracle(model, card=card), x, y, is_member=keep)
    assert loss.metrics.auc >= 0.70
    label_oracle = LocalOracle(model, card=card, output="label")
    lab = label_only_attack(label_oracle, x, y, is_member=keep, noise_samples=5)
    assert lab.metrics.auc >= 0.63
    assert lab.queries == label_oracle.queries_total == 400 * (5 + 5)


def test_lira_same_seed_same_scores(setup, digits) -> None:
    x, y, _keep, card, out = setup
    model = out["overfit"][0]
    cfg = TrainConfig(epochs=5, lr=1e-2, batch_size=32, val_fraction=0.0, device="cpu")
    scores = []
    for _ in range(2):
        sh = train_shadow_models(x[:100], y[:100], card=card, n_models=4, config=cfg,
                                 generator=torch.Generator().manual_seed(5))
        scores.append(lira(LocalOracle(model, card=card), sh).scores)
    assert torch.equal(scores[0], scores[1])


def test_stacked_training_matches_sequential_quality(digits) -> None:
    x, y = digits.x_train[:300], digits.y_train[:300]
    card = ModelCard("simplenet", input_shape=[1, 8, 8], classes=list(digits.classes))
    cfg = TrainConfig(epochs=20, lr=3e-3, batch_size=32, val_fraction=0.0, device="cpu")
    accs = {}
    for stacked in (True, False):
        sh = train_shadow_models(x, y, card=card, n_models=2, config=cfg, stacked=stacked,
                                 generator=torch.Generator().manual_seed(0))
        m, k = sh.models[0], sh.keep[0]
        accs[stacked] = (m(x[k]).argmax(1) == y[k]).float().mean().item()
    assert accs[True] >= 0.95 and accs[False] >= 0.95


def test_score_attacks_refuse_label_oracle(setup) -> None:
    x, y, _keep, card, out = setup
    with pytest.raises(PrivacyAttackError):
        threshold_attack(LocalOracle(out["overfit"][0], card=card, output="label"), x, y)
