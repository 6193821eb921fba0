"""DAWN watermarking (dlsec.serve.watermark): which rows are marked, the wrong labels, the
ownership p-value by hand, and the effect on digits (a surrogate trained on the watermarked
answers is identified, independently trained models are not)."""

from __future__ import annotations

import math

import pytest
import torch

from dlsec.errors import DlsecError
from dlsec.serve.watermark import Dawn, WatermarkError, ownership_p_value, suspect_ownership
from dlsec.training import TrainConfig, predict_logits, train_model

SECRET = b"0123456789abcdef-test-secret"


def _rows(n: int, d: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed))


def test_marked_fraction_is_within_three_sigma_of_r_w() -> None:
    x = _rows(10_000)
    for fraction in (0.05, 0.3):
        rate = float(Dawn(SECRET, fraction=fraction, num_classes=10).marks("k", x).float().mean())
        sigma = math.sqrt(fraction * (1 - fraction) / 10_000)
        assert abs(rate - fraction) < 3 * sigma, (fraction, rate)


def test_marks_depend_on_the_secret_and_the_key_and_repeat_exactly() -> None:
    x = _rows(4000, seed=1)
    a = Dawn(SECRET, fraction=0.2, num_classes=10)
    m = a.marks("k", x)
    assert torch.equal(m, Dawn(SECRET, fraction=0.2, num_classes=10).marks("k", x))
    assert torch.equal(m[100:300], a.marks("k", x[100:300]))  # per row, not per batch
    for other in (
        Dawn(b"another secret, 16+ bytes", fraction=0.2, num_classes=10).marks("k", x),
        a.marks("k2", x),
    ):
        both = int((m & other).sum())
        # independent marks: overlap ~ 4000 * 0.04 = 160 (sd 12.4); identical would be ~800
        assert 100 < both < 230, both
    # the same values as -0.0/0.0 or float64 mark the same way
    assert torch.equal(a.marks("k", x.double()), m)
    z = torch.zeros(1, 64)
    assert torch.equal(a.marks("k", z), a.marks("k", -z))


def test_wrong_label_never_the_served_one_repeats_and_covers_the_other_classes() -> None:
    x = _rows(3000, seed=2)
    dawn = Dawn(SECRET, fraction=0.5, num_classes=5)
    served = torch.randint(0, 5, (3000,), generator=torch.Generator().manual_seed(3))
    wrong = dawn.wrong_labels("k", x, served)
    assert not bool((wrong == served).any())
    assert torch.equal(wrong, dawn.wrong_labels("k", x, served))
    counts = torch.bincount(wrong[served == 0], minlength=5)
    assert counts[0] == 0
    # uniform over the 4 other classes: each near 1/4 of the rows served 0 (n ~ 600, sd ~ 10.6)
    share = counts[1:].float() / counts.sum()
    assert bool(((share - 0.25).abs() < 0.07).all()), share


def test_apply_on_labels_and_scores() -> None:
    x = _rows(2000, seed=4)
    dawn = Dawn(SECRET, fraction=0.1, num_classes=3)
    probs = torch.softmax(torch.randn(2000, 3, generator=torch.Generator().manual_seed(5)), 1)
    out = dawn.apply("k", x, probs)
    m = out.marked
    assert 140 < int(m.sum()) < 260  # 200 expected, sd 13.4
    assert torch.equal(out.answer[~m], probs[~m])
    assert torch.equal(out.answer[m].argmax(1), out.watermark_labels[m])
    assert bool((out.watermark_labels[m] != probs[m].argmax(1)).all())
    assert bool((out.watermark_labels[~m] == -1).all())
    # a swap: every marked row keeps its multiset of scores (still sums to 1)
    assert torch.equal(out.answer[m].sort(1).values, probs[m].sort(1).values)
    labels_out = dawn.apply("k", x, probs.argmax(1))
    assert torch.equal(labels_out.marked, m)
    assert torch.equal(labels_out.answer[m], out.watermark_labels[m])
    assert torch.equal(labels_out.answer[~m], probs.argmax(1)[~m])
    # the same query again gets the same answer
    assert torch.equal(dawn.apply("k", x, probs).answer, out.answer)


