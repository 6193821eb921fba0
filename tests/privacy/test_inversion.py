"""MI-Face: reconstructions an independent model recognises; exact query accounting."""

from __future__ import annotations

import torch

from dlsec.attacks.privacy.inversion import (
    class_means,
    inversion_quality,
    mi_face,
    mi_face_black_box,
)
from dlsec.threat import LocalOracle
from dlsec.training import predict_logits


def test_class_means_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    assert class_means(x, y, 3).tolist() == [[2.0, 3.0], [10.0, 0.0], [0.0, 0.0]]


def test_white_box_reconstructions_are_recognised(trained_simplenet, digits, evaluator) -> None:
    model, card, _ = trained_simplenet
    res = mi_face(model, card=card)
    means = class_means(digits.x_train, digits.y_train, 10)
    q = inversion_quality(res, evaluator=evaluator, means=means)
    assert q["eval_accuracy"] >= 0.8
    assert q["nearest_mean_accuracy"] >= 0.8
    assert (res.confidence >= 0.99).all()
    # the blank start is recognised as (at most) one class: the effect is the attack's
    start = torch.zeros(10, 1, 8, 8)
    assert (predict_logits(evaluator, start).argmax(1) == torch.arange(10)).float().mean() <= 0.2
    assert res.images.min() >= 0 and res.images.max() <= 1


def test_black_box_counts_queries(trained_simplenet, digits, evaluator) -> None:
    model, card, _ = trained_simplenet
    oracle = LocalOracle(model, card=card)
    res = mi_face_black_box(oracle, classes=[0, 3, 7], max_iter=100,
                            generator=torch.Generator().manual_seed(0))
    assert res.queries == oracle.queries_total
    assert res.queries == int(res.iterations.sum()) * (2 * 20 + 1)
    q = inversion_quality(res, evaluator=evaluator,
                          means=class_means(digits.x_train, digits.y_train, 10))
    assert q["eval_accuracy"] >= 2 / 3
    again = mi_face_black_box(LocalOracle(model, card=card), classes=[0, 3, 7], max_iter=100,
                              generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.images, again.images)
