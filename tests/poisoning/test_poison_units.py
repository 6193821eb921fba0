"""Poisoning attacks and sanitizers on tiny, hand-checkable inputs."""

from __future__ import annotations

import pytest
import torch

from dlsec.attacks.poisoning import (
    PoisonError,
    Trigger,
    apply_trigger,
    backdoor,
    craft_collisions,
    inject_mislabeled,
    optimized_flip,
    random_flip,
    targeted_flip,
)
from dlsec.defenses.sanitization import (
    activation_clustering,
    confident_learning,
    detection_metrics,
    knn_consistency,
    loss_outliers,
    spectral_signatures,
    stratified_folds,
)
from dlsec.models import penultimate_features


def _data(n: int = 100, k: int = 5):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 4, 4, generator=g), torch.arange(n) % k


def test_random_flip_exact_count_and_seed():
    x, y = _data()
    res = random_flip(x, y, rate=0.2, generator=torch.Generator().manual_seed(3))
    assert res.n_poisoned == 20
    assert torch.equal(res.mask, res.y != y)  # every flipped label really changed
    assert torch.equal(res.y_clean, y) and res.x is x
    again = random_flip(x, y, rate=0.2, generator=torch.Generator().manual_seed(3))
    other = random_flip(x, y, rate=0.2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(res.y, again.y)
    assert not torch.equal(res.y, other.y)
    with pytest.raises(PoisonError):
        random_flip(x, y, rate=1.5)


def test_targeted_flip_relabels_the_source_class_only():
    x, y = _data()
    res = targeted_flip(x, y, source=2, target=4)
    assert bool((res.y[y == 2] == 4).all())
    assert torch.equal(res.y[y != 2], y[y != 2])
    assert res.n_poisoned == 20
    half = targeted_flip(x, y, source=2, target=4, rate=0.5)
    assert half.n_poisoned == 10
    with pytest.raises(PoisonError):
        targeted_flip(x, y, source=2, target=2)


def test_injection_appends_mislabeled_rows():
    x, y = _data()
    res = inject_mislabeled(x, y, rate=0.2, generator=torch.Generator().manual_seed(0))
    assert res.x.shape[0] == 125  # 25 of 125 = 20 %
    assert torch.equal(res.x[:100], x) and torch.equal(res.y[:100], y)
    assert res.mask[100:].all() and not res.mask[:100].any()
    assert bool((res.y[100:] != res.y_clean[100:]).all())
    fixed = inject_mislabeled(x, y, rate=0.2, label=0, generator=torch.Generator().manual_seed(0))
    assert bool((fixed.y[100:] == 0).all()) and bool((fixed.y_clean[100:] != 0).all())


def test_trigger_patch_exact():
    x = torch.full((1, 1, 4, 4), 0.5)
    out = apply_trigger(x, Trigger(size=2), bounds=(-1.0, 1.0))
    expected = x.clone()
    expected[0, 0, 2:, 2:] = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert torch.equal(out, expected)
    sq = apply_trigger(x, Trigger(size=1, pattern="square", corner="top-left"), bounds=(0.0, 1.0))
    assert sq[0, 0, 0, 0] == 1.0 and sq[0, 0, 1:, :].eq(0.5).all()


def test_backdoor_poisons_only_other_classes():
    x, y = _data()
    res = backdoor(x, y, target=0, rate=0.1, trigger=Trigger(size=2), bounds=(0.0, 1.0))
    assert res.n_poisoned == 10
    assert bool((res.y[res.mask] == 0).all()) and bool((y[res.mask] != 0).all())
    changed = (res.x != x).flatten(1).any(1)
    assert not changed[~res.mask].any()
    diff = (res.x[res.mask] != x[res.mask])[:, :, :2, :].any()  # outside the patch rows
    assert not bool(diff)
    inj = backdoor(x, y, target=0, rate=0.1, mode="inject", bounds=(0.0, 1.0))
    assert inj.x.shape[0] == 100 + round(0.1 * 100 / 0.9)


class _FixedLogits(torch.nn.Module):
    """A surrogate whose logits are a fixed table indexed by the first pixel."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x.flatten(1)[:, 0].long()]


def test_optimized_flip_picks_the_most_confusable_and_never_swaps():
    # 6 samples, 3 classes; sample i's logits are row i.
    table = torch.tensor([[5.0, 4.0, 0.0], [5.0, 0.0, 1.0], [1.0, 5.0, 0.0],
                          [4.5, 5.0, 0.0], [0.0, 3.0, 5.0], [0.0, 0.0, 5.0]])
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    res = optimized_flip(x, y, rate=0.34, surrogate=_FixedLogits(table), num_classes=3)
    # Mean probabilities give t(0)=1, t(1)=0, t(2)=1. Scores log p_t - log p_y are the
    # logit gaps: [-1, -5, -4, -0.5, -2, -5]. Sample 3 (1 -> 0) goes first; sample 0
    # (0 -> 1) would undo it (0 is now a target) and sample 4 (2 -> 1) targets a source:
    # both are skipped, so the second flip is sample 2, again 1 -> 0.
    assert res.n_poisoned == 2
    assert res.y.tolist() == [0, 0, 0, 0, 2, 2]
    assert res.metadata["pairs"] == [[1, 0]]
    again = optimized_flip(x, y, rate=0.34, surrogate=_FixedLogits(table), num_classes=3)
    assert torch.equal(res.y, again.y)


def test_detection_metrics_exact():
    d = detection_metrics(torch.tensor([1, 1, 1, 0, 0]).bool(), torch.tensor([1, 0, 0, 1, 0]).bool())
    assert (d.precision, d.recall, d.true_positives) == (pytest.approx(1 / 3), 0.5, 1)
    assert d.f1 == pytest.approx(0.4)


def test_knn_flags_the_lone_mislabeled_point():
    x = torch.tensor([[0.0], [0.1], [0.2], [0.3], [5.0], [5.1], [5.2], [5.3]])
    y = torch.tensor([0, 0, 1, 0, 1, 1, 1, 1])
    res = knn_consistency(x, y, k=3)
    assert res.scores.tolist() == pytest.approx([1 / 3, 1 / 3, 1.0, 1 / 3, 0.0, 0.0, 0.0, 0.0])
    assert res.mask.tolist() == [False, False, True, False, False, False, False, False]


def test_confident_learning_and_loss_flag_confident_disagreements():
    n = 60
    y_true = torch.arange(n) % 3
    probs = torch.full((n, 3), 0.05)
    probs[torch.arange(n), y_true] = 0.9
    y = y_true.clone()
    flipped = torch.tensor([0, 7, 14, 21, 28, 35])
    y[flipped] = (y[flipped] + 1) % 3
    res = confident_learning(y, probs)
    assert torch.nonzero(res.mask).flatten().tolist() == flipped.tolist()
    assert res.scores[flipped].tolist() == pytest.approx([0.95] * 6)
    loss = loss_outliers(y, probs)
    assert torch.equal(loss.mask, res.mask)
    top = loss_outliers(y, probs, fraction=0.1)
    assert top.mask.sum() == 6


def test_spectral_flags_the_shifted_cluster():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(100, 8, generator=g) * 0.1
    feats[:20, 0] += 3.0  # 20 % of class 0 pushed along one direction
    y = torch.zeros(100, dtype=torch.int64)
    res = spectral_signatures(feats, y, expected_rate=0.2, multiplier=1.0)
    assert torch.nonzero(res.mask).flatten().tolist() == list(range(20))


def test_activation_clustering_flags_the_small_cluster_only():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(140, 6, generator=g) * 0.1
    a[:40, 1] += 2.0  # class 0: 100 vs 40 split -> 40/140 = 0.29 <= 0.35
    b = torch.randn(100, 6, generator=g) * 0.1
    b[:50, 2] += 2.0  # class 1: an even split -> not poisonous
    feats, y = torch.cat([a, b]), torch.cat([torch.zeros(140), torch.ones(100)]).long()
    res = activation_clustering(feats, y, seed=0)
    assert torch.nonzero(res.mask).flatten().tolist() == list(range(40))
    assert res.metadata["flagged_classes"] == [0]
    assert torch.equal(res.mask, activation_clustering(feats, y, seed=0).mask)


def test_stratified_folds_are_balanced():
    y = torch.arange(50) % 5
    f = stratified_folds(y, 5, seed=0)
    counts = torch.zeros(5, 5, dtype=torch.int64)
    counts.index_put_((y, f), torch.ones(50, dtype=torch.int64), accumulate=True)
    assert bool((counts == 2).all())
    assert torch.equal(f, stratified_folds(y, 5, seed=0))


def test_feature_collision_moves_features_not_pixels(trained_simplenet, digits):
    model = trained_simplenet[0]
    target = digits.x_test[0]
    bases = digits.x_train[digits.y_train == (int(digits.y_test[0]) + 1) % 10][:3]
    p = craft_collisions(model, target, bases, bounds=digits.bounds, steps=150)
    assert p.min() >= 0.0 and p.max() <= 1.0
    ft = penultimate_features(model, target[None])
    before = (penultimate_features(model, bases) - ft).norm(dim=1)
    after = (penultimate_features(model, p) - ft).norm(dim=1)
    assert bool((after < 0.25 * before).all())  # measured: about 0.1x
    assert bool(((p - bases).flatten(1).norm(dim=1) < 3.0).all())  # still near the base image
    assert torch.equal(p, craft_collisions(model, target, bases, bounds=digits.bounds, steps=150))