def test_bad_settings_are_one_dlsec_error() -> None:
    for kwargs in ({"fraction": 0.0}, {"fraction": 1.0}, {"num_classes": 1}):
        with pytest.raises(WatermarkError):
            Dawn(SECRET, **{"fraction": 0.1, "num_classes": 10, **kwargs})
    with pytest.raises(WatermarkError, match="16 bytes"):
        Dawn(b"short", fraction=0.1, num_classes=10)
    with pytest.raises(WatermarkError, match="no watermarked"):
        ownership_p_value(torch.tensor([]), torch.tensor([]), num_classes=10)
    assert issubclass(WatermarkError, DlsecError)
    assert "0123" not in repr(Dawn(SECRET, fraction=0.1, num_classes=10))


def test_p_value_by_hand() -> None:
    # 3 classes: chance 1/2. 3 of 4 agree: P(K>=3) = (4 + 1) / 16 = 0.3125
    r = ownership_p_value(torch.tensor([1, 2, 0, 0]), torch.tensor([1, 2, 0, 1]), num_classes=3)
    assert (r.matches, r.n, r.chance) == (3, 4, 0.5)
    assert abs(r.p_value - 5 / 16) < 1e-12 and abs(r.agreement - 0.75) < 1e-12
    # 10 classes: chance 1/9; 2 of 2 agree: (1/9)^2
    r = ownership_p_value(torch.tensor([4, 5]), torch.tensor([4, 5]), num_classes=10)
    assert abs(r.p_value - 1 / 81) < 1e-12
    # 0 matches: p = 1; 1 of 3 with chance 1/2: 1 - 1/8
    assert (
        ownership_p_value(torch.tensor([0, 0]), torch.tensor([1, 1]), num_classes=10).p_value == 1.0
    )
    r = ownership_p_value(torch.tensor([1, 0, 0]), torch.tensor([1, 1, 1]), num_classes=3)
    assert abs(r.p_value - 7 / 8) < 1e-12 and not r.stolen()


@pytest.fixture(scope="module")
def dawn_digits(digits, trained_simplenet):
    """A DAWN-protected SimpleNet answers 1000 label queries (fraction 0.05) of one client."""
    victim = trained_simplenet[0]
    x = digits.x_train[:1000]
    dawn = Dawn(SECRET, fraction=0.05, num_classes=10)
    out = dawn.apply("thief", x, predict_logits(victim, x).argmax(1))
    return x, out


def test_a_surrogate_trained_on_watermarked_answers_is_identified(
    digits, trained_simplenet, dawn_digits, fit_thief
) -> None:
    x, out = dawn_digits
    m = out.marked
    assert 30 <= int(m.sum()) <= 75  # 50 expected, sd 6.9
    surrogate = fit_thief(trained_simplenet[1], x, out.answer)
    copy_accuracy = float(
        (predict_logits(surrogate, digits.x_test).argmax(1) == digits.y_test).float().mean()
    )
    assert copy_accuracy > 0.85  # a useful copy (measured 0.91)
    pred = predict_logits(surrogate, x[m]).argmax(1)
    stolen = ownership_p_value(pred, out.watermark_labels[m], num_classes=10)
    # measured: 64 of 64 reproduced, p = 8.5e-62 (chance 1/9)
    assert stolen.agreement > 0.5 and stolen.p_value < 1e-10 and stolen.stolen(0.01), stolen
    # the same through suspect_ownership, checked against 1000 clients' logs (Bonferroni)
    many = suspect_ownership(surrogate, x[m], out.watermark_labels[m], num_classes=10, tests=1000)
    assert many.matches == stolen.matches
    assert abs(many.p_value / stolen.p_value - 1000) < 1e-6 and many.stolen(0.01)
    with pytest.raises(WatermarkError, match="tests"):
        suspect_ownership(surrogate, x[m], out.watermark_labels[m], num_classes=10, tests=0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_independent_models_are_not(digits, dawn_digits, seed) -> None:
    x, out = dawn_digits
    m = out.marked
    model, _, _ = train_model(
        digits, "simplenet", TrainConfig(epochs=10, lr=3e-3, seed=seed), progress=False
    )
    pred = predict_logits(model, x[m]).argmax(1)
    result = ownership_p_value(pred, out.watermark_labels[m], num_classes=10)
    # measured for seeds 1-5: 0 of 64 agree, p = 1.0
    assert result.agreement < 0.1 and result.p_value > 0.05, result


def test_the_same_extraction_from_an_unwatermarked_api_is_not_flagged(
    digits, trained_simplenet, dawn_digits, fit_thief
) -> None:
    """Control: the same thief, the same queries and training, but honest answers."""
    x, out = dawn_digits
    m = out.marked
    copy = fit_thief(trained_simplenet[1], x, out.served_labels)
    result = ownership_p_value(
        predict_logits(copy, x[m]).argmax(1), out.watermark_labels[m], num_classes=10
    )
    assert result.agreement < 0.1 and result.p_value > 0.05, result


def test_a_thief_of_the_probabilities_is_identified_too(trained_simplenet, dawn_digits,
                                                        fit_thief) -> None:
    """Scores answers: the marked rows' top score swapped to the watermark class; the thief
    fits the answered distributions (soft cross-entropy)."""
    x, out = dawn_digits
    victim = trained_simplenet[0]
    probs = torch.softmax(predict_logits(victim, x), 1)
    answered = Dawn(SECRET, fraction=0.05, num_classes=10).apply("thief", x, probs)
    assert torch.equal(answered.marked, out.marked)  # the mark is of the query, not the answer
    m = answered.marked
    surrogate = fit_thief(trained_simplenet[1], x, answered.answer)
    pred = predict_logits(surrogate, x[m]).argmax(1)
    result = ownership_p_value(pred, answered.watermark_labels[m], num_classes=10)
    # measured: 56 of 64, p = 6.4e-45
    assert result.agreement > 0.5 and result.p_value < 1e-10, result


def test_the_p_value_is_valid_under_the_null() -> None:
    """Suspects that guess uniformly (the worst case of H0: never the served label, else
    uniform) are rejected at level 0.05 at most 5% of the time."""
    gen = torch.Generator().manual_seed(7)
    n, trials, classes = 40, 2000, 10
    served = torch.randint(0, classes, (trials, n), generator=gen)
    wm = (served + torch.randint(1, classes, (trials, n), generator=gen)) % classes  # != served
    guess = (served + torch.randint(1, classes, (trials, n), generator=gen)) % classes
    p = torch.tensor(
        [
            ownership_p_value(g, w, num_classes=classes).p_value
            for g, w in zip(guess, wm, strict=True)
        ]
    )
    rejected = float((p < 0.05).float().mean())
    # exact size of the discrete test: P(Binom(40, 1/9) >= 9) = 0.029; sd over 2000 trials 0.0038
    assert 0.015 < rejected < 0.05, rejected


def test_apply_draws_the_wrong_label_from_the_served_labels_not_the_answer() -> None:
    """A server passes the clean argmax: a noisy answer whose top class moved still gets the
    watermark label of the clean one, and its argmax becomes that label."""
    x = _rows(1000, seed=8)
    dawn = Dawn(SECRET, fraction=0.3, num_classes=4)
    gen = torch.Generator().manual_seed(9)
    probs = torch.softmax(torch.randn(1000, 4, generator=gen), 1)
    noisy = probs.roll(1, dims=1)  # every row's top class moved by one
    clean = dawn.apply("k", x, probs)
    out = dawn.apply("k", x, noisy, served=probs.argmax(1))
    m = out.marked
    assert torch.equal(m, clean.marked) and 220 < int(m.sum()) < 380  # 300 expected, sd 14.5
    assert torch.equal(out.watermark_labels, clean.watermark_labels)
    assert torch.equal(out.answer[m].argmax(1), clean.watermark_labels[m])
    assert torch.equal(out.answer[~m], noisy[~m])
    with pytest.raises(WatermarkError, match="served labels"):
        dawn.apply("k", x, noisy, served=torch.full((1000,), 4))
